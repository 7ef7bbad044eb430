"""Time of the chunked logit loss by loss-slice size: how many logits each slice of the loss works on.

    python benchmarks/loss_slices.py [--tokens 2048] [--hidden 512] [--vocabs 151936 50257]
                                     [--precision bf16 fp32] [--exponents 19 20 21 22 23] [--runs 3]

One loss and its backward (``chunked_logit_loss_sum`` with forward KL, both LM heads fused, as training calls it)
on --tokens random hidden states of width --hidden, for each vocabulary, precision (bf16: under CPU autocast)
and slice size of 2**e logits (``loss_chunk_size = max(1, 2**e // vocab)`` tokens). The sizes run interleaved in one
process, --runs rounds after one warm-up call each, and the table gives the median seconds. The default slice on
CPU is ``CPU_LOSS_CHUNK_ELEMENTS``, on an accelerator ``LOSS_CHUNK_ELEMENTS``; the ratios
``accelerator_default_over_cpu_default_seconds`` compare the two here, per vocabulary and precision.

Results go to benchmarks/results/loss_slices.json.
"""

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import describe, machine, table, write_results  # noqa: E402
from distily.objectives.chunked import (  # noqa: E402
    CPU_LOSS_CHUNK_ELEMENTS,
    LOSS_CHUNK_ELEMENTS,
    chunked_logit_loss_sum,
)
from distily.objectives.losses import LOSSES  # noqa: E402

CPU_DEFAULT, ACCELERATOR_DEFAULT = (elements.bit_length() - 1 for elements in (CPU_LOSS_CHUNK_ELEMENTS,
                                                                               LOSS_CHUNK_ELEMENTS))  # exponents


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[151936, 50257])
    parser.add_argument("--precision", nargs="+", choices=("bf16", "fp32"), default=["bf16", "fp32"])
    parser.add_argument("--exponents", type=int, nargs="+", default=[19, 20, 21, 22, 23])
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    options.exponents = sorted(set(options.exponents) | {CPU_DEFAULT, ACCELERATOR_DEFAULT})
    return options


def fused_loss_timer(tokens: int, width: int, vocab: int, precision: str):
    """A function ``(loss_fn, loss_chunk_size or None, **loss_params) -> seconds`` of one chunked loss and its backward,
    both LM heads fused as training calls it, on fixed random hidden states [tokens, width] and heads [vocab, width]
    (bf16: under CPU autocast). Shared with ``closed_forms.py``."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, generator=generator).requires_grad_()  # [N, H]
    head = (torch.randn(vocab, width, generator=generator) * width**-0.5).requires_grad_()  # [V, H]
    teacher = torch.randn(tokens, width, generator=generator)  # [N, H]
    teacher_head = torch.randn(vocab, width, generator=generator) * width**-0.5  # [V, H]

    def run(loss_fn, loss_chunk_size: Optional[int], **loss_params) -> float:
        hidden.grad = head.grad = None
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = chunked_logit_loss_sum(loss_fn, hidden, teacher, lm_head_weight=head,
                                          teacher_lm_head_weight=teacher_head, loss_chunk_size=loss_chunk_size,
                                          **loss_params)
        loss.backward()
        return time.perf_counter() - start

    return run


def median_seconds(cases: dict, runs: int, label: str) -> dict:
    """Each of ``cases`` (key -> a call that returns its seconds) once to warm up, then ``runs`` interleaved rounds;
    the median seconds per key. Each round's times go to stderr, after ``label``."""
    seconds: dict = {key: [] for key in cases}
    for case in cases.values():
        case()  # warm-up
    for round_index in range(runs):
        for key, case in cases.items():
            seconds[key].append(case())
        print(f"{label} round {round_index + 1}/{runs}: "
              + ", ".join(f"{key} {times[-1]:.2f} s" for key, times in seconds.items()), file=sys.stderr, flush=True)
    return {key: statistics.median(times) for key, times in seconds.items()}


def report(name: str, caption: str, rows: list[tuple[str, ...]], options, results: dict) -> dict:
    """Print ``caption`` (the machine and shapes) and the table ``rows`` of median seconds, and write
    ``{"arguments", "results"}`` as benchmarks/results/<name>.json; returns that payload. Shared with
    ``closed_forms.py``."""
    print(f"{caption}, seconds of one loss and its backward, median of {options.runs} interleaved rounds")
    print(table(rows))
    payload = {"arguments": vars(options), "results": results}
    write_results(name, payload)
    return payload


def tokens_per_slice(exponent: int, vocab: int) -> int:
    """The tokens of a loss slice of about 2**exponent logits: at least one."""
    return max(1, 2**exponent // vocab)


def loss_seconds(options, vocab: int, precision: str) -> dict[int, float]:
    """Median seconds of one loss and its backward per slice exponent."""
    timer = fused_loss_timer(options.tokens, options.hidden, vocab, precision)
    cases = {exponent: functools.partial(timer, LOSSES["forward_kl"], tokens_per_slice(exponent, vocab))
             for exponent in options.exponents}  # fmt: skip
    return median_seconds(cases, options.runs, f"V={vocab} {precision} (slice exponent)")


def main(argv=None) -> dict:
    options = parse_arguments(argv)
    info = machine()
    header = ("vocab", "precision", *[f"2^{e} logits" for e in options.exponents],
              f"2^{ACCELERATOR_DEFAULT} / 2^{CPU_DEFAULT}")
    results, rows = {}, [header]
    for vocab in options.vocabs:
        for precision in options.precision:
            seconds = loss_seconds(options, vocab, precision)
            ratio = seconds[ACCELERATOR_DEFAULT] / seconds[CPU_DEFAULT]
            results[f"{vocab}_{precision}"] = {
                "tokens_per_slice": {str(e): tokens_per_slice(e, vocab) for e in options.exponents},
                "median_seconds": {str(e): value for e, value in seconds.items()},
                "accelerator_default_over_cpu_default_seconds": ratio,
            }
            rows.append((str(vocab), precision, *[f"{seconds[e]:.2f}" for e in options.exponents], f"{ratio:.2f}x"))
    return report("loss_slices", f"{describe(info)}; {options.tokens} tokens, width {options.hidden}, forward KL",
                  rows, options, results)


if __name__ == "__main__":
    main()
