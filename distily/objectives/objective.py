"""The distillation objective: a weighted sum of components, each logged on its own.

A component returns the *sum* of its per-token loss over the batch; the objective divides by the
number of tokens in the whole (possibly accumulated, possibly multi-process) batch, so one batch of
B and k accumulated batches of B/k give the same loss and the same gradients.
"""

import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from distily.config import ObjectiveArguments
from distily.errors import DistilyConfigError
from distily.objectives.losses import LOSSES

POSITIONS, TARGETS = 0, 1  # rows of the token-count tensor


def token_counts(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[positions, targets]``: non-padding positions, and those followed by a non-padding token."""
    mask = attention_mask.bool()  # [batch, seq]
    return torch.stack([mask.sum(), (mask[:, 1:] & mask[:, :-1]).sum()])


class Component(nn.Module):
    """One term of the objective. ``forward`` returns the loss summed over tokens."""

    normalizer = POSITIONS
    needs_teacher = True
    needs_hidden_states = False
    needs_attentions = False

    def forward(self, student_outputs: Any, teacher_outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class LogitsComponent(Component):
    """``loss(student_logits, teacher_logits)`` at every non-padding position."""

    def __init__(self, loss: str, temperature: float = 1.0, vocab_size: Optional[int] = None, **loss_kwargs):
        super().__init__()
        self.loss_name, self.loss_fn = loss, LOSSES[loss]
        self.temperature, self.vocab_size, self.loss_kwargs = temperature, vocab_size, loss_kwargs

    def forward(self, student_outputs, teacher_outputs, batch):
        mask = batch["attention_mask"].bool()  # [batch, seq]
        student_logits = student_outputs.logits[mask][:, : self.vocab_size]  # [tokens, vocab]
        teacher_logits = teacher_outputs.logits[mask][:, : self.vocab_size]  # [tokens, vocab]
        return self.loss_fn(student_logits, teacher_logits, self.temperature, **self.loss_kwargs).sum()

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, temperature={self.temperature}, vocab_size={self.vocab_size}"


class HardLabelComponent(Component):
    """Next-token cross-entropy of the student on the data itself (no teacher involved)."""

    normalizer = TARGETS
    needs_teacher = False

    def forward(self, student_outputs, teacher_outputs, batch):
        logits = student_outputs.logits[:, :-1]  # [batch, seq - 1, vocab]
        targets = batch["labels"][:, 1:]  # [batch, seq - 1]
        valid = (targets != -100) & batch["attention_mask"][:, :-1].bool()
        return F.cross_entropy(logits[valid].float(), targets[valid], reduction="sum")


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # weighted sum, what is backpropagated
    components: dict[str, torch.Tensor]  # each component's unweighted mean, detached, for logging


class DistillationObjective(nn.Module):
    """``sum_i weight_i * component_i / tokens_i``."""

    def __init__(self, components: dict[str, Component], weights: dict[str, float]):
        super().__init__()
        self.components = nn.ModuleDict(components)
        self.weights = dict(weights)

    def needs(self, attribute: str) -> bool:
        return any(getattr(component, attribute) for component in self.components.values())

    def forward(
        self,
        student_outputs: Any,
        teacher_outputs: Any,
        batch: dict[str, torch.Tensor],
        counts: Optional[torch.Tensor] = None,
    ) -> ObjectiveOutput:
        counts = token_counts(batch["attention_mask"]) if counts is None else counts
        total, logged = 0.0, {}
        for name, component in self.components.items():
            value = component(student_outputs, teacher_outputs, batch) / counts[component.normalizer].clamp(min=1)
            total = total + self.weights[name] * value
            logged[name] = value.detach()
        return ObjectiveOutput(loss=total, components=logged)


def _check_loss(name: str, kwargs: dict) -> None:
    if name not in LOSSES:
        raise DistilyConfigError(f"logits_loss={name!r} is not a registered loss; expected one of {', '.join(LOSSES)}")
    try:
        inspect.signature(LOSSES[name]).bind(None, None, 1.0, **kwargs)
    except TypeError as err:
        raise DistilyConfigError(f"logits_loss_kwargs {kwargs} do not fit loss {name!r}: {err}")


def build_objective(args: ObjectiveArguments, vocab_size: Optional[int] = None) -> DistillationObjective:
    """The objective the configuration asks for; ``vocab_size`` limits logit losses to the shared vocabulary."""
    components, weights = {}, {}
    if args.logits_weight > 0:
        _check_loss(args.logits_loss, args.logits_loss_kwargs)
        components["logits"] = LogitsComponent(
            args.logits_loss, args.logits_temperature, vocab_size, **args.logits_loss_kwargs
        )
        weights["logits"] = args.logits_weight
    if args.hard_label_weight > 0:
        components["hard_label"] = HardLabelComponent()
        weights["hard_label"] = args.hard_label_weight
    return DistillationObjective(components, weights)
