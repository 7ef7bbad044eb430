"""Feature distillation: hidden states, attention probabilities and attention relations.

Each component pairs student and teacher layers with a layer map (``layer_maps.py``) and returns, like
every ``Component``, its loss summed over non-padding positions; the objective divides by the token
count. Only loss positions count (``loss_positions``: non-padding, and marked by a batch's ``loss_mask``
when it has one). Within a component the loss is averaged over layer pairs (and heads, relation kinds), so its
weight does not depend on how many layers are mapped. All reductions run in float32.
"""

import math
from typing import Optional

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from distily.arguments import registered
from distily.data.alignment import ALIGNED
from distily.data.framing import POSITION_IDS
from distily.errors import DistilyConfigError
from distily.models.architecture import active_stream, attending_layers, block_output
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.component import Component, StepShape, loss_positions
from distily.objectives.layer_maps import LayerPairs, resolve_layer_map
from distily.objectives.losses import FEATURE_LOSSES, kl_divergence
from distily.objectives.model_shape import ModelShape
from distily.objectives.norms import PairNorm, build_norm
from distily.objectives.projectors import build_projector
from distily.objectives.qkv import QKVRecorder


def paired_positions(batch: dict[str, torch.Tensor]) -> tuple:
    """(student index, teacher index) of the positions whose hidden states meet: every non-padding position; in
    a cross-tokenizer batch, the aligned ones (the last position of each aligned chunk, ``distily.data.alignment``);
    only the loss positions (``loss_positions``: the assistant's, for chat data)."""
    mask = loss_positions(batch)  # [batch, seq]
    aligned = batch.get(ALIGNED)  # [batch, student seq], -1 where none
    if aligned is None:
        return mask, mask
    student = mask & (aligned >= 0)
    return student, (student.nonzero()[:, 0], aligned[student])


class LayerPairsComponent(Component):
    """A component that reads the student at the layers of its ``layer_pairs`` (set by the subclass)."""

    layer_pairs: LayerPairs

    def deepest_student_output(self, student_depth: int) -> int:
        return max(student_index for student_index, _ in self.layer_pairs)


class HiddenStatesComponent(LayerPairsComponent):
    """``mean over pairs (i, j) of loss(norm(project(h_s[i])), norm(h_t[j]))`` at every non-padding token,
    ``h[i]`` the model's ``hidden_states[i]`` (index 0: embeddings). FitNets hints (Romero et al., 2015)
    and TinyBERT's hidden-state distillation (Jiao et al., 2020) are the linear-projector, MSE case."""

    needs_hidden_states = True

    def __init__(self, layer_pairs: LayerPairs, projectors: list[nn.Module], norms: list[PairNorm], loss: str):
        super().__init__()
        self.layer_pairs = list(layer_pairs)
        self.projectors = nn.ModuleList(projectors)  # one per pair: [..., student_width] -> [..., teacher_width]
        self.norms = nn.ModuleList(norms)  # one per pair
        self.loss_name, self.loss_fn = loss, FEATURE_LOSSES[loss]
        self.streams: dict[str, Optional[int]] = {"student": None, "teacher": None}

    def attach(self, student: PreTrainedModel, teacher: Optional[PreTrainedModel]) -> None:
        """A model that carries several residual streams (Gemma 3n's AltUp) is read at its active one, the stream its
        layers compute on (``block_output``)."""
        for role, model in (("student", student), ("teacher", teacher)):
            if model is not None:
                self.streams[role] = active_stream(model.config)

    def _block_output(self, outputs, index: int, role: str) -> torch.Tensor:
        """``outputs.hidden_states[index]``: [batch, seq, width]."""
        return block_output(outputs.hidden_states[index], self.streams[role])

    def forward(self, student_outputs, teacher_outputs, batch):
        student_rows, teacher_rows = paired_positions(batch)
        total = torch.zeros((), device=batch["input_ids"].device)
        for (student_index, teacher_index), projector, norm in zip(self.layer_pairs, self.projectors, self.norms):
            student = projector(
                self._block_output(student_outputs, student_index, "student")[student_rows].float()
            )  # [tokens, teacher_width]
            teacher = self._block_output(teacher_outputs, teacher_index, "teacher")[teacher_rows]  # [tokens, width]
            student, teacher = norm(student, teacher)  # float32
            total = total + self.loss_fn(student, teacher).sum()
        return total / len(self.layer_pairs)

    def memory_footprint(self, step: StepShape) -> int:
        # per pair, held for the backward pass: fp32 [tokens, teacher width] copies of both sides, projected,
        # normalised and differenced
        return len(self.layer_pairs) * 6 * step.tokens * step.teacher.width * 4

    def extra_repr(self) -> str:
        return f"layer_pairs={self.layer_pairs}, loss={self.loss_name}"


def _merge_heads(probs: torch.Tensor, heads: int) -> torch.Tensor:
    """Average contiguous groups of heads down to ``heads``: ``[batch, H, q, k]`` -> ``[batch, heads, q, k]``.
    A mean of distributions is a distribution."""
    return probs.unflatten(1, (heads, probs.shape[1] // heads)).float().mean(2)


def _row_kl(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_t || p_s)`` over the last axis, from probabilities, float32. Keys with ``p_t = 0`` (masked, or in
    the future of a causal row) contribute 0 (to float noise: their log is raised to that of the tiniest float)."""
    tiny = torch.finfo(torch.float32).tiny
    return kl_divergence(teacher_probs.float().clamp_min(tiny).log(), student_probs.float().clamp_min(tiny).log())


def _map_bytes(step: StepShape, heads: int) -> int:
    """Bytes of one fp32 ``[batch, heads, seq, seq]`` map of ``step``."""
    return step.batch_size * heads * step.seq_length**2 * 4


class AttentionsComponent(LayerPairsComponent):
    """``mean over pairs, heads of KL(A_t[j] || A_s[i])`` per attention row (query position), the rows'
    distributions over keys; MiniLM's self-attention distribution transfer (Wang et al., 2020, "MiniLM:
    Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers").

    Heads: ``group`` averages the model with more heads in contiguous groups down to the other's count
    (one count must divide the other); ``mean`` averages all heads of both models into one distribution.
    The models must return attention probabilities, which needs eager attention (the trainer switches
    both models to it). With attention dropout in training, Hugging Face returns the post-dropout weights.
    """

    needs_attentions = True

    def __init__(self, layer_pairs: LayerPairs, student_heads: int, teacher_heads: int, heads: str = "group"):
        super().__init__()
        self.layer_pairs, self.heads_mode = list(layer_pairs), heads
        self.matched_heads = min(student_heads, teacher_heads) if heads == "group" else 1
        # index i's entry in each model's ``attentions``: i - 1 until attach() finds which blocks attend
        self.positions = {role: {pair[side]: pair[side] - 1 for pair in self.layer_pairs}
                          for side, role in enumerate(("student", "teacher"))}

    def attach(self, student: PreTrainedModel, teacher: Optional[PreTrainedModel]) -> None:
        """Where only some blocks attend (a hybrid model: ``attentions`` holds one entry per attending block), index
        i is block i's entry; a pair naming a block that returns no attention probabilities is refused."""
        for role, model in (("student", student), ("teacher", teacher)):
            if model is None:
                continue
            attending = [layer + 1 for layer in attending_layers(model)]
            for index in self.positions[role]:
                if index not in attending:
                    raise DistilyConfigError(
                        f"attentions_layer_map pairs {role} block {index} ({type(model).__name__}), which returns no "
                        f"attention probabilities: only its blocks {attending} attend; expected pairs of attending "
                        "blocks (attentions_layer_map: pairs or indices)"
                    )
                self.positions[role][index] = attending.index(index)

    def forward(self, student_outputs, teacher_outputs, batch):
        mask = loss_positions(batch)  # [batch, seq]: the query rows that count
        for role, outputs in (("student", student_outputs), ("teacher", teacher_outputs)):
            if not outputs.attentions:
                raise DistilyConfigError(
                    f"the {role} returned no attention probabilities; attentions_weight > 0 expects models that "
                    "support eager attention"
                )
        total = torch.zeros((), device=mask.device)
        for student_index, teacher_index in self.layer_pairs:
            student_attention = student_outputs.attentions[self.positions["student"][student_index]]
            teacher_attention = teacher_outputs.attentions[self.positions["teacher"][teacher_index]]
            student_probs = _merge_heads(student_attention, self.matched_heads)  # [batch, heads, seq, seq]
            teacher_probs = _merge_heads(teacher_attention, self.matched_heads)
            student_rows = student_probs.transpose(1, 2)[mask]  # [tokens, heads, keys]
            teacher_rows = teacher_probs.transpose(1, 2)[mask]  # [tokens, heads, keys]
            total = total + _row_kl(teacher_rows, student_rows).mean(-1).sum()
        return total / len(self.layer_pairs)

    def memory_footprint(self, step: StepShape) -> int:
        # in fp32 [batch, matched heads, seq, seq] maps (measured at the allocator): per pair 3.25 held for the
        # backward pass (the student's rows and their clamp, the teacher's probabilities, the KL's mask); while the
        # last pair's KL runs, 7 more: both models' merged maps and rows, their logs, the difference and product.
        # Or, if larger, a half-precision teacher's [batch, heads, seq, seq] maps widened to fp32 as their heads merge
        # (counted whatever the teacher's dtype). The models' own attention outputs are counted with the models.
        widened = step.teacher.heads // self.matched_heads + 1
        return self.memory_held(step) + max(7, widened) * _map_bytes(step, self.matched_heads)

    def memory_held(self, step: StepShape) -> int:
        return 13 * len(self.layer_pairs) * _map_bytes(step, self.matched_heads) // 4

    def extra_repr(self) -> str:
        return f"layer_pairs={self.layer_pairs}, heads={self.heads_mode}, matched_heads={self.matched_heads}"


def relation_mask(attention_mask: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Which key each query row may relate to: earlier or same positions that are not padding and, in a block of
    packed documents (``position_ids`` restarting at 0 at each one, as the models are told to keep them apart), of
    the same document; and always itself (so no row is empty): ``[batch, seq]`` -> ``[batch, 1, seq, seq]`` bool."""
    mask = attention_mask.bool()  # [batch, seq]
    seq = mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=mask.device).tril()  # [query, key]
    itself = torch.eye(seq, dtype=torch.bool, device=mask.device)  # [query, key]
    allowed = causal & mask[:, None, None, :]  # [batch, 1, query, key]
    if position_ids is not None:
        document = (position_ids == 0).cumsum(-1)  # [batch, seq]: which document each position is in
        allowed = allowed & (document[:, None, :, None] == document[:, None, None, :])
    return allowed | itself


def relation_logprobs(vectors: torch.Tensor, relation_heads: int, allowed: torch.Tensor) -> torch.Tensor:
    """``log softmax(V_r V_r^T / sqrt(d_r))`` over allowed keys for each relation head r, where ``V_r`` is
    the r-th of ``relation_heads`` equal slices of the width: ``[batch, seq, width]`` ->
    ``[batch, relation_heads, seq, seq]`` float32, under autocast too (which would run the product in bf16/fp16).
    Disallowed keys get probability 0."""
    head_vectors = vectors.float().unflatten(-1, (relation_heads, -1)).transpose(1, 2)  # [batch, R, seq, d_r]
    with torch.autocast(vectors.device.type, enabled=False):
        scores = head_vectors @ head_vectors.transpose(-1, -2) / math.sqrt(head_vectors.shape[-1])  # [b, R, seq, seq]
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return scores.log_softmax(-1)


class AttentionRelationsComponent(LayerPairsComponent):
    """Self-attention relation distillation (Wang et al., 2021, "MiniLMv2: Multi-Head Self-Attention
    Relation Distillation for Compressing Pretrained Transformers"): for each kind in q-q, k-k, v-v,

        R = softmax(V_r V_r^T / sqrt(d_r)),  loss = mean over pairs, kinds, relation heads of KL(R_t || R_s)

    per query row. The q/k/v of both models are split into the same number of relation heads, so the
    student may have other widths and head counts than the teacher. They are recorded by forward hooks on
    the projections (``qkv.py``): no model needs eager attention. Rows are causal (a position relates to
    itself and earlier positions of its document), like the attention of the causal LMs distilled here;
    padding keys are left out and padding rows are not counted.
    """

    reads_teacher_internals = True

    def __init__(self, layer_pairs: LayerPairs, relation_heads: int, kinds: list[str]):
        super().__init__()
        self.layer_pairs, self.relation_heads, self.kinds = list(layer_pairs), relation_heads, list(kinds)
        self._recorders: tuple[QKVRecorder, QKVRecorder] | None = None  # (student, teacher), set by attach()

    def attach(self, student: PreTrainedModel, teacher: Optional[PreTrainedModel]) -> None:
        if teacher is None:
            raise DistilyConfigError(
                "attention_relations_weight > 0 with a recorded teacher; expected a teacher model, whose q/k/v are "
                "captured during its forward pass"
            )
        if self._recorders is not None:
            for recorder in self._recorders:
                recorder.remove()
        self._recorders = (
            QKVRecorder(student, [index - 1 for index, _ in self.layer_pairs]),
            QKVRecorder(teacher, [index - 1 for _, index in self.layer_pairs]),
        )

    def forward(self, student_outputs, teacher_outputs, batch):
        if self._recorders is None:
            raise RuntimeError("attention relations read q/k/v through hooks: call attach(student, teacher) first")
        mask = loss_positions(batch)  # [batch, seq]: the query rows that count
        allowed = relation_mask(batch["attention_mask"], batch.get(POSITION_IDS))  # [batch, 1, seq, seq]
        student_recorder, teacher_recorder = self._recorders
        student_records = {index: student_recorder.take(index - 1) for index in {s for s, _ in self.layer_pairs}}
        teacher_records = {index: teacher_recorder.take(index - 1) for index in {t for _, t in self.layer_pairs}}
        total = torch.zeros((), device=mask.device)
        for student_index, teacher_index in self.layer_pairs:
            for kind in self.kinds:
                student_logp = relation_logprobs(student_records[student_index][kind], self.relation_heads, allowed)
                teacher_logp = relation_logprobs(teacher_records[teacher_index][kind], self.relation_heads, allowed)
                row_kl = kl_divergence(teacher_logp, student_logp)  # [batch, R, seq]
                total = total + row_kl.mean(1)[mask].sum()
        return total / (len(self.layer_pairs) * len(self.kinds))

    def memory_footprint(self, step: StepShape) -> int:
        # in fp32 [batch, relation heads, seq, seq] maps (measured at the allocator): per pair and kind 3 held for the
        # backward pass (the student's log-probabilities, the teacher's probabilities, the masks), and 3 more while
        # the last one's scores are scaled, masked and normalised; the student's q/k/v are kept by the hooks
        # (counted with the model)
        return self.memory_held(step) + 3 * _map_bytes(step, self.relation_heads)

    def memory_held(self, step: StepShape) -> int:
        return 3 * len(self.layer_pairs) * len(self.kinds) * _map_bytes(step, self.relation_heads)

    def extra_repr(self) -> str:
        return f"layer_pairs={self.layer_pairs}, relation_heads={self.relation_heads}, kinds={self.kinds}"


def _layer_pairs(
    args: ObjectiveArguments, component: str, teacher: ModelShape, student: ModelShape, allow_embeddings: bool
) -> LayerPairs:
    """The layer pairs of ``<component>_layer_map`` and ``<component>_layer_map_kwargs`` for these depths."""
    option = f"{component}_layer_map"
    return resolve_layer_map(
        option,
        getattr(args, option),
        getattr(args, f"{option}_kwargs"),
        student.depth,
        teacher.depth,
        allow_embeddings,
    )


def _hidden_states(args: ObjectiveArguments, teacher: ModelShape, student: ModelShape) -> HiddenStatesComponent:
    pairs = _layer_pairs(args, "hidden_states", teacher, student, allow_embeddings=True)
    registered(args.hidden_states_loss, FEATURE_LOSSES, "hidden_states_loss", "feature loss")
    projectors = [
        build_projector("hidden_states_projector", args.hidden_states_projector, student.width, teacher.width)
        for _ in pairs
    ]
    norms = [build_norm("hidden_states_norm", args.hidden_states_norm, teacher.width) for _ in pairs]
    return HiddenStatesComponent(pairs, projectors, norms, args.hidden_states_loss)


def _attentions(args: ObjectiveArguments, teacher: ModelShape, student: ModelShape) -> AttentionsComponent:
    pairs = _layer_pairs(args, "attentions", teacher, student, allow_embeddings=False)
    if args.attentions_heads == "group" and max(student.heads, teacher.heads) % min(student.heads, teacher.heads):
        raise DistilyConfigError(
            f"attentions_heads='group' needs one head count to divide the other; got {student.heads} student and "
            f"{teacher.heads} teacher heads (expected attentions_heads='mean' for these models)"
        )
    return AttentionsComponent(pairs, student.heads, teacher.heads, args.attentions_heads)


def _relation_widths(shape: ModelShape, kinds: list[str]) -> list[int]:
    return [shape.query_width if kind == "query" else shape.kv_width for kind in kinds]


def _attention_relations(
    args: ObjectiveArguments, teacher: ModelShape, student: ModelShape
) -> AttentionRelationsComponent:
    pairs = _layer_pairs(args, "attention_relations", teacher, student, allow_embeddings=False)
    kinds = args.attention_relations_kinds
    widths = _relation_widths(student, kinds) + _relation_widths(teacher, kinds)
    relation_heads = args.attention_relations_heads or math.gcd(
        student.heads, student.kv_heads, teacher.heads, teacher.kv_heads
    )
    if any(width % relation_heads for width in widths):
        raise DistilyConfigError(
            f"attention_relations_heads={relation_heads} does not divide the q/k/v widths {sorted(set(widths))} of "
            "student and teacher; expected a divisor of every one"
        )
    return AttentionRelationsComponent(pairs, relation_heads, kinds)


def build_feature_components(
    args: ObjectiveArguments, teacher_config: Optional[PretrainedConfig], student_config: Optional[PretrainedConfig]
) -> tuple[dict[str, Component], dict[str, float]]:
    """The feature components the configuration turns on (weight > 0), sized from the model configs, and
    their weights."""
    builders = {
        "hidden_states": (args.hidden_states_weight, _hidden_states),
        "attentions": (args.attentions_weight, _attentions),
        "attention_relations": (args.attention_relations_weight, _attention_relations),
    }
    wanted = {name: (weight, build) for name, (weight, build) in builders.items() if weight > 0}
    if not wanted:
        return {}, {}
    if teacher_config is None or student_config is None:
        raise ValueError(f"{', '.join(wanted)} are sized from the models: pass teacher_config and student_config")
    teacher, student = ModelShape.from_config(teacher_config), ModelShape.from_config(student_config)
    components = {name: build(args, teacher, student) for name, (_, build) in wanted.items()}
    return components, {name: weight for name, (weight, _) in wanted.items()}
