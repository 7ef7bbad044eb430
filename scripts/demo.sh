#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run `distily demo` offline on the CPU. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/distily demo "$@"
