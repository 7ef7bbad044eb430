#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite offline. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast part only, `-n 0` for one process.
# One pytest-xdist worker per core (at most 4), each test file on one worker so that its module fixtures are built
# once; tests/conftest.py gives each worker one thread. Most of the suite is Python-bound work on tiny models and
# subprocesses starting, which one core each runs as fast as two.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile "$@"
