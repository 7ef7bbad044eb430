"""Achieved FLOP/s of a ``distily distill`` training step over this machine's matmul peak, in fp32 and bf16.

    python benchmarks/hardware_efficiency.py [--precision fp32 bf16] [--runs 3] [--steps 3] [--hidden 1024]

Peak: the median time of --repeats ``torch.matmul`` of two square n x n matrices (after one untimed call; on the
GPU when there is one, where the steps run),
2 n^3 FLOPs each, for n in {1024, 2048, 4096}; the peak of a precision is the best of those medians,
measured in this run beside the training steps (bf16: bf16 inputs, fp32 accumulation inside oneDNN).

Training step: ``run_distillation`` on the Llama-shaped teacher and student of training_speed.py at a width
where matmuls dominate (--hidden 1024 by default), each run a fresh process. After --warmup steps, --steps
steps are timed; one more step is run under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
FLOPs of every matmul, linear and attention kernel PyTorch dispatches (the teacher's forward, the student's
forward and backward, the chunked loss and its LM-head recomputation; in-place ``addmm_`` is added to its
table; elementwise ops, norms, softmax and the optimizer are not counted, so the ratio is a lower bound on
the work done). Achieved FLOP/s = counted
FLOPs / median timed step; efficiency = achieved / peak of the same precision. bf16 is autocast with fp32
weights, as ``--bf16 true`` trains. Rounds interleave the precisions; the table gives medians and
benchmarks/results/hardware_efficiency.json keeps every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import describe, interleaved, machine, medians, run_worker, synchronize, table, write_results
from training_speed import PRECISIONS, SEED, StepClock, benchmark_parser, parse_checked, prepare, train_distily

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MATMUL_SIZES = (1024, 2048, 4096)
GOALS = {"training_step_over_matmul_peak_fp32": 0.5}
QUICK = {"runs": 1, "steps": 1, "warmup": 1, "batch": 2, "seq": 32, "vocab": 1024, "hidden": 64,
         "teacher_layers": 2, "student_layers": 1, "heads": 2, "repeats": 2, "precision": ["fp32"]}


def matmul_peak(precision: str, repeats: int) -> dict:
    """FLOP/s of the fastest size's median square matmul."""
    by_size = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the training steps run
    for n in MATMUL_SIZES:
        a, b = (torch.randn(n, n).to(device, DTYPES[precision]) for _ in range(2))
        torch.matmul(a, b)
        seconds = []
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            torch.matmul(a, b)
            synchronize()
            seconds.append(time.perf_counter() - start)
        by_size[str(n)] = 2 * n**3 / statistics.median(seconds)
    return {"flops_per_second": max(by_size.values()), "by_size": by_size}


def _addmm_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """FLOPs of ``self += a @ b``: 2 m k n (FlopCounterMode passes the input and output shapes)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


class FlopCountingClock(StepClock):
    """Times every step but the last, and counts the FLOPs PyTorch dispatches in the last."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps
        # in-place addmm_ (the fused LM head's fp32 gradient accumulation) is not in PyTorch's table
        self.counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops})

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.steps - 1:
            self.counter.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.steps:
            self.counter.__exit__(None, None, None)
        else:
            super().on_step_end(args, state, control, **kwargs)


def measure_step(precision: str, spec: dict) -> dict:
    """Median step time and the counted FLOPs of one step (worker process)."""
    torch.manual_seed(SEED)
    clock = FlopCountingClock(spec["steps"])
    train_distily(spec, precision == "bf16", clock)
    step_seconds = [end - start
                    for start, end in zip(clock.step_ends[spec["warmup"] - 1:], clock.step_ends[spec["warmup"]:])]
    flops = clock.counter.get_total_flops()
    seconds = statistics.median(step_seconds)
    return {"flops_per_step": flops, "step_seconds": seconds, "flops_per_second": flops / seconds,
            "timed_steps": step_seconds}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.splitlines()[0], QUICK, runs=3, steps=3, warmup=1, hidden=1024, heads=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed matmuls per size and run")
    parser.add_argument("--worker", choices=PRECISIONS, help=argparse.SUPPRESS)
    return parse_checked(parser, argv, QUICK)


def main(argv=None) -> dict:
    options = parse_arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if options.worker:
        print(json.dumps(measure_step(options.worker, json.loads(options.worker_spec))))
        return {}
    spec = prepare(options)
    spec["steps"] += 1  # the counted step, after the timed ones
    cases = {}
    for precision in options.precision:
        cases[f"matmul_{precision}"] = lambda precision=precision: matmul_peak(precision, options.repeats)
        cases[f"step_{precision}"] = lambda precision=precision: run_worker(
            Path(__file__), "--worker", precision, "--worker_spec", json.dumps(spec))
    runs = interleaved(cases, options.runs)
    median = {name: medians(case_runs, ("flops_per_second",)) for name, case_runs in runs.items()}
    ratios = {f"training_step_over_matmul_peak_{precision}":
              median[f"step_{precision}"]["flops_per_second"] / median[f"matmul_{precision}"]["flops_per_second"]
              for precision in options.precision}
    flops_per_step = runs[f"step_{options.precision[0]}"][0]["flops_per_step"]
    info = machine()
    print(f"\n{describe(info)}\nteacher {options.teacher_layers} layers, student {options.student_layers}, width "
          f"{options.hidden}, vocab {options.vocab}; batch {options.batch} x {options.seq} tokens; "
          f"{flops_per_step / 1e9:.1f} GFLOP counted per step; median of {options.runs} interleaved runs")
    rows = [("precision", "matmul peak GFLOP/s", "training step GFLOP/s", "step / peak")]
    for precision in options.precision:
        rows.append((precision, f"{median[f'matmul_{precision}']['flops_per_second'] / 1e9:.0f}",
                     f"{median[f'step_{precision}']['flops_per_second'] / 1e9:.0f}",
                     f"{ratios[f'training_step_over_matmul_peak_{precision}']:.3f}"))
    print(table(rows))
    goals_met = {name: ratios[name] >= bound for name, bound in GOALS.items() if name in ratios}
    print("goals met:", goals_met)
    payload = {"arguments": {k: v for k, v in vars(options).items() if not k.startswith("worker")},
               "flops_per_step": flops_per_step, **ratios, "medians": median, "goals": GOALS,
               "goals_met": goals_met, "runs": runs}
    print(f"wrote {write_results('hardware_efficiency', payload)}")
    return payload


if __name__ == "__main__":
    main()
