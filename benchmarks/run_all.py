"""Run Distily's benchmarks one after another: training speed and memory against a plain loop and TRL,
hardware efficiency, the chunked loss's memory, its time by loss-slice size and with closed-form gradients against
autograd, the same at real vocabularies (and against Liger-Kernel on a GPU), and training from a recorded teacher.

    python benchmarks/run_all.py [--only NAME ...] [--quick] [--results_dir DIR]

Each benchmark prints its own table and writes benchmarks/results/<name>.json. ``--quick`` runs every one
on tiny shapes for a smoke test, and writes to --results_dir (default: a temporary directory), so the
measured results are never overwritten by a smoke run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUICK_RESULTS_DIR, RESULTS_DIR_VARIABLE  # noqa: E402

QUICK_WORKDIR = Path(tempfile.gettempdir()) / "distily-bench-quick"
QUICK_ARGUMENTS = {
    "training_speed": ["--quick", "--workdir", str(QUICK_WORKDIR / "training_speed")],
    "hardware_efficiency": ["--quick", "--workdir", str(QUICK_WORKDIR / "training_speed")],
    "loss_memory": ["--tokens", "256", "--vocab", "2048", "--hidden", "64", "--runs", "1", "--steps", "1"],
    "loss_slices": ["--tokens", "64", "--hidden", "32", "--vocabs", "2048", "--runs", "1"],
    "closed_forms": ["--tokens", "64", "--hidden", "32", "--vocab", "2048", "--runs", "1", "--losses", "jsd"],
    "real_vocab": ["--quick", "--workdir", str(QUICK_WORKDIR / "real_vocab")],
    "fused_loss_memory": ["--tokens", "256", "--vocab", "2048", "--hidden", "64", "--runs", "1", "--steps", "1",
                          "--dtype", "fp32"],
    "recorded": ["--workdir", str(QUICK_WORKDIR / "recorded"), "--hidden", "64", "--teacher_layers", "2",
                 "--student_layers", "1", "--teacher_steps", "2", "--seq", "32", "--batch", "2", "--steps", "2",
                 "--runs", "1", "--record_rows", "16", "--eval_rows", "8"],
}
BENCHMARKS = tuple(QUICK_ARGUMENTS)


def run(name: str, arguments: list[str]) -> float:
    """Run one benchmark's ``main`` on ``arguments``; returns its wall time in seconds."""
    print(f"\n=== {name} {' '.join(arguments)}", flush=True)
    started = time.perf_counter()
    importlib.import_module(name).main(arguments)
    return time.perf_counter() - started


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
                        help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one run each: a smoke test")
    parser.add_argument("--results_dir", help="where the JSON results go (default: benchmarks/results; "
                                              "with --quick, a temporary directory)")
    options = parser.parse_args(argv)
    results_dir = options.results_dir or (str(QUICK_RESULTS_DIR) if options.quick else None)
    if results_dir:
        os.environ[RESULTS_DIR_VARIABLE] = results_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seconds = {name: run(name, QUICK_ARGUMENTS[name] if options.quick else []) for name in options.only}
    print("\n" + "\n".join(f"{name}: {value:.0f} s" for name, value in seconds.items()))
    return seconds


if __name__ == "__main__":
    main()
