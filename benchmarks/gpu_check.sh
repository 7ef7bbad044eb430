#!/usr/bin/env bash
# One short check on a lent GPU (under 8 minutes on an H100): the CUDA-marked tests, Distily against TRL's GKD
# trainer in bf16 at the real vocabularies (real_vocab.py), and the fused loss's memory against Liger-Kernel's
# fused linear JSD and cross-entropy (fused_loss_memory.py). Results: benchmarks/results/gpu/*.json, each file
# named for the GPU (and each holding its name under "machine").
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --cpu      # every part at smoke size on CPU (the CUDA tests skip, Liger is
#                                           # left out), results under $DISTILY_GPU_CHECK_OUT or a temporary dir
# Both need TRL (pip install -e ".[bench]"; a wheel on the GPU machine): real_vocab.py stops when --cases trl
# cannot run.
#
# PYTHON picks the interpreter (default: python3, the one with PyTorch on the lent GPU machines, else python; here:
# PYTHON=.venv/bin/python). DISTILY_GPU_CHECK_OUT moves the results (on the
# GPU: default benchmarks/results/gpu). A machine without a package index (the device tool's) gets the packages its
# image lacks as wheels: `bash benchmarks/gpu_wheels.sh` here, then there, with .whl carried:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#     export PYTHONPATH=/tmp/site && DISTILY_GPU_CHECK_OUT=$OUT/gpu bash benchmarks/gpu_check.sh
# Liger-Kernel is among those wheels; elsewhere it is installed with pip when missing (LIGER_WHEEL: a wheel file
# to install from), and when it cannot be, the Liger rows are left out with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [[ "${1:-}" == "--cpu" ]]; then
  out=${DISTILY_GPU_CHECK_OUT:-$(mktemp -d)}
  real_vocab=(--quick --cases distily trl --workdir "$out/work")
  loss=(--tokens 256 --vocab 2048 --hidden 64 --runs 1 --steps 1 --dtype fp32)
else
  out=${DISTILY_GPU_CHECK_OUT:-benchmarks/results/gpu}
  real_vocab=(--precision bf16 --runs 2 --steps 5 --warmup 2 --batch 4 --seq 512 --cases distily trl)
  loss=(--tokens 4096 --vocab 151936 --hidden 896 --runs 3 --steps 3 --dtype bf16)
fi
mkdir -p "$out"
export DISTILY_BENCH_RESULTS_DIR="$out"
gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
slug=$(echo "$gpu" | tr -cs 'A-Za-z0-9' '_' | sed 's/^_*//; s/_*$//')
echo "== device: $gpu; results in $out"

echo "== CUDA-marked tests"
# A module the image cannot import (lm_eval's tests: no wheel of it travels) is a collection error, reported: without
# --continue-on-collection-errors pytest would stop there (exit 2) and run no test
"$PYTHON" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda tests \
  --junitxml "$out/cuda_tests_$slug.xml" || status=$?
[[ ${status:-0} -le 1 || ${status:-0} -eq 5 ]] || exit "$status"  # 1: a failure (reported, the rest still runs)

echo "== training speed against TRL at the real vocabularies"
"$PYTHON" benchmarks/real_vocab.py "${real_vocab[@]}" --name "real_vocab_$slug"

echo "== loss memory against Liger-Kernel"
if ! "$PYTHON" -c "import liger_kernel" 2>/dev/null && [[ "$gpu" != cpu ]]; then
  "$PYTHON" -m pip install -q --retries 1 --timeout 10 "${LIGER_WHEEL:-liger-kernel}" ||
    echo "liger-kernel could not be installed: its rows are left out"
fi
"$PYTHON" benchmarks/fused_loss_memory.py "${loss[@]}" --name "fused_loss_memory_$slug"
echo "== done: $out"
