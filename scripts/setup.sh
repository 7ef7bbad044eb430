#!/usr/bin/env bash
# Create .venv (if missing) and install Distily with its test extras, taking the CPU torch wheel
# pinned in constraints.txt rather than a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
