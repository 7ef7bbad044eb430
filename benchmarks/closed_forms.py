"""Time of the chunked logit loss with each loss's closed-form gradient against the same loss under autograd.

    python benchmarks/closed_forms.py [--tokens 2048] [--hidden 512] [--vocab 151936] [--precision bf16 fp32]
                                      [--losses forward_kl jsd ...] [--runs 3]

A loss marked ``closed_form_gradient`` gives the chunked loss its value and its gradient with respect to the
student's logits in one function; without the mark the chunked loss differentiates it with autograd, slice by
slice. Both run here on the same inputs: one loss and its backward (``loss_slices.fused_loss_timer``: both LM
heads fused, the default loss slice for this device), for each loss and precision, the two variants interleaved
over --runs rounds after one warm-up call each; the table gives median seconds and
``autograd_over_closed_form_seconds``. The gradients of the two agree to the tests' tolerance
(``tests/objectives/test_losses.py``), so only time is compared.

Results go to benchmarks/results/closed_forms.json.
"""

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import describe, machine  # noqa: E402
from distily.objectives.losses import LOSSES  # noqa: E402
from loss_slices import fused_loss_timer, median_seconds, report  # noqa: E402

CLOSED_FORMS = sorted(name for name, loss in LOSSES.items() if hasattr(loss, "value_and_gradient"))
PARAMS = {"cakld": {"beta": 0.5}}  # a required parameter; the others' defaults


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--precision", nargs="+", choices=("bf16", "fp32"), default=["bf16", "fp32"])
    parser.add_argument("--losses", nargs="+", choices=CLOSED_FORMS, default=CLOSED_FORMS)
    parser.add_argument("--runs", type=int, default=3)
    return parser.parse_args(argv)


def under_autograd(loss_fn):
    """``loss_fn`` without its closed form: the chunked loss then differentiates it with autograd."""

    def loss(*args, **kwargs):
        return loss_fn(*args, **kwargs)

    return loss


def variant_seconds(options, name: str, precision: str) -> dict[str, float]:
    """Median seconds of one loss and its backward, closed form and autograd."""
    timer = fused_loss_timer(options.tokens, options.hidden, options.vocab, precision)
    params = PARAMS.get(name, {})
    cases = {variant: functools.partial(timer, loss_fn, None, **params)  # None: the device's default slice
             for variant, loss_fn in (("closed_form", LOSSES[name]), ("autograd", under_autograd(LOSSES[name])))}
    return median_seconds(cases, options.runs, f"{name} {precision}")


def main(argv=None) -> dict:
    options = parse_arguments(argv)
    info = machine()
    results, rows = {}, [("loss", "precision", "closed form s", "autograd s", "autograd / closed form")]
    for name in options.losses:
        for precision in options.precision:
            seconds = variant_seconds(options, name, precision)
            ratio = seconds["autograd"] / seconds["closed_form"]
            results[f"{name}_{precision}"] = {"median_seconds": seconds, "autograd_over_closed_form_seconds": ratio}
            rows.append((name, precision, f"{seconds['closed_form']:.2f}", f"{seconds['autograd']:.2f}",
                         f"{ratio:.2f}x"))
    caption = f"{describe(info)}; {options.tokens} tokens, width {options.hidden}, vocabulary {options.vocab}"
    return report("closed_forms", caption, rows, options, results)


if __name__ == "__main__":
    main()
