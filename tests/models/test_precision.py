"""Whether bf16 pays off on the CPU: read from the CPU's own feature flags."""

import platform
import re
from pathlib import Path

import pytest
import torch

from distily.models import precision


def test_x86_native_bf16_follows_the_cpus_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpuinfo.exists():
        pytest.skip("reads an x86 Linux CPU's flags")
    flags = set(re.search(r"^flags\s*:\s*(.+)$", cpuinfo.read_text(), re.M).group(1).split())
    assert precision.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert precision.bf16_is_fast(use_cpu=True) == precision.cpu_has_native_bf16()


@pytest.mark.parametrize("features, native", [("fp asimd sve bf16 i8mm", True), ("fp asimd crc32 atomics", False)])
def test_arm_native_bf16_is_the_bf16_feature(features, native, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nFeatures\t: {features}\nCPU implementer\t: 0x41\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # not asked on Arm
    assert precision.cpu_has_native_bf16() is native


@pytest.mark.parametrize("native", [True, False])
def test_a_gpu_that_only_emulates_bf16_trains_without_it(native, monkeypatch):
    """A pre-Ampere GPU (V100, T4) creates bf16 tensors, so torch.cuda.is_bf16_supported() says yes by default;
    only including_emulation=False says whether its matmuls run bf16 natively."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert precision.bf16_is_fast() is native
