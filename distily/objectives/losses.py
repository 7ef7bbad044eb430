"""Logit distillation losses.

Every loss in ``LOSSES`` has the signature::

    loss(student_logits, teacher_logits, temperature=1.0, **params) -> per_token_loss

with ``student_logits`` and ``teacher_logits`` of shape ``[tokens, vocab]`` (padding already removed)
and a ``[tokens]`` result in float32. Logits are divided by ``temperature`` and the result is
multiplied by ``temperature ** 2`` so gradient magnitudes do not depend on it (Hinton et al., 2015,
"Distilling the Knowledge in a Neural Network"). The reduction over tokens is the caller's job,
so that one batch of B and k accumulated batches of B/k give the same value.

Register a loss of your own with ``LOSSES["name"] = fn``.
"""

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_teacher || p_student) = sum_v p_t(v) (log p_t(v) - log p_s(v)), per token.

    Mode-covering; the classic distillation target (Hinton et al., 2015).
    """
    student_logprobs = _log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _log_softmax(teacher_logits, temperature)  # [N, V]
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(-1)
    return kl * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_student || p_teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v)), per token.

    Mode-seeking (Gu et al., 2024, "MiniLLM").
    """
    student_logprobs = _log_softmax(student_logits, temperature)  # [N, V]
    teacher_logprobs = _log_softmax(teacher_logits, temperature)  # [N, V]
    kl = (student_logprobs.exp() * (student_logprobs - teacher_logprobs)).sum(-1)
    return kl * temperature**2


LOSSES: dict[str, LossFn] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
}
