"""Projectors: map a student feature to the teacher's width before the two are compared.

``PROJECTORS[name](student_width, teacher_width) -> nn.Module`` maps ``[..., student_width]`` to
``[..., teacher_width]``. Projectors are built from the model configs when the objective is created
(no dry-run batch), trained with the student, saved in checkpoints, and never exported with the
student. Register one of your own with ``PROJECTORS["name"] = fn``; ``build_projector`` refuses one that does not
map a feature of the student's width to one of the teacher's.
"""

from typing import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal as orthogonal_parametrization

from distily.arguments import registered
from distily.errors import DistilyConfigError

ProjectorFactory = Callable[[int, int], nn.Module]


def identity(student_width: int, teacher_width: int) -> nn.Module:
    """No projection: the student is compared as it is, so both widths must be equal."""
    if student_width != teacher_width:
        raise DistilyConfigError(
            f"the identity projector needs equal widths; got student {student_width} and teacher {teacher_width} "
            "(expected a linear, orthogonal or mlp projector)"
        )
    return nn.Identity()


def linear(student_width: int, teacher_width: int) -> nn.Module:
    """``h_s W + b`` with a learned ``W`` of shape ``[student_width, teacher_width]``: the FitNets regressor
    (Romero et al., 2015, "FitNets: Hints for Thin Deep Nets") and TinyBERT's ``W_h`` (Jiao et al., 2020)."""
    return nn.Linear(student_width, teacher_width)


def orthogonal(student_width: int, teacher_width: int) -> nn.Module:
    """``h_s W^T`` with the weight ``W`` (``[teacher_width, student_width]``) kept semi-orthogonal by
    ``torch.nn.utils.parametrizations.orthogonal``. For a narrower student W has orthonormal columns, so
    ``||h_s W^T|| = ||h_s||``: an isometry that keeps the student's geometry and cannot shrink the loss
    by scaling (Miles, Elezi and Deng, 2024, "VkD: Improving Knowledge Distillation using Orthogonal
    Projections")."""
    return orthogonal_parametrization(nn.Linear(student_width, teacher_width, bias=False))


def mlp(student_width: int, teacher_width: int) -> nn.Module:
    """``GELU(h_s W_1 + b_1) W_2 + b_2`` with a hidden width equal to the teacher's: a nonlinear projector
    (Chen et al., 2022, "Improved Feature Distillation via Projector Ensemble")."""
    return nn.Sequential(nn.Linear(student_width, teacher_width), nn.GELU(), nn.Linear(teacher_width, teacher_width))


PROJECTORS: dict[str, ProjectorFactory] = {
    "identity": identity,
    "linear": linear,
    "orthogonal": orthogonal,
    "mlp": mlp,
}


def build_projector(option: str, name: str, student_width: int, teacher_width: int) -> nn.Module:
    """``PROJECTORS[name]`` for these widths, checked on one feature of the student's width to give one of the
    teacher's (a registered projector may not); ``option`` names the config key in errors."""
    registered(name, PROJECTORS, option, "projector")
    try:
        projector = PROJECTORS[name](student_width, teacher_width)
    except DistilyConfigError as err:
        raise DistilyConfigError(f"{option}={name!r}: {err}")
    with torch.no_grad():
        try:
            width = projector(torch.zeros(1, student_width)).shape[-1]
        except RuntimeError as err:
            width = f"nothing ({str(err).splitlines()[0]})"
    if width != teacher_width:
        raise DistilyConfigError(
            f"{option}={name!r} maps a feature of the student's width {student_width} to {width}; expected the "
            f"teacher's width {teacher_width}"
        )
    return projector
