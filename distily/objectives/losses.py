"""Logit distillation losses.

Every loss in ``LOSSES`` has the signature::

    loss(student_logits, teacher_logits, temperature=1.0, **params) -> per_token_loss

with ``student_logits`` and ``teacher_logits`` of shape ``[tokens, vocab]`` (padding already removed)
and a ``[tokens]`` result in float32, whatever the input dtype. Logits are divided by ``temperature``
and the result is multiplied by ``temperature ** 2`` so that the gradients of the KL-type losses keep their
magnitude as it grows, rather than shrinking as 1 / T^2 (Hinton et al., 2015, "Distilling the Knowledge in a Neural
Network"); ``tvd``'s, first order in p_t - p_s, grows in proportion to T instead. The two losses on raw logits
(``mse``, ``cosine``) are independent of the temperature: for MSE the rule cancels exactly, and the
cosine is scale invariant. The reduction over tokens is the caller's job, so that one batch of B and
k accumulated batches of B/k give the same value (sum, then divide by the global token count).

Notation in the docstrings: ``p_t = softmax(teacher_logits / T)``, ``p_s = softmax(student_logits / T)``,
sums run over the vocabulary. Terms ``0 * log 0`` count as 0, so a teacher logit of ``-inf`` (a token
the teacher rules out, as in a top-k record) is allowed wherever the loss stays finite; student logits
must be finite.

Register a loss of your own with ``LOSSES["name"] = fn``; ``check_loss`` then checks a config's
parameters against its signature. A loss that depends on the two distributions alone (not on the raw
logits) is marked ``@between_distributions``, which gives it a sparse form against a recorded teacher;
``@working_tensors(n)`` tells the memory preflight how many ``[tokens, vocab]`` tensors it holds at once;
``@closed_form_gradient(fn)`` gives the chunked loss its value and gradient in one function, in place of autograd.
``mse`` and ``cosine`` also serve as the feature losses of hidden states (``features.py``).
"""

import inspect
import math
import numbers
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from distily.arguments import registered
from distily.errors import DistilyConfigError

LossFn = Callable[..., torch.Tensor]


def tempered_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float32 over the last axis (no division, and no copy of float32 logits, at T = 1)."""
    scaled = logits.float() if temperature == 1 else logits.float() / temperature  # [N, V]
    return F.log_softmax(scaled, dim=-1)


def _teacher_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher log-probabilities with log 0 = -inf raised to the lowest finite float, so that the
    0 * log 0 terms of every formula evaluate to 0 rather than nan [N, V]."""
    logprobs = tempered_log_softmax(logits, temperature)
    lowest = torch.finfo(logprobs.dtype).min
    return logprobs.clamp_min(lowest) if logprobs.requires_grad else logprobs.clamp_min_(lowest)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)) over the last axis, from log-probabilities [..., V] -> [...].

    The terms where p(v) = 0 are 0, value and gradient: where q(v) = 0 too (log q raised to the lowest float),
    the product's gradient would otherwise be 0 * inf = nan once the loss is scaled by T^2 > 1. A NaN p(v) (a
    teacher whose half-precision activations overflowed) stays NaN: ``p > 0`` would count it as 0."""
    probs = logp.exp()  # [..., V]
    return torch.where(probs != 0, probs * (logp - logq), 0.0).sum(-1)


UNKNOWN_WORKING_TENSORS = 10
"""``working_tensors`` of a loss that does not declare it: more than any registered loss holds."""


def working_tensors(count: int) -> Callable[[LossFn], LossFn]:
    """Declare that the loss and its gradient hold at most ``count`` fp32 ``[tokens, vocab]`` tensors at once
    (measured at the allocator, ``tests/training/test_preflight.py``): the memory preflight reads it."""

    def mark(loss: LossFn) -> LossFn:
        loss.working_tensors = count
        return loss

    return mark


def closed_form_gradient(value_and_gradient: Callable[..., tuple[torch.Tensor, torch.Tensor]]):
    """Give a loss the closed form of its value and its gradient with respect to the student's logits:
    ``value_and_gradient(student_logits, teacher_logits, temperature, **params) -> (per-token loss [N] float32,
    gradient of their sum [N, V] float32)``. The chunked loss calls it in place of autograd, which makes about
    twice the passes over the ``[N, V]`` slice (1.6x the time of a slice of 6 tokens at V = 151,936 on CPU)."""

    def mark(loss: LossFn) -> LossFn:
        loss.value_and_gradient = value_and_gradient
        return loss

    return mark


def between_distributions(loss: LossFn) -> LossFn:
    """Mark ``loss`` as a function of the two distributions p_s and p_t alone (not of the raw logits): it then
    has a sparse form against a recorded teacher's top-k (``distily.objectives.sparse``). Returns ``loss``."""
    loss.between_distributions = True
    return loss


def _log_mixture(logp: torch.Tensor, logq: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(weight_p * p + (1 - weight_p) * q), computed in log space (no underflow) [N, V]."""
    log_weight_p = math.log(weight_p) if weight_p > 0 else -math.inf
    return torch.logaddexp(logp + log_weight_p, logq + math.log1p(-weight_p))


def _check_unit_interval(name: str, value: float, *, open_low: bool, open_high: bool) -> None:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    low_ok = number and (value > 0 if open_low else value >= 0)
    high_ok = number and (value < 1 if open_high else value <= 1)
    if not (low_ok and high_ok):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise DistilyConfigError(f"loss parameter {name}={value!r} must be a number in {interval}")


def _forward_kl_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0):
    """Forward KL and its gradient with respect to the student's logits, T (p_s - p_t)."""
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    teacher_probs = teacher_logprobs.exp()  # [N, V]
    value = (teacher_probs * teacher_logprobs.sub_(student_logprobs)).sum(-1) * temperature**2  # [N]
    return value, student_logprobs.exp_().sub_(teacher_probs).mul_(temperature)


def _row_dot(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """sum_v left[n, v] * right[n, v] [N], in the inputs' precision: ``vecdot`` and ``einsum`` would run in bf16
    under autocast (and a batched matrix product of [1, V] by [V, 1] rows is 20x slower on CPU)."""
    return (left * right).sum(-1)


def _through_softmax_(student_probs: torch.Tensor, grad_probs: torch.Tensor, mean: torch.Tensor, scale: float):
    """The gradient with respect to the logits z of a loss L(p_s), p_s = softmax(z / T), from g [N, V] (overwritten)
    with dL/dp_s = c g and ``mean`` = sum_v p_s g [N]: scale p_s (g - mean), where a loss times T^2 passes
    scale = c T."""
    return grad_probs.sub_(mean[:, None]).mul_(student_probs).mul_(scale)


def _reverse_kl_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0):
    """Reverse KL and its gradient T p_s (log p_s - log p_t - KL(p_s || p_t))."""
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    log_ratio = student_logprobs - _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    student_probs = student_logprobs.exp_()  # [N, V], in place of the log-probabilities
    divergence = _row_dot(student_probs, log_ratio)  # [N]
    return divergence * temperature**2, _through_softmax_(student_probs, log_ratio, divergence, temperature)


def _cakld_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0, *, beta: float):
    """CAKLD and its gradient, beta times the reverse KL's plus 1 - beta times the forward KL's."""
    _check_unit_interval("beta", beta, open_low=False, open_high=False)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    student_probs, teacher_probs = student_logprobs.exp(), teacher_logprobs.exp()  # [N, V] each
    log_ratio = student_logprobs.sub_(teacher_logprobs)  # [N, V] log p_s - log p_t
    reverse, forward = _row_dot(student_probs, log_ratio), -_row_dot(teacher_probs, log_ratio)  # [N] each
    gradient = _through_softmax_(student_probs, log_ratio, reverse, beta * temperature)
    gradient.add_(student_probs.sub_(teacher_probs), alpha=(1 - beta) * temperature)
    return (beta * reverse + (1 - beta) * forward) * temperature**2, gradient


def _jsd_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0, *, beta: float = 0.5):
    """Generalized JSD and its gradient T (1 - beta) p_s (log p_s - log m - KL(p_s || m)): the derivative of
    JSD_beta with respect to p_s is (1 - beta) (log p_s - log m), its teacher term's and mixture's parts cancelling."""
    _check_unit_interval("beta", beta, open_low=True, open_high=True)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    mixture_logprobs = _log_mixture(teacher_logprobs, student_logprobs, beta)  # [N, V]
    teacher_probs = teacher_logprobs.exp()  # [N, V]
    teacher_term = _row_dot(teacher_probs, teacher_logprobs.sub_(mixture_logprobs))  # [N] KL(p_t || m)
    del teacher_probs, teacher_logprobs
    student_probs = student_logprobs.exp()  # [N, V]
    log_ratio = student_logprobs.sub_(mixture_logprobs)  # [N, V] log p_s - log m
    student_term = _row_dot(student_probs, log_ratio)  # [N] KL(p_s || m)
    gradient = _through_softmax_(student_probs, log_ratio, student_term, (1 - beta) * temperature)
    return (beta * teacher_term + (1 - beta) * student_term) * temperature**2, gradient


def _skew_forward_kl_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0, *,
                                        alpha: float = 0.1):
    """Skew KL and its gradient: with m = alpha p_t + (1 - alpha) p_s, its derivative with respect to p_s is
    -(1 - alpha) p_t / m."""
    _check_unit_interval("alpha", alpha, open_low=False, open_high=True)
    if alpha == 0:  # the forward KL, whose ratio p_t / p_s has no 1 / alpha bound and overflows below
        return _forward_kl_value_and_gradient(student_logits, teacher_logits, temperature)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    mixture_logprobs = _log_mixture(teacher_logprobs, student_logprobs, alpha)  # [N, V]
    teacher_probs = teacher_logprobs.exp()  # [N, V]
    log_ratio = teacher_logprobs.sub_(mixture_logprobs)  # [N, V] log p_t - log m
    value = _row_dot(teacher_probs, log_ratio) * temperature**2  # [N]
    del teacher_probs, mixture_logprobs
    student_probs = student_logprobs.exp_()  # [N, V]
    ratio = log_ratio.exp_()  # [N, V] p_t / m
    gradient = _through_softmax_(student_probs, ratio, _row_dot(student_probs, ratio), -(1 - alpha) * temperature)
    return value, gradient


def _skew_reverse_kl_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0, *,
                                        alpha: float = 0.1):
    """Skew reverse KL and its gradient: with m = (1 - alpha) p_t + alpha p_s, its derivative with respect to p_s
    is log p_s - log m + 1 - alpha p_s / m (the constant cancels through the softmax)."""
    _check_unit_interval("alpha", alpha, open_low=False, open_high=True)
    if alpha == 0:  # the reverse KL, whose ratio p_s / p_t has no 1 / alpha bound and overflows below
        return _reverse_kl_value_and_gradient(student_logits, teacher_logits, temperature)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    mixture_logprobs = _log_mixture(student_logprobs, teacher_logprobs, alpha)  # [N, V]
    del teacher_logprobs
    student_probs = student_logprobs.exp()  # [N, V]
    log_ratio = student_logprobs.sub_(mixture_logprobs)  # [N, V] log p_s - log m
    del mixture_logprobs
    divergence = _row_dot(student_probs, log_ratio)  # [N]
    grad_probs = log_ratio.exp().mul_(-alpha).add_(log_ratio)  # [N, V]
    gradient = _through_softmax_(student_probs, grad_probs, _row_dot(student_probs, grad_probs), temperature)
    return divergence * temperature**2, gradient


def _soft_cross_entropy_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0):
    """Soft cross-entropy and its gradient, the forward KL's: T (p_s - p_t)."""
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_probs = _teacher_log_softmax(teacher_logits, temperature).exp_()  # [N, V]
    value = -_row_dot(teacher_probs, student_logprobs) * temperature**2  # [N]
    return value, student_logprobs.exp_().sub_(teacher_probs).mul_(temperature)


@between_distributions
@closed_form_gradient(_forward_kl_value_and_gradient)
@working_tensors(6)
def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_t || p_s) = sum_v p_t(v) (log p_t(v) - log p_s(v)), per token, times T^2.

    Mode-covering; the classic distillation target (Hinton et al., 2015).
    """
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    return kl_divergence(teacher_logprobs, student_logprobs) * temperature**2


@between_distributions
@closed_form_gradient(_reverse_kl_value_and_gradient)
@working_tensors(5)
def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_s || p_t) = sum_v p_s(v) (log p_s(v) - log p_t(v)), per token, times T^2.

    Mode-seeking (Gu et al., 2024, "MiniLLM: Knowledge Distillation of Large Language Models").
    """
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    return kl_divergence(student_logprobs, teacher_logprobs) * temperature**2


@between_distributions
@closed_form_gradient(_cakld_value_and_gradient)
@working_tensors(7)
def cakld(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, *, beta: float
) -> torch.Tensor:
    """Confidence-aware KL: beta * KL(p_s || p_t) + (1 - beta) * KL(p_t || p_s), per token, times T^2.

    Du et al., 2024, "BitDistiller: Unleashing the Potential of Sub-4-Bit LLMs via Self-Distillation",
    Sec. 3.3. There beta is the teacher's mean confidence over the training data (see
    ``teacher_confidence``): a confident teacher weights the mode-seeking reverse KL more. Here beta is
    a parameter, fixed by the user or estimated once before training; beta in [0, 1].
    """
    _check_unit_interval("beta", beta, open_low=False, open_high=False)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    reverse = kl_divergence(student_logprobs, teacher_logprobs)  # [N]
    forward = kl_divergence(teacher_logprobs, student_logprobs)  # [N]
    return (beta * reverse + (1 - beta) * forward) * temperature**2


@torch.no_grad()
def teacher_confidence(
    teacher_logits_batches: Iterable[torch.Tensor], masks: Optional[Iterable[torch.Tensor]] = None
) -> float:
    """The teacher's mean confidence, mean over tokens of max_v p_t(v) at temperature 1: CAKLD's beta.

    ``teacher_logits_batches`` yields ``[..., vocab]`` tensors (e.g. ``[batch, seq, vocab]`` from a
    calibration pass over training batches); ``masks`` yields matching ``[...]`` bool tensors, True for
    tokens that count. BitDistiller (``train/train.py`` of DD-DuDa/BitDistiller) averages the per-batch
    mean of the teacher's max probability over about 20 batches, padding included; this function
    averages over all non-padding tokens of all batches, so batches with more real tokens weigh more.
    """
    if masks is None:
        batches = ((teacher_logits, None) for teacher_logits in teacher_logits_batches)
    else:
        batches = zip(teacher_logits_batches, masks, strict=True)
    confidence_sum = torch.zeros((), dtype=torch.float64)
    token_count = 0
    for teacher_logits, mask in batches:
        logits = teacher_logits.float()  # [..., V]
        max_prob = (logits.amax(-1) - torch.logsumexp(logits, -1)).exp()  # [...]
        if mask is not None:
            max_prob = max_prob[mask.to(torch.bool)]
        confidence_sum += max_prob.sum(dtype=torch.float64).cpu()
        token_count += max_prob.numel()
    if token_count == 0:
        raise DistilyConfigError("teacher_confidence got no tokens: expected at least one unmasked token")
    return float(confidence_sum / token_count)


@between_distributions
@closed_form_gradient(_jsd_value_and_gradient)
@working_tensors(7)
def jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, *, beta: float = 0.5
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence, per token, times T^2.

    JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m),  m = beta * p_t + (1 - beta) * p_s,
    with log m computed by logaddexp (Agarwal et al., 2024, "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes" (GKD), with p_t as their P). beta = 0.5 is the standard,
    symmetric JSD (bounded by log 2 before the T^2 factor); JSD_beta / beta tends to the forward KL as
    beta -> 0 and JSD_beta / (1 - beta) to the reverse KL as beta -> 1. beta in (0, 1).
    """
    _check_unit_interval("beta", beta, open_low=True, open_high=True)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    mixture_logprobs = _log_mixture(teacher_logprobs, student_logprobs, beta)  # [N, V]
    divergence = beta * kl_divergence(teacher_logprobs, mixture_logprobs) + (1 - beta) * kl_divergence(
        student_logprobs, mixture_logprobs
    )
    return divergence * temperature**2


@between_distributions
@closed_form_gradient(_skew_forward_kl_value_and_gradient)
@working_tensors(7)
def skew_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, *, alpha: float = 0.1
) -> torch.Tensor:
    """Skew KL: KL(p_t || alpha * p_t + (1 - alpha) * p_s), per token, times T^2.

    Ko et al., 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models",
    alpha-skew KL (alpha = 0.1 there). alpha = 0 is the forward KL; the mixture keeps the loss and its gradient
    bounded where the student puts little mass. alpha in [0, 1).
    """
    _check_unit_interval("alpha", alpha, open_low=False, open_high=True)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    mixture_logprobs = _log_mixture(teacher_logprobs, student_logprobs, alpha)  # [N, V]
    return kl_divergence(teacher_logprobs, mixture_logprobs) * temperature**2


@between_distributions
@closed_form_gradient(_skew_reverse_kl_value_and_gradient)
@working_tensors(7)
def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, *, alpha: float = 0.1
) -> torch.Tensor:
    """Skew reverse KL: KL(p_s || (1 - alpha) * p_t + alpha * p_s), per token, times T^2.

    Ko et al., 2024, "DistiLLM", alpha-skew reverse KL. alpha = 0 is the reverse KL. alpha in [0, 1).
    """
    _check_unit_interval("alpha", alpha, open_low=False, open_high=True)
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    mixture_logprobs = _log_mixture(student_logprobs, teacher_logprobs, alpha)  # [N, V]
    return kl_divergence(student_logprobs, mixture_logprobs) * temperature**2


def _tvd_value_and_gradient(student_logits, teacher_logits, temperature: float = 1.0):
    """TVD and its gradient: its derivative with respect to p_s is sign(p_s - p_t) / 2 (0 where the two are
    equal, as autograd takes |x|'s at 0)."""
    student_probs = tempered_log_softmax(student_logits, temperature).exp_()  # [N, V]
    difference = student_probs - _teacher_log_softmax(teacher_logits, temperature).exp_()  # [N, V] p_s - p_t
    value = difference.abs().sum(-1).mul_(0.5 * temperature**2)  # [N]
    sign = difference.sign_()  # [N, V]
    return value, _through_softmax_(student_probs, sign, _row_dot(student_probs, sign), 0.5 * temperature)


@between_distributions
@closed_form_gradient(_tvd_value_and_gradient)
@working_tensors(5)
def tvd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance: 0.5 * sum_v |p_t(v) - p_s(v)|, per token, times T^2.

    A symmetric, bounded distance (in [0, 1] before the T^2 factor); used for distillation e.g. by
    Wen et al., 2023, "f-Divergence Minimization for Sequence-Level Knowledge Distillation". Unlike the KLs' (second
    order in p_t - p_s), its gradient grows in proportion to T under the T^2 factor (docs/losses.md).
    """
    student_probs = tempered_log_softmax(student_logits, temperature).exp()  # [N, V]
    teacher_probs = _teacher_log_softmax(teacher_logits, temperature).exp()  # [N, V]
    return 0.5 * (teacher_probs - student_probs).abs().sum(-1) * temperature**2


@between_distributions
@closed_form_gradient(_soft_cross_entropy_value_and_gradient)
@working_tensors(5)
def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Soft cross-entropy: -sum_v p_t(v) log p_s(v), per token, times T^2 (Hinton et al., 2015).

    The teacher enters as probabilities, the student as log-probabilities. It equals the forward KL
    plus the teacher's entropy, so it has the same gradient but is not zero when student == teacher.
    """
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _teacher_log_softmax(teacher_logits, temperature)  # [N, V]
    return -(teacher_logprobs.exp() * student_logprobs).sum(-1) * temperature**2


@working_tensors(6)
def mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean squared error of the logits: mean_v (z_s(v) - z_t(v))^2, per token.

    Ba & Caruana, 2014, "Do Deep Nets Really Need to be Deep?"; the high-temperature limit of the
    forward KL (Hinton et al., 2015). ((z_s - z_t) / T)^2 * T^2 does not depend on T, so
    ``temperature`` has no effect. On hidden states ``[tokens, width]`` it is TinyBERT's hidden-state loss
    (Jiao et al., 2020, "TinyBERT: Distilling BERT for Natural Language Understanding").
    """
    return (student_logits.float() - teacher_logits.float()).square().mean(-1)


@working_tensors(6)
def cosine(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cosine distance of the logit vectors: 1 - <z_s, z_t> / (|z_s| |z_t|), per token, in [0, 2].

    Used on outputs e.g. by Sanh et al., 2019 (DistilBERT, on hidden states: its cosine embedding loss,
    "DistilBERT, a distilled version of BERT"). The cosine is scale invariant, so ``temperature`` has no
    effect and no T^2 factor is applied.
    """
    return 1.0 - F.cosine_similarity(student_logits.float(), teacher_logits.float(), dim=-1)


LOSSES: dict[str, LossFn] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "cakld": cakld,
    "jsd": jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
    "soft_cross_entropy": soft_cross_entropy,
    "mse": mse,
    "cosine": cosine,
}

FeatureLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FEATURE_LOSSES: dict[str, FeatureLoss] = {"mse": mse, "cosine": cosine}  # per token: [tokens, width] -> [tokens]


def loss_params(name: str) -> dict[str, object]:
    """The extra parameters of the registered loss ``name``: name -> default (``inspect.Parameter.empty``
    where the parameter is required), read from its signature, so user-registered losses work too."""
    if name not in LOSSES:
        raise DistilyConfigError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    parameters = list(inspect.signature(LOSSES[name]).parameters.values())[3:]
    return {p.name: p.default for p in parameters}


def check_loss(name: str, params: dict, complete: bool = True) -> None:
    """Stop unless ``name`` is a registered loss and ``params`` are parameters it accepts, with values it accepts
    (the loss runs once on a one-token input), with ``complete`` every required one given (not yet as the config is
    read: CAKLD's beta is calibrated from the teacher later)."""
    registered(name, LOSSES, "logits_loss", "loss")
    accepted = loss_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise DistilyConfigError(
            f"logits_loss_kwargs {params} do not fit loss {name!r}: unknown parameters {unknown}; "
            f"it accepts {sorted(accepted)}"
        )
    missing = sorted(p for p, default in accepted.items() if default is inspect.Parameter.empty and p not in params)
    if missing and complete:
        raise DistilyConfigError(f"logits_loss_kwargs {params} do not fit loss {name!r}: it needs parameters {missing}")
    if not missing:  # the loss's own checks of its parameters' values, run on one token of two columns
        probe = torch.zeros(1, 2)
        try:
            LOSSES[name](probe, probe, 1.0, **params)
        except DistilyConfigError as err:
            raise DistilyConfigError(f"logits_loss_kwargs {params} do not fit loss {name!r}: {err}") from None
