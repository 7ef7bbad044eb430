#!/usr/bin/env bash
# Create .venv (if missing) and install Distily with its test extras, torch at the version constraints.txt pins
# (for the CPU build on Linux with PyPI as the index, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
