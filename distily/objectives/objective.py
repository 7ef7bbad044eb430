"""The distillation objective: a weighted sum of components, each logged on its own.

A component returns the *sum* of its per-token loss over the batch; the objective divides by the
number of tokens in the whole (possibly accumulated, possibly multi-process) batch, so one batch of
B and k accumulated batches of B/k give the same loss and the same gradients.
"""

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from distily.arguments import registered
from distily.models.architecture import plain_lm_head
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.chunked import chunked_logit_loss_sum, chunked_loss_footprint, chunked_loss_held
from distily.objectives.component import (
    TARGETS,
    Component,
    StepShape,
    loss_positions,
    next_token_targets,
    token_counts,
)
from distily.objectives.cross_tokenizer import CROSS_TOKENIZER_LOSSES
from distily.objectives.features import build_feature_components
from distily.objectives.layer_maps import check_layer_map
from distily.objectives.losses import FEATURE_LOSSES, LOSSES, UNKNOWN_WORKING_TENSORS, check_loss
from distily.objectives.norms import NORMS
from distily.objectives.projectors import PROJECTORS
from distily.objectives.router import ROUTER_AUX, RouterAuxComponent, router_aux_weight


class LogitsComponent(Component):
    """``loss(student_logits, teacher_logits)`` at every loss position (``loss_positions``), in token chunks
    (``chunked.py``) so that full ``[tokens, vocab]`` fp32 tensors of both models are never held at once.

    When the trainer runs the student without its logits (no component needs them), the student's final
    hidden states go through its LM head chunk by chunk inside the loss, so its logits are never
    materialised either; when it runs only the teacher's decoder (outputs without ``logits``), the
    teacher's LM head is applied the same way, slice by slice."""

    def __init__(self, loss: str, temperature: float = 1.0, vocab_size: Optional[int] = None, **loss_kwargs):
        super().__init__()
        self.loss_name, self.loss_fn = loss, LOSSES[loss]
        self.temperature, self.vocab_size, self.loss_kwargs = temperature, vocab_size, loss_kwargs
        self._lm_heads: dict[str, nn.Module] = {}  # the models' own, held outside this module's state

    def attach(self, student, teacher):
        self._lm_heads = {"student": student.get_output_embeddings()}
        if teacher is not None:
            self._lm_heads["teacher"] = teacher.get_output_embeddings()

    def student_side(self, student_outputs, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The student's input to a chunked loss: its logits [batch, seq, vocab] when they are all there, else its
        final hidden states [batch, seq, hidden] (after the final norm), with its LM head to fuse."""
        if student_outputs.logits.shape[1] == mask.shape[1]:
            return student_outputs.logits, {}
        head = self._lm_heads["student"]
        return student_outputs.hidden_states[-1], {"lm_head_weight": head.weight, "lm_head_bias": head.bias}

    def forward(self, student_outputs, teacher_outputs, batch):
        mask = loss_positions(batch)  # [batch, seq]
        common = dict(mask=mask, vocab_size=self.vocab_size, temperature=self.temperature, **self.loss_kwargs)
        teacher = getattr(teacher_outputs, "logits", None)  # [batch, seq, teacher vocab]
        if teacher is None:  # the teacher's decoder ran alone: [batch, seq, teacher hidden], after its final norm
            teacher, head = teacher_outputs.last_hidden_state, self._lm_heads["teacher"]
            common.update(teacher_lm_head_weight=head.weight, teacher_lm_head_bias=head.bias)
        student, student_head = self.student_side(student_outputs, mask)
        return chunked_logit_loss_sum(self.loss_fn, student, teacher, **student_head, **common)

    def memory_footprint(self, step: StepShape) -> int:
        hidden = step.student.width if step.fused_student_head else None
        working = getattr(self.loss_fn, "working_tensors", UNKNOWN_WORKING_TENSORS)
        return chunked_loss_footprint(step.tokens, self.vocab_size or step.student_vocab, hidden,
                                      working_tensors=working, compute_bytes=step.compute_bytes,
                                      device_type=step.device_type)

    def memory_held(self, step: StepShape) -> int:
        hidden = step.student.width if step.fused_student_head else None
        return chunked_loss_held(step.tokens, self.vocab_size or step.student_vocab, hidden,
                                 compute_bytes=step.compute_bytes)

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, temperature={self.temperature}, vocab_size={self.vocab_size}"


class HardLabelComponent(Component):
    """Next-token cross-entropy of the student on the data itself (no teacher involved)."""

    normalizer = TARGETS
    needs_teacher = False
    needs_student_logits = True

    def forward(self, student_outputs, teacher_outputs, batch):
        logits = student_outputs.logits[:, :-1]  # [batch, seq - 1, vocab]
        valid = next_token_targets(batch)  # [batch, seq - 1]
        return F.cross_entropy(logits[valid].float(), batch["input_ids"][:, 1:][valid], reduction="sum")

    def memory_footprint(self, step: StepShape) -> int:
        # the targets' logits gathered, in fp32, their log-softmax and its gradient: [tokens, vocab] each
        return step.tokens * step.student_vocab * (step.compute_bytes + 3 * 4)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # weighted sum, what is backpropagated
    components: dict[str, torch.Tensor]  # each component's unweighted mean, detached, for logging


class DistillationObjective(nn.Module):
    """``sum_i weight_i * component_i / max(tokens_i, 1)``: a step with no token to count (padding only, or chat
    turns without an answer) gives a loss of 0 and zero gradients, never nan."""

    def __init__(self, components: dict[str, Component], weights: dict[str, float]):
        super().__init__()
        self.components = nn.ModuleDict(components)
        self.weights = dict(weights)

    def needs(self, attribute: str) -> bool:
        return any(getattr(component, attribute) for component in self.components.values())

    def fuses_student_lm_head(self, student: PreTrainedModel) -> bool:
        """Whether the student runs without its logits, its LM head applied inside the logit loss: when no
        component needs the logits and the head is a plain linear layer."""
        return not self.needs("needs_student_logits") and plain_lm_head(student)

    def deepest_student_output(self, student_depth: int) -> int:
        """The deepest student output any component reads (``Component.deepest_student_output``)."""
        return max(component.deepest_student_output(student_depth) for component in self.components.values())

    def memory_footprint(self, step: StepShape) -> int:
        """Peak bytes the objective allocates for a micro-batch of ``step``'s shape. The components run one after
        the other, each beside what the ones before it hold for the backward pass."""
        held, peak = 0, 0
        for component in self.components.values():
            peak = max(peak, held + component.memory_footprint(step))
            held += component.memory_held(step)
        return peak

    def attach(self, student: PreTrainedModel, teacher: Optional[PreTrainedModel]) -> None:
        """Let components that read model internals (hooks) attach to both models; the trainer calls it
        (``teacher`` is None for a recorded teacher)."""
        for component in self.components.values():
            component.attach(student, teacher)

    def forward(
        self,
        student_outputs: Any,
        teacher_outputs: Any,
        batch: dict[str, torch.Tensor],
        counts: Optional[torch.Tensor] = None,
    ) -> ObjectiveOutput:
        counts = token_counts(batch) if counts is None else counts
        total, logged = 0.0, {}
        for name, component in self.components.items():
            value = component(student_outputs, teacher_outputs, batch) / counts[component.normalizer].clamp(min=1)
            total = total + self.weights[name] * value
            logged[name] = value.detach()
        return ObjectiveOutput(loss=total, components=logged)


def check_objective(args: ObjectiveArguments) -> None:
    """Every registry name (and the parameters it is given) of the components turned on, checked before the models
    load, so that a typo stops a run before it starts and a sweep before its first run. Required loss parameters may
    still be missing: CAKLD's beta is calibrated from the teacher."""
    if args.logits_weight > 0:
        check_loss(args.logits_loss, args.logits_loss_kwargs, complete=False)
        registered(args.cross_tokenizer_loss, CROSS_TOKENIZER_LOSSES, "cross_tokenizer_loss", "cross-tokenizer loss")
    if args.hidden_states_weight > 0:
        registered(args.hidden_states_loss, FEATURE_LOSSES, "hidden_states_loss", "feature loss")
        registered(args.hidden_states_projector, PROJECTORS, "hidden_states_projector", "projector")
        registered(args.hidden_states_norm, NORMS, "hidden_states_norm", "norm")
    for component in ("hidden_states", "attentions", "attention_relations"):
        if getattr(args, f"{component}_weight") > 0:
            option = f"{component}_layer_map"
            check_layer_map(option, getattr(args, option), getattr(args, f"{option}_kwargs"))


def build_objective(
    args: ObjectiveArguments,
    teacher_config: Optional[PretrainedConfig] = None,
    student_config: Optional[PretrainedConfig] = None,
    vocab_size: Optional[int] = None,
    logits_component: type[Component] = LogitsComponent,
) -> DistillationObjective:
    """The objective the configuration asks for. The model configs size the feature components (layer maps,
    projectors, norms) without a forward pass, and are needed only when one is turned on; ``vocab_size``
    limits logit losses to the shared vocabulary. ``logits_component`` is the logit loss the teacher's
    outputs feed: full logits (``LogitsComponent``) or a store's sparse targets (``SparseLogitsComponent``).
    A mixture-of-experts student whose config sets ``output_router_logits`` adds its router loss (``router.py``)."""
    components, weights = {}, {}
    if args.logits_weight > 0:
        check_loss(args.logits_loss, args.logits_loss_kwargs)
        components["logits"] = logits_component(
            args.logits_loss, args.logits_temperature, vocab_size, **args.logits_loss_kwargs
        )
        weights["logits"] = args.logits_weight
    if args.hard_label_weight > 0:
        components["hard_label"] = HardLabelComponent()
        weights["hard_label"] = args.hard_label_weight
    if router_aux_weight(student_config) > 0:
        components[ROUTER_AUX] = RouterAuxComponent()
        weights[ROUTER_AUX] = router_aux_weight(student_config)
    features, feature_weights = build_feature_components(args, teacher_config, student_config)
    return DistillationObjective({**components, **features}, {**weights, **feature_weights})
