#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a lent GPU machine that reaches no package index (the device tool's
# machines: Python 3.12 with PyTorch, accelerate, numpy, pyarrow, pandas, matplotlib, tensorboard, rich... in their
# image; /work/.library/device/KINDS.md lists it). Run here, where pip reaches a registry: it fills .whl/
# (git-ignored, about 30 MiB) with what the check needs beyond that image, at the versions this checkout's .venv
# holds (the ones its tests pass with), and Liger-Kernel.
#
#   bash benchmarks/gpu_wheels.sh [DIR]     # default DIR: .whl
#
# Beyond the image: datasets, trl, gguf and Liger-Kernel, and transformers 5.25 with what it needs newer than the
# image has (huggingface_hub >= 2.4 and its HTTP stack, tokenizers built for it, kernels). Resolved once against the
# image's packages (2026-12: of the wheels' requirements only torch, triton and accelerate are left to the image,
# whose versions, 2.11, 3.6 and 1.15, satisfy them).
# Then, on the GPU machine (the device tool's run, with carry [".whl"]):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#     export PYTHONPATH=/tmp/site && DISTILY_GPU_CHECK_OUT=$OUT/gpu bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
out=${1:-.whl}
packages=(transformers tokenizers huggingface-hub hf-xet httpx2 httpcore2 kernels datasets dill multiprocess trl gguf
          pydantic pydantic-core annotated-types typing-inspection tomlkit truststore click typer)
pins=("liger-kernel==${LIGER_VERSION:-0.8.5}")
version='import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))'
for name in "${packages[@]}"; do
  pins+=("$name==$("$PYTHON" -c "$version" "$name")")
done
platforms=()
for platform in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_28_x86_64 manylinux_2_34_x86_64; do
  platforms+=(--platform "$platform")
done
mkdir -p "$out"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$out" "${pins[@]}"
echo "$(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1), in $out"
