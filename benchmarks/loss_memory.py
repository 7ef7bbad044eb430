"""Peak memory, time and accuracy of the chunked, LM-head-fused logit loss against a naive one.

    python benchmarks/loss_memory.py [--tokens 4096] [--vocab 50257] [--hidden 768] [--runs 5] [--steps 3]

Both methods compute ``sum_tokens loss(student_hidden @ lm_head.T, teacher_logits) / tokens`` and its
gradients with respect to the student's hidden states [N, H] and LM-head weight [V, H], in fp32:

- naive: full student logits [N, V], the plain loss from ``LOSSES``, ``backward()`` through autograd;
- chunked: ``chunked_logit_loss_sum(..., lm_head_weight=...)`` with its default chunk size.

How memory is measured. PyTorch has no peak-memory counter for CPU tensors (tracemalloc does not see
its allocations), so every measurement runs in a fresh subprocess that reads the kernel's accounting
of the process's resident memory: it builds the inputs (the teacher logits [N, V] fp32, the hidden
states and the LM head), warms the method up on 64 tokens so one-time library initialisation is not
counted, resets the peak resident set size (writing 5 to /proc/self/clear_refs), records the current
RSS as the baseline, runs ``--steps`` training-like steps of the method (gradients set to None
before each, as ``zero_grad`` does), and reports VmHWM - baseline: the peak memory the loss and its
backward added on top of their inputs, gradients included. Several steps are measured because that
is what training sees: glibc keeps blocks of up to 32 MiB in its heap for reuse, so the chunked
method's resident memory rises over its first chunks until the heap is warm (one step at N = 4096
is only 7 chunks, one at 2N is 13, which made a one-step comparison of N and 2N measure heap warm-up
rather than growth with N). Blocks above 32 MiB, such as every ``[N, V]`` tensor of the naive
method, go back to the OS on free, so for them RSS follows live tensors. Linux only.

Time is the mean wall time per step (page faults of fresh memory included, as in training) and, as
a check that is less sensitive to other jobs on a shared machine, the mean CPU time per step (all
threads, user + system).
Runs of the methods are interleaved (naive, chunked, chunked at 2N; then the next round), and the
table reports medians over ``--runs`` rounds. The peak-growth check doubles N for the chunked method
only. Accuracy is checked once, in its own subprocess, on identical inputs: relative error
``|a - b| / |b|`` (Frobenius norms) of the loss and both gradients, with naive as the reference.

Results go to benchmarks/results/loss_memory.json.
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import peak_memory_bytes, reset_peak_memory, table, write_results  # noqa: E402
from distily.objectives.chunked import chunked_logit_loss_sum  # noqa: E402
from distily.objectives.losses import LOSSES  # noqa: E402

GOALS = {"peak_memory": 0.25, "time": 1.0, "rel_err": 1e-5, "peak_growth": 0.10}


def _inputs(tokens: int, vocab: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student_hidden = torch.randn(tokens, hidden, generator=generator).requires_grad_()  # [N, H]
    lm_head = (torch.randn(vocab, hidden, generator=generator) * hidden**-0.5).requires_grad_()  # [V, H]
    teacher_logits = torch.randn(tokens, vocab, generator=generator) * 2  # [N, V]
    return student_hidden, lm_head, teacher_logits


def _run(method: str, loss_name: str, student_hidden, lm_head, teacher_logits) -> torch.Tensor:
    """One loss + backward; leaves the gradients in .grad and returns the detached loss."""
    loss_fn = LOSSES[loss_name]
    tokens = student_hidden.shape[0]
    if method == "naive":
        student_logits = student_hidden @ lm_head.T  # [N, V]
        loss = loss_fn(student_logits, teacher_logits).sum() / tokens
    else:
        loss = chunked_logit_loss_sum(loss_fn, student_hidden, teacher_logits, lm_head_weight=lm_head) / tokens
    loss.backward()
    return loss.detach()


def _measure(method: str, args) -> dict:
    """Peak RSS added by one run of ``method`` over its inputs, and its wall time (worker process)."""
    _run(method, args.loss, *_inputs(64, args.vocab, args.hidden))
    inputs = _inputs(args.tokens, args.vocab, args.hidden)
    gc.collect()
    baseline_bytes = reset_peak_memory(gpu=False)
    step_seconds, step_cpu_seconds = [], []
    for _ in range(args.steps):
        for leaf in inputs[:2]:
            leaf.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        _run(method, args.loss, *inputs)
        step_seconds.append(time.perf_counter() - start)
        step_cpu_seconds.append(time.process_time() - cpu_start)
    return {"seconds": statistics.mean(step_seconds), "cpu_seconds": statistics.mean(step_cpu_seconds),
            "step_seconds": step_seconds, "peak_extra_bytes": peak_memory_bytes(gpu=False) - baseline_bytes,
            "baseline_bytes": baseline_bytes}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm())


def _check(args) -> dict:
    """Relative errors of the chunked loss and gradients against the naive ones (worker process)."""
    results = {}
    for method in ("naive", "chunked"):
        student_hidden, lm_head, teacher_logits = _inputs(args.tokens, args.vocab, args.hidden)
        loss = _run(method, args.loss, student_hidden, lm_head, teacher_logits)
        results[method] = (loss, student_hidden.grad, lm_head.grad)
    (naive_loss, naive_grad_hidden, naive_grad_head), (loss, grad_hidden, grad_head) = results.values()
    return {
        "loss_rel_err": _relative_error(loss, naive_loss),
        "grad_hidden_rel_err": _relative_error(grad_hidden, naive_grad_hidden),
        "grad_lm_head_rel_err": _relative_error(grad_head, naive_grad_head),
        "loss": float(naive_loss),
    }


def _worker(task: str, tokens: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", task, "--tokens", str(tokens), "--vocab", str(args.vocab),
               "--hidden", str(args.hidden), "--loss", args.loss, "--steps", str(args.steps)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps measured per run (fresh process)")
    parser.add_argument("--loss", default="forward_kl", choices=sorted(LOSSES))
    parser.add_argument("--worker", choices=["naive", "chunked", "check"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "check":
        print(json.dumps(_check(args)))
        return
    if args.worker:
        print(json.dumps(_measure(args.worker, args)))
        return

    cases = {"naive": ("naive", args.tokens), "chunked": ("chunked", args.tokens),
             "chunked_2n": ("chunked", 2 * args.tokens)}
    runs = {case: [] for case in cases}
    for round_index in range(args.runs):
        order = list(cases) if round_index % 2 == 0 else list(reversed(cases))
        for case in order:
            runs[case].append(_worker(*cases[case], args))
            print(f"round {round_index + 1}/{args.runs} {case}: {runs[case][-1]}", file=sys.stderr, flush=True)
    _report(args, runs, _worker("check", args.tokens, args))


def _report(args, runs: dict, accuracy: dict) -> None:
    """Print the table of medians and ratios, and write it all to the results file."""
    median = {case: {key: statistics.median(run[key] for run in case_runs)
                     for key in ("seconds", "cpu_seconds", "peak_extra_bytes")}
              for case, case_runs in runs.items()}
    ratios = {
        "peak_memory_chunked_over_naive": median["chunked"]["peak_extra_bytes"] / median["naive"]["peak_extra_bytes"],
        "time_chunked_over_naive": median["chunked"]["seconds"] / median["naive"]["seconds"],
        "cpu_time_chunked_over_naive": median["chunked"]["cpu_seconds"] / median["naive"]["cpu_seconds"],
        "peak_memory_chunked_2n_over_n":
            median["chunked_2n"]["peak_extra_bytes"] / median["chunked"]["peak_extra_bytes"],
    }
    goals_met = {
        "peak_memory": ratios["peak_memory_chunked_over_naive"] <= GOALS["peak_memory"],
        "time": ratios["time_chunked_over_naive"] <= GOALS["time"],
        "accuracy": max(v for k, v in accuracy.items() if k.endswith("rel_err")) <= GOALS["rel_err"],
        "peak_growth": ratios["peak_memory_chunked_2n_over_n"] - 1 <= GOALS["peak_growth"],
    }
    peak_mib = {case: f"{median[case]['peak_extra_bytes'] / 2**20:.0f} MiB" for case in runs}
    n, n2 = args.tokens, 2 * args.tokens
    rows = [("quantity", "value", "goal"),
            (f"naive peak extra, N={n}", peak_mib["naive"], ""),
            (f"chunked peak extra, N={n}", peak_mib["chunked"], ""),
            (f"chunked peak extra, N={n2}", peak_mib["chunked_2n"], ""),
            ("peak memory chunked / naive", f"{ratios['peak_memory_chunked_over_naive']:.3f}x", "<= 0.25x"),
            ("chunked peak 2N / N", f"{ratios['peak_memory_chunked_2n_over_n']:.3f}x", "<= 1.10x"),
            (f"naive time per step, N={n}", f"{median['naive']['seconds']:.2f} s", ""),
            (f"chunked time per step, N={n}", f"{median['chunked']['seconds']:.2f} s", ""),
            ("time chunked / naive", f"{ratios['time_chunked_over_naive']:.3f}x", "<= 1.0x"),
            (f"naive CPU time per step, N={n}", f"{median['naive']['cpu_seconds']:.2f} s", ""),
            (f"chunked CPU time per step, N={n}", f"{median['chunked']['cpu_seconds']:.2f} s", ""),
            ("CPU time chunked / naive", f"{ratios['cpu_time_chunked_over_naive']:.3f}x", ""),
            ("loss rel. error", f"{accuracy['loss_rel_err']:.1e}", "<= 1e-5"),
            ("grad hidden rel. error", f"{accuracy['grad_hidden_rel_err']:.1e}", "<= 1e-5"),
            ("grad lm_head rel. error", f"{accuracy['grad_lm_head_rel_err']:.1e}", "<= 1e-5")]
    print(f"loss={args.loss} N={n} V={args.vocab} H={args.hidden} fp32, "
          f"median of {args.runs} interleaved runs of {args.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(table(rows))
    print("goals met:", goals_met)
    write_results("loss_memory", {
        "config": {"loss": args.loss, "tokens": n, "vocab": args.vocab, "hidden": args.hidden,
                   "runs": args.runs, "steps": args.steps, "dtype": "float32", "torch": torch.__version__,
                   "threads": torch.get_num_threads()},
        **ratios, **accuracy, "medians": median, "runs": runs, "goals": GOALS, "goals_met": goals_met,
    })

if __name__ == "__main__":
    main()
