"""Build the student: from a checkpoint, from a config, or from the teacher's config with overrides,
initialised randomly or from chosen teacher layers; then named modules copied and frozen."""

import copy
import logging
import os
from dataclasses import asdict
from typing import Callable, Optional

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from distily.data.vocabulary import VocabularyMap
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers, named_decoder_layers
from distily.models.arguments import FROM_TEACHER_LAYERS, ModelArguments
from distily.models.bitnet import (
    BITNET_CONFIG_KEY,
    BitNetOptions,
    convert_to_bitnet,
    is_bitnet,
    load_bitnet_student,
    warn_unless_gguf_packable,
)
from distily.models.experts import EXPERT_COUNT_KEYS
from distily.models.hybrid_slots import hybrid_slots, slotted_state
from distily.models.kv_sharing import check_kv_producers, with_kv_producers
from distily.models.layer_kinds import DERIVED_LAYER_KEYS, layer_kind_values
from distily.models.layer_settings import check_kept, layer_config, per_layer_values
from distily.models.packed_layers import PER_LAYER_TOKEN_TABLE, layer_slices
from distily.models.pruning import Calibration, check_prunable, pruned_init
from distily.models.teacher import from_pretrained

logger = logging.getLogger(__name__)

DEPTH = "num_hidden_layers"
WIDTH = "hidden_size"
HEADS = "num_attention_heads"
# what a config says of its own model only, how it was quantized (a 4-bit teacher) or made ternary: a model built
# from it is neither
SOURCE_ONLY_KEYS = ("quantization_config", BITNET_CONFIG_KEY)


def _canonical(config: PretrainedConfig, key: str) -> str:
    """The name a config stores ``key`` under (GPT-2 keeps num_hidden_layers as n_layer)."""
    return config.attribute_map.get(key, key)


# config keys that are sizes or counts (hidden_size, num_key_value_heads, head_dim, num_experts, ...): positive integers
SIZE_SUFFIXES = ("_size", "_heads", "_layers", "_dim", "num_experts", "num_experts_per_tok", "n_embd", "n_head",
                 "n_layer", "n_inner")


def config_with_overrides(config: PretrainedConfig, overrides: dict,
                          layer_sources: Optional[list[int]] = None) -> PretrainedConfig:
    """A new config of the same class with ``overrides`` applied through the class's own constructor, so values
    derived from the changed ones are derived again: a head_dim of width / heads from the new ones. When the depth
    changes or the copied teacher layers are others than the first ones in order, every per-layer list of
    ``config``'s depth (``layer_types``: which layers attend in a sliding window, which are linear or convolutional;
    ``no_rope_layers``, ``mlp_layer_types``, Gemma 3n's ``intermediate_size``, ...)
    and the per-layer overrides of a heterogeneous config (``per_layer_config``: Gemma 4's full-attention head_dim)
    become the entries of the layers each student layer stands for: ``layer_sources`` (the teacher layers copied into
    it), else the default ones (``default_teacher_layers``); a config class that changes them is refused. Derived
    from the new depth instead, the copied layers would run with another attention, position scheme or block than
    they learned with (a Gemma 3 student of 4 layers would have no global attention layer). Settings that say which
    kind each layer is without a per-layer list (``LAYER_KIND_SETTINGS``: dense or MoE, attention or Mamba, sharing
    keys and values or not, by layer indices or scalars) are written again the same way; indices a config derives
    from its per-layer list (``DERIVED_LAYER_KEYS``) are derived again from the student's. A layer reusing keys and
    values must have a layer to take them from (``check_kv_producers``). How the source model was quantized or
    made ternary (``SOURCE_ONLY_KEYS``) is not copied: the new model is dense and full precision until converted."""
    values = {key: value for key, value in config.to_dict().items() if key not in SOURCE_ONLY_KEYS}
    changes = {_canonical(config, key): value for key, value in overrides.items()}
    for key, original in zip(overrides, changes):
        if original not in values and not hasattr(config, original):
            raise DistilyConfigError(
                f"student_config_overrides key {key!r} is not a field of {type(config).__name__}; "
                "expected one of its config keys"
            )
        sized = original.endswith(SIZE_SUFFIXES) and type(values.get(original)) is int and values[original] >= 1
        if sized and not (type(changes[original]) is int and changes[original] >= 1):
            raise DistilyConfigError(
                f"student_config_overrides {key}={changes[original]!r} must be a positive integer (a size or count)"
            )
    width, heads, depth = (_canonical(config, k) for k in (WIDTH, HEADS, DEPTH))
    if (width in changes or heads in changes) and "head_dim" not in changes:
        new_width, new_heads = changes.get(width, values[width]), changes.get(heads, values[heads])
        # a head_dim of its own (Qwen3-4B: 128 on a width of 2560 with 32 heads) is kept: the heads need not divide
        derived = values.get("head_dim") in (None, values[width] // values[heads])
        if derived and (not isinstance(new_heads, int) or new_heads < 1 or new_width % new_heads):
            raise DistilyConfigError(
                f"student num_attention_heads={new_heads} does not divide hidden_size={new_width}; "
                "expected a head count that divides the hidden size"
            )
        if derived and values.get("head_dim") is not None:  # derived from them: derive it again (Qwen3
            values["head_dim"] = new_width // new_heads  # and Gemma would fall back to a fixed default, not this)
    sources, per_layer = None, {}
    reordered = layer_sources is not None and list(layer_sources) != list(range(len(layer_sources)))
    if depth in changes or reordered:  # teacher layers copied in another order, at the teacher's depth too
        config_depth = getattr(config, depth)  # Nemotron-H derives it from layers_block_type: not in values
        sources = layer_sources or default_teacher_layers(config, changes[depth])  # a count: checked above
        kind_values = layer_kind_values(config, values, sources, changes)
        for key in DERIVED_LAYER_KEYS:
            values.pop(key, None)
        per_layer = {key: value for key, value in per_layer_values(values, config_depth, sources).items()
                     if key not in changes}
        values.update(copy.deepcopy(per_layer))  # a config class may change them in place (Gemma 4's last type)
        values.update(kind_values)
    values.update(changes)
    try:
        student_config = type(config).from_dict(values)
    except StrictDataclassError as err:  # transformers' own checks: a RoPE factor per rotary frequency, ...
        raise DistilyConfigError(
            f"the student's {type(config).__name__} is not valid: {' '.join(str(err).split())}; expected "
            "student_config_overrides that fit together (rope_parameters for a student of another head_dim)"
        )
    check_attention_shape(student_config)
    check_shared_attention_adapters(student_config)
    if sources is not None:
        check_kept(student_config, per_layer, sources)
        check_kv_producers(config, student_config, sources, copied=layer_sources is not None)
    return student_config


def check_layer_count(depth) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise DistilyConfigError(f"student num_hidden_layers={depth!r} is not a layer count; expected an integer >= 1")
    return depth


def check_attention_shape(config: PretrainedConfig) -> None:
    """Each layer's KV heads divide its heads (a heterogeneous config's layers have their own)."""
    for layer in range(text_depth(config)):
        settings = layer_config(config, layer)
        heads, kv_heads = getattr(settings, HEADS, None), getattr(settings, "num_key_value_heads", None)
        if heads and kv_heads and heads % kv_heads:
            raise DistilyConfigError(
                f"student num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}; "
                "expected a KV head count that divides the head count"
            )


def check_shared_attention_adapters(config: PretrainedConfig) -> None:
    """Zamba2's shared attention adapters (``use_shared_attention_adapter``) give keys and values for every head,
    which transformers adds to those of the KV heads: with fewer KV heads than heads, every forward through a
    hybrid layer (``hybrid_layer_ids``, those holding the shared attention) fails."""
    adapted = getattr(config, "use_shared_attention_adapter", False) and getattr(config, "hybrid_layer_ids", None)
    if not adapted:  # read no head counts of other configs (a heterogeneous one refuses a global read)
        return
    heads, kv_heads = getattr(config, HEADS, None), getattr(config, "num_key_value_heads", None)
    if kv_heads != heads:
        raise DistilyConfigError(
            f"student num_key_value_heads={kv_heads} with use_shared_attention_adapter: transformers' "
            f"{config.model_type} adds the adapters' keys and values of all {heads} heads to those of the KV heads, "
            f"which fails in every forward; expected num_key_value_heads={heads} or use_shared_attention_adapter=false"
        )


def evenly_spaced_layers(teacher_depth: int, student_depth: int) -> list[int]:
    """Teacher layer for each student layer: evenly spaced, first and last included."""
    if student_depth == 1:
        return [teacher_depth - 1]
    return [round(i * (teacher_depth - 1) / (student_depth - 1)) for i in range(student_depth)]


def default_teacher_layers(teacher: PretrainedConfig, student_depth: int) -> list[int]:
    """The teacher layer each student layer stands for unless chosen: evenly spaced ones, with the layers those
    reusing keys and values take them from (Gemma 3n, Gemma 4: ``with_kv_producers``)."""
    return with_kv_producers(teacher.get_text_config(), evenly_spaced_layers(text_depth(teacher), student_depth))


def teacher_layer_sources(chosen: Optional[list[int]], teacher: PretrainedConfig, student_depth: int) -> list[int]:
    """The teacher layer copied into each student layer: ``chosen`` (``student_layers_from_teacher``), checked,
    else the default ones."""
    if chosen is None:
        return default_teacher_layers(teacher, student_depth)
    teacher_depth = text_depth(teacher)
    if len(chosen) != student_depth:
        raise DistilyConfigError(
            f"student_layers_from_teacher has {len(chosen)} entries; expected one per student layer ({student_depth})"
        )
    for index in chosen:
        if not 0 <= index < teacher_depth:
            raise DistilyConfigError(
                f"student_layers_from_teacher index {index} is out of range; expected 0..{teacher_depth - 1}"
            )
    return list(chosen)


def copy_teacher_layers(teacher: PreTrainedModel, student: PreTrainedModel, teacher_layers: list[int],
                        token_map: Optional[VocabularyMap] = None) -> None:
    """Copy ``teacher_layers[i]`` into student layer i (an adapter slot per hybrid layer from the teacher hybrid
    layer's: ``hybrid_slots``), and every other parameter (embeddings, final norm, LM head) whose name and shape
    match, a table packing a slice per layer with the slices of those layers;
    a tensor the student shares between two names (an LM head tied to the embeddings) is copied once, from the first
    (the embeddings), as transformers ties the head to them. A student with a tokenizer of its own (``token_map``)
    gets the rows of the tokens both tokenizers hold, by token (``copy_shared_token_rows``): of the embedding, the LM
    head and Gemma 3n's and Gemma 4's per-layer token table."""
    teacher_config = teacher.config.get_text_config()
    check_same_heads(teacher_config, student.config.get_text_config(), list(enumerate(teacher_layers)))
    check_same_experts(teacher_config, student.config.get_text_config())
    teacher_blocks, student_blocks = decoder_layers(teacher), decoder_layers(student)
    slots = hybrid_slots(teacher_config, teacher_layers)
    with torch.no_grad():
        for student_block, index in zip(student_blocks, teacher_layers):
            source = teacher_blocks[index].state_dict()
            if slots is not None:
                source = slotted_state(source, list(student_block.state_dict()), slots)
            _copy_module(source, student_block, f"teacher layer {index}")
        prefix = named_decoder_layers(student)[0] + "."
        teacher_params = dict(teacher.state_dict())
        token_rows = _token_row_pairs(teacher, student, teacher_layers) if token_map is not None else []
        copied = {rows.data_ptr() for rows, _ in token_rows}  # by id, another tokenizer's rows would be other tokens'
        for name, param in student.state_dict().items():
            source = teacher_params.get(name)
            if name.startswith(prefix) or source is None or param.data_ptr() in copied:
                continue
            source = layer_slices(name, source, teacher_config, teacher_layers)
            if source.shape == param.shape:
                param.copy_(source)
                copied.add(param.data_ptr())
    if token_rows:
        copy_shared_token_rows(token_rows, token_map)


TokenRows = tuple[torch.Tensor, Optional[torch.Tensor]]  # a student's tensor of a row per token, the teacher's or None


def _token_row_pairs(teacher: PreTrainedModel, student: PreTrainedModel, teacher_layers: list[int]) -> list[TokenRows]:
    """The student's tensors with a row per token, each beside the teacher's: the input embedding's, the LM head's
    weight and bias unless it is tied to the embedding, and Gemma 3n's and Gemma 4's per-layer token table
    (``PER_LAYER_TOKEN_TABLE``) beside the teacher's slices of ``teacher_layers``."""
    embeddings, head = student.get_input_embeddings(), student.get_output_embeddings()
    modules = [(embeddings, teacher.get_input_embeddings())]
    if head is not None and head.weight is not embeddings.weight:
        modules.append((head, teacher.get_output_embeddings()))
    pairs = [(getattr(target, name), getattr(source, name, None)) for target, source in modules
             for name in ("weight", "bias") if getattr(target, name, None) is not None]
    teacher_params, config = teacher.state_dict(), teacher.config.get_text_config()
    for name, table in student.state_dict().items():
        if name.endswith(f"{PER_LAYER_TOKEN_TABLE}.weight"):
            source = teacher_params.get(name)
            pairs.append((table, None if source is None else layer_slices(name, source, config, teacher_layers)))
    return pairs


def copy_shared_token_rows(token_rows: list[TokenRows], token_map: VocabularyMap) -> None:
    """Across tokenizers, the student's rows (``_token_row_pairs``) of each token the teacher's tokenizer also holds,
    from the teacher's row of that token; the others keep their initialisation. Only where a row has the teacher's
    width."""
    with torch.no_grad():
        for rows, teacher_rows in token_rows:
            if teacher_rows is None or rows.shape[1:] != teacher_rows.shape[1:]:
                continue
            keep = (token_map.student_ids < rows.shape[0]) & (token_map.teacher_ids < teacher_rows.shape[0])
            rows[token_map.student_ids[keep]] = teacher_rows[token_map.teacher_ids[keep]].to(rows.dtype)


# what to do when a part copied from the teacher does not fit the student
LAYERS_REMEDY = "use student_init=random for a reshaped student"


def _check_same_keys(teacher_config: PretrainedConfig, student_config: PretrainedConfig, keys: tuple[str, ...],
                     why: str, what: str, remedy: str) -> None:
    """Each of ``keys`` has the teacher's value in the student's config, or the copy of ``what`` is refused in one
    line saying ``why`` it needs it."""
    for key in keys:
        teacher_value, student_value = getattr(teacher_config, key, None), getattr(student_config, key, None)
        if teacher_value != student_value:
            raise DistilyConfigError(
                f"cannot copy {what} into a student of {key}={student_value} (the teacher's is {teacher_value}): "
                f"{why}; expected the teacher's {key} ({remedy})"
            )


def check_same_heads(teacher_config: PretrainedConfig, student_config: PretrainedConfig,
                     layers: list[tuple[int, int]], what: str = "teacher layers", remedy: str = LAYERS_REMEDY) -> None:
    """A copied layer needs the teacher's heads: with fewer, wider ones of the same total width its projections load
    (their shapes match) but split into other heads than they learned. ``layers`` pairs each student layer with the
    teacher layer copied into it (a heterogeneous config's layers differ: Gemma 4's full-attention head_dim)."""
    for student_layer, teacher_layer in layers:
        _check_same_keys(layer_config(teacher_config, teacher_layer), layer_config(student_config, student_layer),
                         (HEADS, "num_key_value_heads", "head_dim"),
                         "its heads would split the teacher's projections otherwise", what, remedy)


def check_same_experts(teacher_config: PretrainedConfig, student_config: PretrainedConfig) -> None:
    """A teacher layer copied into a student layer brings all of its routed experts and its router's row for each:
    a student with other counts of experts is refused in one line, naming the key."""
    _check_same_keys(teacher_config, student_config, EXPERT_COUNT_KEYS,
                     "a copied layer brings every one of its experts and its router's row for each", "teacher layers",
                     LAYERS_REMEDY)


def _copy_module(source: torch.nn.Module | dict[str, torch.Tensor], target: torch.nn.Module, what: str,
                 remedy: str = LAYERS_REMEDY) -> None:
    """Copy every tensor of ``source`` (a module or its state) into ``target``: both must hold the same names with the
    same shapes."""
    source_state = source if isinstance(source, dict) else source.state_dict()
    target_state = target.state_dict()
    for name in [*target_state, *(name for name in source_state if name not in target_state)]:
        in_student, in_teacher = (f"of shape {tuple(state[name].shape)}" if name in state else "missing"
                                  for state in (target_state, source_state))
        if in_student != in_teacher:
            raise DistilyConfigError(
                f"cannot copy {what} into the student: {name} is {in_student} in the student and {in_teacher} in the "
                f"teacher; expected matching shapes ({remedy})"
            )
    with torch.no_grad():
        for name, param in target_state.items():
            param.copy_(source_state[name])


def _submodule(model: PreTrainedModel, name: str, role: str, option: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise DistilyConfigError(f"{option}: {role} has no module named {name!r}; expected a name from named_modules()")


# the attention module's name in transformers' architectures: a copied module holding one needs the teacher's heads
ATTENTION_NAMES = frozenset({"self_attn", "attn", "attention", "self_attention"})


def _layers_holding(model: PreTrainedModel, name: str, other_depth: int) -> list[tuple[int, int]]:
    """(layer, layer) for the decoder layer module ``name`` is in, or for every layer both models have."""
    prefix = named_decoder_layers(model)[0] + "."
    if name.startswith(prefix):
        layer = int(name[len(prefix):].split(".")[0])
        return [(layer, layer)]
    return [(layer, layer) for layer in range(min(text_depth(model.config), other_depth))]


def copy_named_modules(teacher: PreTrainedModel, student: PreTrainedModel, names: list[str]) -> None:
    for name in names:
        remedy = f"or leave {name} out of copy_teacher_modules: it is copied whatever student_init says"
        source = _submodule(teacher, name, "teacher", "copy_teacher_modules")
        target = _submodule(student, name, "student", "copy_teacher_modules")
        if any(part in ATTENTION_NAMES
               for module, _ in source.named_modules(prefix=name) for part in module.split(".")):
            check_same_heads(teacher.config.get_text_config(), student.config.get_text_config(),
                             _layers_holding(student, name, text_depth(teacher.config)), f"teacher module {name}",
                             remedy)
        _copy_module(source, target, f"teacher module {name}", remedy)


def input_embeddings(model: PreTrainedModel) -> list[torch.nn.Module]:
    """Every table of a vector per input token: the input embeddings, and Gemma 3n's and Gemma 4's per-layer inputs'
    table beside them (``PER_LAYER_TOKEN_TABLE``)."""
    tables = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == PER_LAYER_TOKEN_TABLE]
    return [model.get_input_embeddings(), *tables]


# names that mean the same modules in every architecture (an LM head tied to the embeddings is one parameter)
FREEZE_ALIASES = {
    "embeddings": input_embeddings,
    "lm_head": lambda model: [model.get_output_embeddings()],
}


def freeze_named_modules(student: PreTrainedModel, names: list[str]) -> None:
    for name in names:
        if name in FREEZE_ALIASES:
            modules = FREEZE_ALIASES[name](student)
        else:
            modules = [_submodule(student, name, "student", "freeze_student_modules")]
        for module in modules:
            module.requires_grad_(False)
    if names and not any(parameter.requires_grad for parameter in student.parameters()):
        raise DistilyConfigError(  # '' names the whole model; once a RuntimeError in the first backward pass
            f"freeze_student_modules={names} freezes every parameter of the student, which would not train; expected "
            "modules that leave part of it to train"
        )


def student_config(args: ModelArguments, teacher_config: PretrainedConfig) -> PretrainedConfig:
    """The student's config (see ``student_config_and_teacher_layers``)."""
    return student_config_and_teacher_layers(args, teacher_config)[0]


def student_config_and_teacher_layers(
    args: ModelArguments, teacher_config: PretrainedConfig
) -> tuple[PretrainedConfig, Optional[list[int]]]:
    """The student's config, ``student_config_name_or_path`` or the teacher's with the overrides, and for
    student_init=teacher or pruned the teacher layer copied into each student layer; a student built from the
    teacher's config takes the per-layer settings of those layers."""
    overrides = args.student_config_overrides
    if args.student_config_name_or_path is not None:
        base = from_pretrained(
            AutoConfig, args.student_config_name_or_path, "student config", trust_remote_code=args.trust_remote_code
        )
        config = config_with_overrides(base, overrides)
        return config, _teacher_layers(args, teacher_config, text_depth(config))
    depth = next((overrides[key] for key in (DEPTH, _canonical(teacher_config, DEPTH)) if key in overrides),
                 text_depth(teacher_config))
    sources = _teacher_layers(args, teacher_config, check_layer_count(depth))
    return config_with_overrides(teacher_config, overrides, sources), sources


def _teacher_layers(args: ModelArguments, teacher: PretrainedConfig, student_depth: int) -> Optional[list[int]]:
    if args.student_init not in FROM_TEACHER_LAYERS:
        return None
    return teacher_layer_sources(args.student_layers_from_teacher, teacher, student_depth)


def layers_from_teacher(args: ModelArguments, teacher: PretrainedConfig, student: PretrainedConfig) -> dict:
    """The teacher layer each student layer stands for, as metrics.json records it: ``teacher_layers_copied``, those
    whose weights it started from (student_init=teacher or pruned), and ``teacher_layer_settings``, those whose
    per-layer settings its config took (a student built from the teacher's config: ``config_with_overrides``; at the
    teacher's depth, its own layers in order); neither for a student loaded from a checkpoint."""
    if args.student_model_name_or_path is not None:
        return {}
    depth = text_depth(student)
    copied = _teacher_layers(args, teacher, depth)
    found = {"teacher_layers_copied": copied}
    if args.student_config_name_or_path is None:
        found["teacher_layer_settings"] = copied or default_teacher_layers(teacher, depth)
    return {key: value for key, value in found.items() if value is not None}


def text_depth(config: PretrainedConfig) -> int:
    """The decoder's depth (a multimodal model's, such as Gemma 3's, is in its text config)."""
    return config.get_text_config().num_hidden_layers


def load_student(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """A saved student in float32; a BitNet student (its config says so) comes back with its ternary layers."""
    config = from_pretrained(AutoConfig, name_or_path, "student", trust_remote_code=trust_remote_code)
    if is_bitnet(config):
        return load_bitnet_student(os.path.expanduser(name_or_path), trust_remote_code=trust_remote_code).train()
    return from_pretrained(
        AutoModelForCausalLM, name_or_path, "student", dtype=torch.float32, trust_remote_code=trust_remote_code
    )


def student_from_config(config: PretrainedConfig, trust_remote_code: bool) -> PreTrainedModel:
    """A new float32 model of ``config``; one the model class itself cannot be built for (a valid config of a shape
    its code does not handle, such as a Zamba with one hybrid layer, whose shared-weight ties need two) is refused in
    one line."""
    try:
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except ValueError as err:
        reason = " ".join(str(err).split())
        raise DistilyConfigError(
            f"transformers cannot build a {config.model_type} student of this shape: "
            f"{reason if len(reason) <= 200 else reason[:200] + '...'}; expected other student_config_overrides or "
            "student_layers_from_teacher"
        ) from err


def _pruned_student(teacher: PreTrainedModel, student: PreTrainedModel, teacher_layers: list[int],
                    token_map: Callable[[], Optional[VocabularyMap]], calibration: Optional[Calibration]) -> None:
    """Initialise ``student`` from the ``teacher_layers`` pruned by activation importance (``pruned_init``)."""
    if calibration is None:
        raise ValueError("student_init=pruned needs a Calibration: the rows the teacher's activations are read on")
    if token_map() is not None:
        raise DistilyConfigError(
            "student_init=pruned ranks the teacher's embedding channels in the teacher's tokens, and this student "
            "reads another tokenizer; expected the teacher's tokenizer, or student_init=teacher / random"
        )
    pruned_init(teacher, student, teacher_layers, calibration)


def _converted_as_teacher(args: ModelArguments, teacher: PreTrainedModel,
                          copies_layers: bool) -> Optional[BitNetOptions]:
    """The options of a BitNet teacher (a BitNet run) where the student is made ternary as it was (student_as_bitnet,
    the same bitnet_input_norm and bitnet_subln); None for any other teacher or student. A student otherwise made
    that ``copies_layers`` of a run whose ternary layers hold norms (input_norm, SubLN) is refused: it has no place
    for them."""
    if not is_bitnet(teacher.config):
        return None
    options = BitNetOptions.from_config(teacher.config)
    if args.student_as_bitnet and (options.input_norm, options.subln) == (args.bitnet_input_norm, args.bitnet_subln):
        return options
    if copies_layers and (options.input_norm or options.subln):
        raise DistilyConfigError(
            f"cannot copy the layers of a BitNet teacher trained with bitnet_input_norm={options.input_norm} and "
            f"bitnet_subln={options.subln} (its layers hold norms) into a student of student_as_bitnet="
            f"{args.student_as_bitnet}, bitnet_input_norm={args.bitnet_input_norm}, bitnet_subln={args.bitnet_subln}; "
            f"expected student_as_bitnet=true with the teacher's bitnet_input_norm and bitnet_subln (or "
            "student_init=random)"
        )
    return None


def build_student(args: ModelArguments, teacher: PreTrainedModel,
                  token_map: Callable[[], Optional[VocabularyMap]] = lambda: None,
                  calibration: Optional[Calibration] = None) -> PreTrainedModel:
    """The student, in float32 (mixed precision is the trainer's business), ready to train; ``token_map()`` pairs
    its tokens with the teacher's where its tokenizer is another (called only for a student that copies the
    teacher's layers: mapping two vocabularies reads every token of both); ``calibration`` gives the rows a pruned
    student's importance scores come from (student_init=pruned)."""
    if args.student_model_name_or_path is not None:
        student = load_student(args.student_model_name_or_path, args.trust_remote_code)
    else:
        config, teacher_layers = student_config_and_teacher_layers(args, teacher.config)
        if args.student_init == "pruned":
            check_prunable(teacher.config.get_text_config(), config.get_text_config())
        student = student_from_config(config, args.trust_remote_code)
        # the teacher's generation defaults travel with its tokenizer: where a turn ends (Phi-3's and Gemma's chat
        # models list their end-of-turn token there, not in the config), and how it samples
        student.generation_config = copy.deepcopy(teacher.generation_config)
        teacher_options = _converted_as_teacher(args, teacher, copies_layers=teacher_layers is not None)
        if teacher_options is not None:  # before it copies the teacher's ternary layers, so it takes them whole,
            convert_to_bitnet(student, **asdict(teacher_options))  # their norms (input_norm, SubLN) included
        if teacher_layers is not None:
            how = "pruned" if args.student_init == "pruned" else "copied"
            logger.info(f"Student layers {how} from teacher layers {teacher_layers}")
            if args.student_init == "pruned":
                _pruned_student(teacher, student, teacher_layers, token_map, calibration)
            else:
                copy_teacher_layers(teacher, student, teacher_layers, token_map())
    copy_named_modules(teacher, student, args.copy_teacher_modules or [])
    if args.student_as_bitnet and not is_bitnet(student.config):
        convert_to_bitnet(student, input_norm=args.bitnet_input_norm, subln=args.bitnet_subln)
    if is_bitnet(student.config):
        warn_unless_gguf_packable(student)
    freeze_named_modules(student, args.freeze_student_modules or [])
    return student

