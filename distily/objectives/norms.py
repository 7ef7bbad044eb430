"""Norms: put the (projected) student feature and the teacher feature on a common scale.

``NORMS[name](width) -> PairNorm``, a module whose ``forward(student, teacher)`` takes two
``[tokens, width]`` tensors (the student already projected to the teacher's width) and returns both,
in float32. Only the student side ever has learned parameters: a learned teacher side could shrink
both to zero and the loss with them. Layer normalisation here is per token over the feature axis,
``LN(h) = (h - mean(h)) / sqrt(var(h) + eps)`` (Ba et al., 2016, "Layer Normalization"); it removes the
scale differences between layers and models (e.g. the few very large channels of LLM hidden states)
that otherwise dominate an MSE. Register one of your own with ``NORMS["name"] = fn``.
"""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distily.arguments import registered

EPS = 1e-5


class PairNorm(nn.Module):
    """Normalise the student side (optionally with a learned per-channel gain and bias) and/or the teacher side."""

    def __init__(self, width: int, student: bool, teacher: bool, student_affine: bool = False):
        super().__init__()
        self.width, self.normalize_teacher = width, teacher
        self.student_norm = nn.LayerNorm(width, eps=EPS, elementwise_affine=student_affine) if student else None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        student, teacher = student.float(), teacher.float()  # [tokens, width] each
        if self.student_norm is not None:
            student = self.student_norm(student)
        if self.normalize_teacher:
            teacher = F.layer_norm(teacher, (self.width,), eps=EPS)
        return student, teacher

    def extra_repr(self) -> str:
        return f"normalize_teacher={self.normalize_teacher}"


def none(width: int) -> PairNorm:
    """Both features as they are."""
    return PairNorm(width, student=False, teacher=False)


def layernorm(width: int) -> PairNorm:
    """``LN`` without learned parameters on both sides: the loss compares the features' shapes, not their
    scales (normalised features as in Miles and Mikolajczyk, 2024, "Understanding the Role of the
    Projector in Knowledge Distillation")."""
    return PairNorm(width, student=True, teacher=True)


def teacher_only(width: int) -> PairNorm:
    """``LN`` without learned parameters on the teacher only: whitened targets, the student (and its
    projector) free to produce them (Wei et al., 2022, "Contrastive Learning Rivals Masked Image
    Modeling in Fine-tuning via Feature Distillation")."""
    return PairNorm(width, student=False, teacher=True)


def affine(width: int) -> PairNorm:
    """``gamma * LN(student) + beta`` with a learned per-channel gain and bias against ``LN(teacher)``:
    normalised targets, and a student side that may rescale each channel to meet them."""
    return PairNorm(width, student=True, teacher=True, student_affine=True)


NORMS: dict[str, Callable[[int], PairNorm]] = {
    "none": none,
    "layernorm": layernorm,
    "teacher_only": teacher_only,
    "affine": affine,
}


def build_norm(option: str, name: str, width: int) -> PairNorm:
    """``NORMS[name]`` for features of this width; ``option`` names the config key in errors."""
    registered(name, NORMS, option, "norm")
    return NORMS[name](width)
