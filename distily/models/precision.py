"""Whether bfloat16 pays off on the device a run trains on."""

import platform
from pathlib import Path

import torch

# On x86 CPUs without AVX512-BF16 or AMX (AVX2, plain AVX-512), oneDNN converts every bf16 matmul and it runs far
# slower than fp32 (measured on an AVX2 EPYC: 0.3 GFLOP/s in bf16 against 176 in fp32, 2048 x 2048); with them it
# runs faster (a Sapphire Rapids Xeon, 2 threads: 622 against 204). torch.backends.cpu.get_cpu_capability() cannot
# tell: it names the vector width ATen dispatches on ("AVX512") and never the bf16 extensions.
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool:
    """x86: AVX512-BF16 or AMX tiles (torch's own CPUID checks, the ones its CPU kernels use); Arm: the BF16
    extension (``bf16`` among /proc/cpuinfo's features)."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return CPUINFO.exists() and any(
            line.startswith("Features") and "bf16" in line.split(":", 1)[1].split()
            for line in CPUINFO.read_text().splitlines()
        )
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu has no public name for them
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def bf16_is_fast(use_cpu: bool = False) -> bool:
    """bfloat16 on an accelerator that supports it natively (a CUDA GPU of compute capability 8.0 or more, not
    one that merely emulates it, as torch.cuda.is_bf16_supported() counts by default), or on a CPU with native
    bf16 matmuls."""
    if not use_cpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if not use_cpu and torch.accelerator.is_available():
        return True
    return cpu_has_native_bf16()
