"""What every term of the distillation objective is: a ``Component``, and the token counts it is divided by."""

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from transformers import PreTrainedModel

from distily.data.framing import LOSS_MASK
from distily.objectives.model_shape import ModelShape

POSITIONS, TARGETS = 0, 1  # rows of the token-count tensor


def loss_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[batch, seq]`` bool: the positions whose outputs enter the losses and the held-out metrics. Every
    non-padding position, or, when the batch carries a ``loss_mask`` (1 at t when the token at t + 1 is a
    target: an assistant or completion token), the non-padding positions it marks. Every component, token
    count and evaluation reads its positions here."""
    positions = batch["attention_mask"].bool()  # [batch, seq]
    loss_mask = batch.get(LOSS_MASK)
    return positions if loss_mask is None else positions & loss_mask.bool()


def next_token_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[batch, seq - 1]`` bool: the loss positions whose next token is a target (both real tokens, and the
    next one not the first of a document: ``labels`` -100 there)."""
    mask = batch["attention_mask"].bool()  # [batch, seq]
    labels = batch.get("labels")
    following = mask[:, 1:] if labels is None else labels[:, 1:] != -100  # [batch, seq - 1]
    return loss_positions(batch)[:, :-1] & following


def token_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[positions, targets]``: loss positions (``loss_positions``), and those with a next-token target."""
    return torch.stack([loss_positions(batch).sum(), next_token_targets(batch).sum()])


@dataclass(frozen=True)
class StepShape:
    """What the working memory of a training step depends on: one micro-batch and the two models."""

    batch_size: int
    seq_length: int
    student: ModelShape
    teacher: ModelShape
    student_vocab: int  # the student's logits
    compute_bytes: int  # bytes per value of the models' matmul outputs: 2 under bf16/fp16 autocast, else 4
    fused_student_head: bool  # the student's logits are never materialised: the logit loss applies its LM head
    device_type: str  # where the step runs: "cpu", "cuda", ...
    eager_attention: bool  # the student runs eager attention (its own setting, or for an attention loss)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_length


class Component(nn.Module):
    """One term of the objective. ``forward`` returns the loss summed over tokens.

    ``normalizer`` picks the token count the objective divides the sum by; the ``needs_*`` flags tell
    the trainer what the models must return. Parameters of a component (projectors, norms) are trained
    with the student and saved in checkpoints, never in the exported student.
    """

    normalizer = POSITIONS
    needs_teacher = True
    needs_hidden_states = False
    needs_attentions = False
    needs_student_logits = False  # when no component does, the student's LM head is fused into the logit loss
    reads_teacher_internals = False  # attach() hooks into the teacher model: a recorded teacher cannot feed it

    def attach(self, student: PreTrainedModel, teacher: Optional[PreTrainedModel]) -> None:
        """Called by the trainer with both models before any forward pass (``teacher`` is None when it was
        recorded ahead of time); a component that reads model internals (e.g. q/k/v through hooks) registers
        its hooks here."""

    def forward(self, student_outputs: Any, teacher_outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def memory_footprint(self, step: StepShape) -> int:
        """Peak bytes this component allocates for a micro-batch of ``step``'s shape, the gradients it hands
        back included (the models' own outputs are counted with the models)."""
        return 0

    def memory_held(self, step: StepShape) -> int:
        """Bytes of its footprint still allocated after its forward pass (what it keeps for the backward pass),
        while the components after it run: all of it unless a component knows better."""
        return self.memory_footprint(step)

    def deepest_student_output(self, student_depth: int) -> int:
        """The deepest student output the loss reads, as an index of the student's hidden states (0: the embeddings;
        i: block i, its output or its attention; ``student_depth + 1``: the logits, the default): no gradient of
        this component reaches the blocks after it or, short of the logits, the LM head."""
        return student_depth + 1
