"""What a user configures about the objective: the weighted components the student is trained to match."""

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from distily.arguments import json_dict, one_of
from distily.errors import DistilyConfigError

ATTENTION_HEAD_MATCHING = ("group", "mean")
ATTENTION_RELATION_KINDS = ("query", "key", "value")
LAYER_MAP_HELP = (
    "a name in LAYER_MAPS: all, last, last_k, uniform, uniform_last, pairs or indices (see docs/objectives.md). "
    "Index i is the output of block i, 0 the embeddings."
)
LAYER_MAP_KWARGS_HELP = (
    'JSON object of layer-map parameters: \'{"k": 2}\' for last_k, \'{"pairs": [[1, 2], [2, 4]]}\' for pairs, '
    '\'{"indices": [1, 2]}\' for indices.'
)


@dataclass
class ObjectiveArguments:
    """What the student is trained to match: weighted components, each logged on its own."""

    logits_loss: str = field(
        default="forward_kl", metadata={"help": "Loss between student and teacher logits (a name in LOSSES)."}
    )
    logits_weight: float = field(default=1.0, metadata={"help": "Weight of the logit component (0 disables it)."})
    logits_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the logit loss; the loss is scaled by T^2."}
    )
    logits_loss_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": 'JSON object of extra loss parameters, e.g. \'{"beta": 0.5}\'.'}
    )
    cross_tokenizer_loss: str = field(
        default="mapped_uld",
        metadata={
            "help": "The logit loss when the student's tokenizer differs from the teacher's: mapped (logits_loss on "
            "the shared tokens and the next token by the chain rule), uld (sorted-probability L1, no shared tokens "
            "needed) or mapped_uld (both, ULD on the unshared tokens) (a name in CROSS_TOKENIZER_LOSSES)."
        },
    )
    hard_label_weight: float = field(
        default=0.0, metadata={"help": "Weight of the next-token cross-entropy on the data itself (0 disables it)."}
    )
    hidden_states_weight: float = field(
        default=0.0, metadata={"help": "Weight of hidden-state distillation (0 disables it)."}
    )
    hidden_states_layer_map: str = field(
        default="all", metadata={"help": f"Which student hidden state learns from which teacher one: {LAYER_MAP_HELP}"}
    )
    hidden_states_layer_map_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": LAYER_MAP_KWARGS_HELP}
    )
    hidden_states_projector: str = field(
        default="linear",
        metadata={
            "help": "Maps the student's width to the teacher's, trained with the student and never exported: "
            "identity, linear, orthogonal or mlp (a name in PROJECTORS); one per layer pair."
        },
    )
    hidden_states_norm: str = field(
        default="none",
        metadata={
            "help": "Normalisation before the loss: none, layernorm (both sides), teacher_only, or affine (learned "
            "gain and bias on the student side) (a name in NORMS)."
        },
    )
    hidden_states_loss: str = field(
        default="mse", metadata={"help": "Hidden-state loss per token: mse or cosine (a name in FEATURE_LOSSES)."}
    )
    attentions_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of attention-probability distillation, KL(teacher || student) per attention row (0 "
            "disables it). Needs attention probabilities, so both models then run eager attention."
        },
    )
    attentions_layer_map: str = field(
        default="all", metadata={"help": f"Which student attention learns from which teacher one: {LAYER_MAP_HELP}"}
    )
    attentions_layer_map_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": LAYER_MAP_KWARGS_HELP}
    )
    attentions_heads: str = field(
        default="group",
        metadata={
            "help": "How heads meet: group (the model with more heads averaged in contiguous groups down to the "
            "other's count; one count must divide the other) or mean (all heads of each model averaged)."
        },
    )
    attention_relations_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of MiniLMv2 attention-relation distillation (q-q, k-k, v-v) (0 disables it). q/k/v are "
            "captured by hooks, so the models keep their attention implementation."
        },
    )
    attention_relations_layer_map: str = field(
        default="last", metadata={"help": f"Which student block learns from which teacher block: {LAYER_MAP_HELP}"}
    )
    attention_relations_layer_map_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": LAYER_MAP_KWARGS_HELP}
    )
    attention_relations_heads: Optional[int] = field(
        default=None,
        metadata={
            "help": "Relation heads each q/k/v width is split into, the same for both models. Default: the greatest "
            "common divisor of both models' head and KV-head counts."
        },
    )
    attention_relations_kinds: list[str] = field(
        default_factory=lambda: list(ATTENTION_RELATION_KINDS),
        metadata={"help": "Relations distilled: any of query, key, value (for q-q, k-k, v-v)."},
    )

    def __post_init__(self):
        self.logits_loss_kwargs = json_dict(self.logits_loss_kwargs, "logits_loss_kwargs")
        for name in ("hidden_states", "attentions", "attention_relations"):
            key = f"{name}_layer_map_kwargs"
            setattr(self, key, json_dict(getattr(self, key), key))
        if self.logits_temperature <= 0:
            raise DistilyConfigError(f"logits_temperature={self.logits_temperature} must be > 0")
        if not math.isfinite(self.logits_temperature * self.logits_temperature):  # once an OverflowError in the loss
            raise DistilyConfigError(
                f"logits_temperature={self.logits_temperature} is too large: the logit loss is scaled by its square, "
                "which is not a finite number; expected a smaller temperature"
            )
        weights = ("logits_weight", "hard_label_weight", "hidden_states_weight", "attentions_weight",
                   "attention_relations_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if all(getattr(self, name) == 0 for name in weights):
            raise DistilyConfigError(f"{', '.join(weights)} are all 0; expected a component to train")
        one_of(self.attentions_heads, ATTENTION_HEAD_MATCHING, "attentions_heads")
        if self.attention_relations_heads is not None and self.attention_relations_heads < 1:
            raise DistilyConfigError(
                f"attention_relations_heads={self.attention_relations_heads} must be a positive integer"
            )
        kinds = self.attention_relations_kinds
        if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(ATTENTION_RELATION_KINDS):
            raise DistilyConfigError(
                f"attention_relations_kinds={kinds!r} is not supported; expected distinct values among "
                f"{', '.join(ATTENTION_RELATION_KINDS)}"
            )
