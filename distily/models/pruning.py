"""Width-pruned initialisation (``student_init: pruned``): a student narrower than its teacher starts from the chosen
teacher layers with the teacher's most important MLP neurons, attention heads and hidden channels kept, ranked by
the teacher's own activations on calibration rows, as Minitron does (Muralidharan et al., 2024, "Compact Language
Models via Pruning and Knowledge Distillation", arXiv 2407.14679; Sreenivas et al., 2024, arXiv 2408.11796).

Importance of each unit, from one forward of the teacher over the calibration rows:

- an MLP neuron (intermediate channel): its activation entering ``down_proj``;
- an attention head: the L2 norm over ``head_dim`` of its output, its slice of ``o_proj``'s input;
- a hidden (embedding) channel: the output of every norm over the hidden width in the kept layers
  (``*_layernorm``) and of the final norm, summed over those norms.

Each is aggregated over tokens as Minitron found best: the L2 norm over a row's real tokens (padding excluded), then
the mean over rows. With grouped-query attention whole KV groups are kept (a group's importance is the sum of its
query heads'), and inside each kept group its most important query heads, so each student group holds
``num_attention_heads / num_key_value_heads`` query heads; ``head_dim`` is kept. Kept units stay in the teacher's
order, so a student of the teacher's width is the teacher-initialised student exactly. A fused projection (Phi-3's
``qkv_proj``, ``gate_up_proj``) is cut part by part, each part as the weight it fuses (``LAYER_AXES``).
"""

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import PretrainedConfig, PreTrainedModel

from distily.data.batches import collate
from distily.data.framing import model_inputs
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers, decoder_of
from distily.models.arguments import ModelArguments

logger = logging.getLogger(__name__)

# architectures with Llama's module layout: q/k/v/o_proj, gate/up/down_proj and RMSNorm weights over the hidden width
# (Phi-3's fuses q/k/v_proj into qkv_proj and gate/up_proj into gate_up_proj)
PRUNABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
CHANNELS, NEURONS, HEADS, GROUPS = "channels", "neurons", "heads", "groups"
# what each dimension of a decoder layer's weight indexes (its rows first), by the name of the module holding it: one
# kind of unit, or a tuple of kinds where the dimension holds each kind's rows in turn (a fused projection's);
# every other module whose name ends in "layernorm" is a norm over the hidden channels
LAYER_AXES = {
    "q_proj": (HEADS, CHANNELS), "k_proj": (GROUPS, CHANNELS), "v_proj": (GROUPS, CHANNELS),
    "o_proj": (CHANNELS, HEADS),
    "gate_proj": (NEURONS, CHANNELS), "up_proj": (NEURONS, CHANNELS), "down_proj": (CHANNELS, NEURONS),
    "q_norm": (None,), "k_norm": (None,),  # Qwen3's and Gemma 3's norms over head_dim: kept whole
    # Phi-3's: the query heads' rows, the KV groups' keys', their values'; the gate's rows, the up projection's
    "qkv_proj": ((HEADS, GROUPS, GROUPS), CHANNELS), "gate_up_proj": ((NEURONS, NEURONS), CHANNELS),
}
# the sizes a pruned student may make smaller, as its config names them
PRUNED_SIZES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
BATCH_SIZE = 8


@dataclass(frozen=True)
class Calibration:
    """Where a pruned student's importance scores come from: ``rows(student)`` gives the training rows in the
    teacher's tokens (called once the student exists: the data depend on its shape), of which the first ``count``
    run through the teacher on ``device``."""

    rows: Callable[[PreTrainedModel], torch.utils.data.Dataset]
    count: int
    device: torch.device | str = "cpu"


@dataclass(frozen=True)
class Importance:
    """Importance scores: per teacher layer (by index) of its neurons ``[intermediate]`` and heads ``[heads]``, and
    of the hidden channels ``[hidden]``."""

    neurons: dict[int, torch.Tensor]
    heads: dict[int, torch.Tensor]
    channels: torch.Tensor


def check_prunable(teacher: PretrainedConfig, student: PretrainedConfig) -> None:
    """A student pruned from ``teacher``: of an architecture with Llama's layout (or Phi-3's), no size larger than the
    teacher's, the teacher's head_dim, and no more KV groups or query heads per group than the teacher has."""
    if teacher.model_type not in PRUNABLE_MODEL_TYPES:
        raise DistilyConfigError(
            f"student_init=pruned does not support a {teacher.model_type} teacher; expected one of "
            f"{', '.join(PRUNABLE_MODEL_TYPES)} (or student_init=teacher / random)"
        )
    if student.model_type != teacher.model_type:
        raise DistilyConfigError(
            f"student_init=pruned prunes the teacher's own architecture; the student is a {student.model_type}, "
            f"expected a {teacher.model_type}"
        )
    for key in PRUNED_SIZES:
        if getattr(student, key) > getattr(teacher, key):
            raise DistilyConfigError(
                f"student_init=pruned cannot widen the teacher: student {key}={getattr(student, key)} is larger than "
                f"the teacher's {getattr(teacher, key)}; expected at most {getattr(teacher, key)}"
            )
    if _head_dim(student) != _head_dim(teacher):
        raise DistilyConfigError(
            f"student_init=pruned keeps the teacher's head_dim={_head_dim(teacher)}; the student's is "
            f"{_head_dim(student)}; expected num_attention_heads = hidden_size / {_head_dim(teacher)} (or head_dim "
            f"{_head_dim(teacher)})"
        )
    teacher_group, student_group = (config.num_attention_heads // config.num_key_value_heads
                                    for config in (teacher, student))
    if student_group > teacher_group:
        raise DistilyConfigError(
            f"student_init=pruned keeps whole KV groups: the student's {student_group} query heads per KV head exceed "
            f"the teacher's {teacher_group}; expected num_attention_heads <= {teacher_group} x num_key_value_heads"
        )


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _row_norms(activation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``activation`` [batch, seq, units] aggregated per row: the L2 norm over the row's real tokens ([batch, units],
    float32)."""
    real = activation.float() * mask[..., None]
    return real.square().sum(dim=1).sqrt()


class _Recorder:
    """Sums of the per-row aggregates of the hooked activations, by key, over the calibration batches."""

    def __init__(self):
        self.sums: dict[tuple, torch.Tensor] = {}
        self.mask = None  # [batch, seq] of the batch running: 1 on real tokens
        self.rows = 0

    def add(self, key: tuple, activation: torch.Tensor) -> None:
        rows = _row_norms(activation, self.mask).sum(dim=0).double().cpu()
        self.sums[key] = self.sums.get(key, 0) + rows

    def mean(self, key: tuple) -> torch.Tensor:
        return self.sums[key] / self.rows


def _hooks(teacher: PreTrainedModel, layers: list[int], recorder: _Recorder) -> list:
    """Forward hooks recording, in the teacher's ``layers`` and its final norm, what ``Importance`` ranks by."""
    head_dim = _head_dim(teacher.config.get_text_config())
    handles = []

    def record_input(key, reshape=None):
        def hook(module, args):
            recorder.add(key, args[0] if reshape is None else reshape(args[0]))
        return hook

    def record_output(key):
        return lambda module, args, output: recorder.add(key, output)

    def head_norms(activation):  # [batch, seq, heads * head_dim] -> [batch, seq, heads]
        return activation.float().unflatten(-1, (-1, head_dim)).norm(dim=-1)

    blocks = decoder_layers(teacher)
    for index in layers:
        block = blocks[index]
        handles.append(block.mlp.down_proj.register_forward_pre_hook(record_input((NEURONS, index))))
        handles.append(block.self_attn.o_proj.register_forward_pre_hook(record_input((HEADS, index), head_norms)))
        for name, module in block.named_children():
            if name.endswith("layernorm"):
                handles.append(module.register_forward_hook(record_output((CHANNELS, index, name))))
    handles.append(decoder_of(teacher).norm.register_forward_hook(record_output((CHANNELS, "final"))))
    return handles


@torch.no_grad()
def activation_importance(teacher: PreTrainedModel, layers: list[int], batches: Iterable[dict],
                          device: torch.device | str) -> Importance:
    """The ``Importance`` of the units of the teacher's ``layers`` (and of the hidden channels), from its decoder's
    forward over ``batches`` (built by ``collate``) on ``device``; the teacher goes back where it was."""
    recorder = _Recorder()
    chosen = sorted(set(layers))
    handles = _hooks(teacher, chosen, recorder)
    home = next(teacher.parameters()).device
    decoder = decoder_of(teacher.to(device))
    started = time.perf_counter()
    try:
        for batch in tqdm(batches, desc="Pruning: teacher activations", leave=False):
            recorder.mask = batch["attention_mask"].to(device)
            recorder.rows += len(batch["attention_mask"])
            decoder(**{**model_inputs(batch, device), "use_cache": False})
    finally:
        for handle in handles:
            handle.remove()
        teacher.to(home)
    logger.info(f"Pruning: teacher activations on {recorder.rows} calibration rows in "
                f"{time.perf_counter() - started:.1f}s")
    return Importance(
        neurons={index: recorder.mean((NEURONS, index)) for index in chosen},
        heads={index: recorder.mean((HEADS, index)) for index in chosen},
        channels=sum(recorder.mean(key) for key in recorder.sums if key[0] == CHANNELS),
    )


def top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest ``scores`` (the first of equal ones), in ascending order."""
    return torch.sort(torch.sort(scores, descending=True, stable=True).indices[:count]).values


def kept_heads(scores: torch.Tensor, teacher_groups: int, groups: int,
               per_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query heads, KV groups) kept of a layer whose heads have ``scores`` [heads]: the ``groups`` KV groups of the
    most important heads in all (of ``teacher_groups``), and in each the ``per_group`` most important."""
    by_group = scores.view(teacher_groups, -1)  # [kv heads, heads per group]
    kept_groups = top(by_group.sum(dim=1), groups)
    heads = [group * by_group.shape[1] + top(by_group[group], per_group) for group in kept_groups.tolist()]
    return torch.cat(heads), kept_groups


def _mask(kept: torch.Tensor, count: int) -> torch.Tensor:
    """Which of ``count`` units are ``kept`` (indices): a bool [count]."""
    return torch.zeros(count, dtype=torch.bool).index_fill_(0, kept, True)


def kept_channels(importance: Importance, teacher: PretrainedConfig, student: PretrainedConfig) -> torch.Tensor:
    """Which of the teacher's hidden channels the student keeps (a bool [teacher hidden_size])."""
    return _mask(top(importance.channels, student.hidden_size), teacher.hidden_size)


def kept_units(importance: Importance, teacher: PretrainedConfig, student: PretrainedConfig,
                 layer: int) -> dict[str, torch.Tensor]:
    """What the student keeps of teacher layer ``layer``, by what a weight's dimension indexes (``LAYER_AXES``): which
    hidden channels, neurons, and rows of the query heads and of the KV groups (bool masks over the teacher's)."""
    heads, groups = kept_heads(importance.heads[layer], teacher.num_key_value_heads, student.num_key_value_heads,
                               student.num_attention_heads // student.num_key_value_heads)
    head_dim = _head_dim(teacher)
    return {
        CHANNELS: kept_channels(importance, teacher, student),
        NEURONS: _mask(top(importance.neurons[layer], student.intermediate_size), teacher.intermediate_size),
        HEADS: _mask(heads, teacher.num_attention_heads).repeat_interleave(head_dim),
        GROUPS: _mask(groups, teacher.num_key_value_heads).repeat_interleave(head_dim),
    }


def _axes(name: str) -> tuple:
    """What each dimension of a decoder layer's parameter ``name`` (``self_attn.q_proj.weight``) indexes."""
    module = name.rsplit(".", 2)[-2]
    if module in LAYER_AXES:
        return LAYER_AXES[module]
    if module.endswith("layernorm"):
        return (CHANNELS,)
    raise DistilyConfigError(f"student_init=pruned does not know how to prune {name}; expected Llama's or Phi-3's "
                             "layout")


def sliced(tensor: torch.Tensor, axes: tuple, kept: dict[str, torch.Tensor]) -> torch.Tensor:
    """``tensor`` with each dimension cut to the kept units of what ``axes`` says it indexes: of one kind, or of
    several kinds' units in turn (each kind's mask in ``kept``, joined)."""
    for dim, axis in enumerate(axes[:tensor.dim()]):
        if axis is not None:
            mask = torch.cat([kept[kind] for kind in ((axis,) if isinstance(axis, str) else axis)])
            tensor = tensor.index_select(dim, mask.nonzero().squeeze(1).to(tensor.device))
    return tensor


def prune_into(teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int], importance: Importance) -> None:
    """Write into student layer i the kept units of teacher layer ``layers[i]``, and into the other parameters
    (embeddings, final norm, LM head: their last dimension is the hidden width) the kept hidden channels; a tensor
    the student ties to another (an LM head tied to the embeddings) is written once."""
    teacher_config, student_config = teacher.config.get_text_config(), student.config.get_text_config()
    teacher_params = dict(teacher.state_dict())
    with torch.no_grad():
        for block, index in zip(decoder_layers(student), layers):
            kept = kept_units(importance, teacher_config, student_config, index)
            source = decoder_layers(teacher)[index].state_dict()
            for name, param in block.state_dict().items():
                param.copy_(sliced(source[name], _axes(name), kept))
        channels = {CHANNELS: kept_channels(importance, teacher_config, student_config)}
        written = {param.data_ptr() for param in decoder_layers(student).state_dict().values()}
        for name, param in student.state_dict().items():
            if param.data_ptr() in written:
                continue
            source = teacher_params[name]
            param.copy_(sliced(source, (None,) * (source.dim() - 1) + (CHANNELS,), channels))
            written.add(param.data_ptr())
        _keep_embedding_scale(teacher_config, student)


def _keep_embedding_scale(teacher: PretrainedConfig, student: PreTrainedModel) -> None:
    """Gemma multiplies its embeddings by sqrt(hidden_size) (``embed_scale``), the student's own: its table is scaled
    by sqrt(teacher width / student width) so that its layers read the teacher's embeddings on the kept channels,
    and where the LM head is that table (tied), the final norm's output by the inverse (Gemma's norm multiplies by
    1 + weight), so that the logits stay the teacher's."""
    embedding, width = student.get_input_embeddings(), student.config.get_text_config().hidden_size
    if getattr(embedding, "embed_scale", None) is None or width == teacher.hidden_size:
        return
    scale = (teacher.hidden_size / width) ** 0.5
    embedding.weight.mul_(scale)
    if student.get_output_embeddings().weight is embedding.weight:
        norm = decoder_of(student).norm.weight
        norm.copy_((1 + norm.float()) / scale - 1)


def pruned_init(teacher: PreTrainedModel, student: PreTrainedModel, layers: list[int],
                calibration: Calibration) -> None:
    """Initialise the ``student`` (checked by ``check_prunable``) from ``teacher``'s ``layers`` pruned by activation
    importance on the calibration rows."""
    rows = calibration.rows(student)
    sample = Subset(rows, range(min(calibration.count, len(rows))))
    logger.info(f"Pruning: ranking the teacher's neurons, heads and channels on {len(sample)} calibration rows")
    batches = DataLoader(sample, batch_size=BATCH_SIZE, collate_fn=collate)
    prune_into(teacher, student, layers, activation_importance(teacher, layers, batches, calibration.device))


def pruning_summary(args: ModelArguments, teacher: PretrainedConfig, student: PretrainedConfig,
                    training_rows: int) -> dict:
    """metrics.json's student ``pruning`` of a pruned student: the calibration rows the teacher ran on, and the sizes
    kept of the teacher's; empty for any other."""
    if args.student_init != "pruned":
        return {}
    teacher, student = teacher.get_text_config(), student.get_text_config()
    return {"pruning": {
        "calibration_rows": min(args.pruning_calibration_samples, training_rows),
        "kept": {key: getattr(student, key) for key in PRUNED_SIZES},
        "teacher": {key: getattr(teacher, key) for key in PRUNED_SIZES},
    }}
