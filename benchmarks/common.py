"""Helpers shared by the benchmarks: fresh-process workers, interleaved rounds, medians, memory
accounting (one way for every benchmark: the CUDA allocator's peak on a GPU, the kernel's peak resident set
on CPU; ``AllocatorPeak``, PyTorch's CPU allocator read through the profiler, where the resident set is not
precise enough), the machine's description, tables and the results files.

Results go to ``benchmarks/results/<name>.json``, or to ``$DISTILY_BENCH_RESULTS_DIR/<name>.json`` when
that is set (a smoke run, ``--quick``, sets it to ``QUICK_RESULTS_DIR`` unless it is set, so it never overwrites
measured results).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
import transformers
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_DIR_VARIABLE = "DISTILY_BENCH_RESULTS_DIR"
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "distily-bench-quick" / "results"


def results_path(name: str) -> Path:
    """Where the benchmark ``name`` writes its JSON."""
    return Path(os.environ.get(RESULTS_DIR_VARIABLE) or RESULTS_DIR) / f"{name}.json"


def keep_measured_results() -> None:
    """Send this process's results (and its workers') to ``QUICK_RESULTS_DIR`` unless ``RESULTS_DIR_VARIABLE`` names
    a folder: what a smoke run (``--quick``) calls, so that its tiny shapes never replace measured results."""
    if not os.environ.get(RESULTS_DIR_VARIABLE):
        os.environ[RESULTS_DIR_VARIABLE] = str(QUICK_RESULTS_DIR)


def write_results(name: str, payload: dict) -> Path:
    """Write ``payload`` with the command line and the machine to the results file of ``name``."""
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    path.write_text(json.dumps({"command": command, "machine": machine(), **payload}, indent=2) + "\n")
    return path


def machine() -> dict:
    """CPU model, cores, bf16 support, the load average over the last 1, 5 and 15 minutes (read when the results are
    written: jobs beside the benchmark show there) and library versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": bool(flags and "avx512_bf16" in flags.group(1).split()),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_1_5_15min": os.getloadavg(),
        "device": device_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def describe(info: dict) -> str:
    return (f"{info['device']}, {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
            f"{info['memory_gib']} GiB, torch {info['torch']}, transformers {info['transformers']}")


def memory_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (peak resident)."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


_process_peak = {"cuda": 0, "cpu": 0}  # the peak before the last reset: the CUDA allocator's, the resident set's


def _on_gpu(gpu: bool | None) -> bool:
    return torch.cuda.is_available() if gpu is None else gpu


def reset_peak_memory(gpu: bool | None = None) -> int:
    """Reset the peak-memory counter to the memory in use now and return that, in bytes: on a GPU the CUDA
    allocator's (bytes allocated), on CPU the kernel's peak resident set size (VmHWM). ``gpu``: which (None: the
    GPU when there is one, where the benchmarks run)."""
    if _on_gpu(gpu):
        _process_peak["cuda"] = max(_process_peak["cuda"], torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    _process_peak["cpu"] = max(_process_peak["cpu"], memory_kib("VmHWM") * 1024)
    Path("/proc/self/clear_refs").write_text("5")
    return memory_kib("VmRSS") * 1024


def peak_memory_bytes(gpu: bool | None = None) -> int:
    """Peak memory (GPU allocator, or resident set on CPU) since the last ``reset_peak_memory``."""
    return torch.cuda.max_memory_allocated() if _on_gpu(gpu) else memory_kib("VmHWM") * 1024


def process_peak_bytes() -> int:
    """Peak memory of the whole process, from its start: the GPU allocator's, or the resident set's on CPU (VmHWM
    across resets; not ru_maxrss, which Linux carries over an exec from the parent's memory: a worker started
    by a parent holding 6 GB reported 6 GB, whatever it used)."""
    if torch.cuda.is_available():
        return max(_process_peak["cuda"], torch.cuda.max_memory_allocated())
    return max(_process_peak["cpu"], memory_kib("VmHWM") * 1024)


def cpu_tensor_bytes() -> int:
    """Bytes of the CPU tensors alive now, each storage counted once (weights included): on CPU what
    ``torch.cuda.memory_allocated`` gives on a GPU."""
    storages = {}
    for value in gc.get_objects():
        if torch.is_tensor(value) and value.device.type == "cpu":
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class AllocatorPeak:
    """The most bytes PyTorch's CPU allocator held at once between ``start`` and ``stop`` beyond what it held at
    ``start`` (``alive_at_start``: the tensors then, from ``cpu_tensor_bytes``): on CPU what
    ``torch.cuda.max_memory_allocated`` gives on a GPU. Read from the profiler's record of every allocation and
    free (``profile_memory=True``), so it counts tensors only, not the C library's heap, which keeps freed blocks
    and makes the resident set depend on what ran before. The profiler slows the run: time it in another run."""

    def start(self) -> None:
        self.alive_at_start = cpu_tensor_bytes()
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.start()

    def stop(self) -> int:
        self._profile.stop()
        nodes, allocations = list(self._profile.profiler.kineto_results.experimental_event_tree()), []
        while nodes:  # every node of the event tree
            node = nodes.pop()
            nodes.extend(node.children)
            if node.tag == _EventType.Allocation:
                allocations.append(node)
        running = peak = 0
        for allocation in sorted(allocations, key=lambda node: node.start_time_ns):
            running += allocation.extra_fields.alloc_size  # negative for a free
            peak = max(peak, running)
        return peak


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op on CPU), before reading a clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name() -> str:
    """The GPU's name, or "cpu"."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def run_worker(script: Path, *arguments: str) -> dict:
    """Run ``python script arguments`` in a fresh process; its last stdout line is the JSON it returns."""
    completed = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def interleaved(cases: dict[str, Callable[[], dict]], runs: int) -> dict[str, list[dict]]:
    """``runs`` rounds of every case in the same order (a, b, c, a, b, c, ...); each call's result kept."""
    results: dict[str, list[dict]] = {name: [] for name in cases}
    for round_index in range(runs):
        for name, case in cases.items():
            results[name].append(case())
            print(f"round {round_index + 1}/{runs} {name}: {json.dumps(results[name][-1])[:300]}",
                  file=sys.stderr, flush=True)
    return results


def medians(runs: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, the first row the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
