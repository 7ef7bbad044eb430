#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite offline. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast part only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
