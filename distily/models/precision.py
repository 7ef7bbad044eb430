"""Whether bfloat16 pays off on the device a run trains on."""

import torch

# CPU capabilities (torch.backends.cpu.get_cpu_capability) with native bfloat16 matmuls; on the others
# (AVX2, plain AVX-512) oneDNN converts every bf16 matmul and it runs far slower than fp32 (measured on an
# AVX2 EPYC: 0.3 GFLOP/s in bf16 against 176 in fp32 for 2048 x 2048).
NATIVE_BF16_CPU = ("AVX512_BF16", "AMX")


def bf16_is_fast(use_cpu: bool = False) -> bool:
    """bfloat16 on an accelerator that supports it, or on a CPU with native bf16 matmuls."""
    if not use_cpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if not use_cpu and torch.accelerator.is_available():
        return True
    return torch.backends.cpu.get_cpu_capability() in NATIVE_BF16_CPU
