"""Peak memory and time of Distily's fused, chunked logit loss against Liger-Kernel's fused linear losses, on a GPU.

    python benchmarks/fused_loss_memory.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--dtype bf16] [--runs 3]

Every method computes a loss of ``student_hidden [N, H] @ lm_head.T`` and its gradients with respect to the hidden
states and the LM head, each in a fresh process:

- naive_kl: both models' full logits (the teacher's from its hidden states and head), forward KL(teacher || student)
  from ``LOSSES``, token mean, autograd;
- distily_kl: ``chunked_logit_loss_sum(forward_kl, ...)`` with both LM heads fused, divided by N;
- liger_jsd: ``liger_kernel.transformers.LigerFusedLinearJSD(jsd_beta=0)``, Liger's fused forward KL (the anchor);
- liger_ce: ``LigerFusedLinearCrossEntropyLoss`` on the student alone (what a fused loss without a teacher costs).

Memory: the peak above the inputs (``common.reset_peak_memory``: the CUDA allocator's peak on a GPU, the peak
resident set on CPU) over --steps steps after a warm-up on 64 tokens; time: the median step (synchronised). The
Liger methods need a GPU and ``liger-kernel``; without them they are left out with a message. Each loss is checked
against naive_kl's (or the naive cross-entropy's) value. Results: benchmarks/results/fused_loss_memory.json, or
--name.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (describe, interleaved, machine, medians, peak_memory_bytes, reset_peak_memory,  # noqa: E402
                    run_worker, synchronize, table, write_results)
from distily.objectives.chunked import chunked_logit_loss_sum  # noqa: E402
from distily.objectives.losses import forward_kl  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("naive_kl", "distily_kl", "liger_jsd", "liger_ce")
LIGER_METHODS = ("liger_jsd", "liger_ce")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _inputs(tokens: int, vocab: int, hidden: int, dtype: torch.dtype):
    """Student hidden states and LM head (trained), the teacher's (constant), the next-token targets."""
    generator = torch.Generator().manual_seed(0)
    make = lambda *shape, scale=1.0: (  # noqa: E731
        (torch.randn(*shape, generator=generator) * scale).to(_device(), dtype))
    student = make(tokens, hidden).requires_grad_()
    head = make(vocab, hidden, scale=hidden**-0.5).requires_grad_()
    teacher, teacher_head = make(tokens, hidden), make(vocab, hidden, scale=2 * hidden**-0.5)
    targets = torch.randint(vocab, (tokens,), generator=generator).to(_device())
    return student, head, teacher, teacher_head, targets


def _loss(method: str, student, head, teacher, teacher_head, targets) -> torch.Tensor:
    tokens = student.shape[0]
    if method == "naive_kl":
        return forward_kl(student @ head.T, teacher @ teacher_head.T).sum() / tokens
    if method == "distily_kl":
        return chunked_logit_loss_sum(forward_kl, student, teacher, lm_head_weight=head,
                                      teacher_lm_head_weight=teacher_head) / tokens
    if method == "naive_ce":
        return F.cross_entropy((student @ head.T).float(), targets)
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, LigerFusedLinearJSD

    if method == "liger_jsd":
        return LigerFusedLinearJSD(jsd_beta=0.0)(student, head, teacher, teacher_head, None)
    return LigerFusedLinearCrossEntropyLoss()(head, student, targets)


def measure(method: str, options) -> dict:
    """Peak memory above the inputs and median step time of ``method`` (worker process)."""
    dtype = DTYPES[options.dtype]
    _loss(method, *_inputs(64, options.vocab, options.hidden, dtype)).backward()
    inputs = _inputs(options.tokens, options.vocab, options.hidden, dtype)
    synchronize()
    baseline = reset_peak_memory()
    seconds = []
    for _ in range(options.steps):
        inputs[0].grad = inputs[1].grad = None
        start = time.perf_counter()
        loss = _loss(method, *inputs)
        loss.backward()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return {"peak_extra_bytes": peak_memory_bytes() - baseline, "seconds": statistics.median(seconds),
            "loss": float(loss)}


def liger_missing() -> str | None:
    """Why the Liger methods cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no GPU: Liger-Kernel's Triton kernels need one"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per run (fresh process)")
    parser.add_argument("--name", default="fused_loss_memory", help="the results file's name")
    parser.add_argument("--worker", choices=(*METHODS, "naive_ce"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        print(json.dumps(measure(options.worker, options)))
        return {}
    skipped = liger_missing()
    methods = [m for m in METHODS if not (skipped and m in LIGER_METHODS)]
    if not skipped:
        methods.append("naive_ce")  # the reference value of liger_ce
    arguments = [f"--{key}={value}" for key, value in vars(options).items() if key in
                 ("tokens", "vocab", "hidden", "dtype", "steps")]
    cases = {method: (lambda method=method: run_worker(Path(__file__), "--worker", method, *arguments))
             for method in methods}
    runs = interleaved(cases, options.runs)
    median = {method: medians(method_runs, ("peak_extra_bytes", "seconds", "loss"))
              for method, method_runs in runs.items()}
    ratios = {f"{method}_over_naive_kl_peak_memory": (median[method]["peak_extra_bytes"]
                                                      / median["naive_kl"]["peak_extra_bytes"])
              for method in ("distily_kl", "liger_jsd") if method in median}
    if "liger_jsd" in median:
        ratios["distily_kl_over_liger_jsd_peak_memory"] = (median["distily_kl"]["peak_extra_bytes"]
                                                           / median["liger_jsd"]["peak_extra_bytes"])
        ratios["distily_kl_over_liger_jsd_seconds"] = median["distily_kl"]["seconds"] / median["liger_jsd"]["seconds"]
    references = {"distily_kl": "naive_kl", "liger_jsd": "naive_kl", "liger_ce": "naive_ce"}
    loss_rel_err = {f"{method}_loss_rel_err": abs(median[method]["loss"] / median[reference]["loss"] - 1)
                    for method, reference in references.items() if method in median}
    info = machine()
    print(f"\n{describe(info)}\nN={options.tokens} V={options.vocab} H={options.hidden} {options.dtype}, median of "
          f"{options.runs} interleaved runs of {options.steps} steps"
          + (f"; Liger left out: {skipped}" if skipped else ""))
    rows = [("method", "peak extra MiB", "seconds per step", "loss")]
    rows += [(m, f"{v['peak_extra_bytes'] / 2**20:.0f}", f"{v['seconds']:.4f}", f"{v['loss']:.5f}")
             for m, v in median.items()]
    print(table(rows))
    print("\n".join(f"{name} = {value:.4g}" for name, value in {**ratios, **loss_rel_err}.items()))
    payload = {"arguments": {k: v for k, v in vars(options).items() if k != "worker"}, "liger_skipped": skipped,
               **ratios, **loss_rel_err, "medians": median, "runs": runs}
    print(f"wrote {write_results(options.name, payload)}")
    return payload


if __name__ == "__main__":
    main()
