"""Build the student: from a checkpoint, from a config, or from the teacher's config with overrides,
initialised randomly or from chosen teacher layers; then named modules copied and frozen."""

import copy
import os
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers, named_decoder_layers
from distily.models.arguments import ModelArguments
from distily.models.bitnet import convert_to_bitnet, is_bitnet, load_bitnet_student
from distily.models.teacher import from_pretrained

DEPTH = "num_hidden_layers"
WIDTH = "hidden_size"
HEADS = "num_attention_heads"


def _canonical(config: PretrainedConfig, key: str) -> str:
    """The name a config stores ``key`` under (GPT-2 keeps num_hidden_layers as n_layer)."""
    return config.attribute_map.get(key, key)


def config_with_overrides(config: PretrainedConfig, overrides: dict,
                          layer_sources: Optional[list[int]] = None) -> PretrainedConfig:
    """A new config of the same class with ``overrides`` applied through the class's own constructor, so values
    derived from the changed ones are derived again: a head_dim of width / heads from the new ones. When the depth
    changes, every per-layer list of ``config``'s depth (``layer_types``: which layers attend in a sliding window,
    which are linear or convolutional; ``no_rope_layers``, ``mlp_layer_types``, ...) becomes the entries of the
    layers each student layer stands for: ``layer_sources`` (the teacher layers copied into it), else evenly spaced
    ones. Derived from the new depth instead, the copied layers would run with another attention, position scheme
    or block than they learned with (a Gemma 3 student of 4 layers would have no global attention layer)."""
    values = config.to_dict()
    changes = {_canonical(config, key): value for key, value in overrides.items()}
    for key, original in zip(overrides, changes):
        if original not in values and not hasattr(config, original):
            raise DistilyConfigError(
                f"student_config_overrides key {key!r} is not a field of {type(config).__name__}; "
                "expected one of its config keys"
            )
    width, heads, depth = (_canonical(config, k) for k in (WIDTH, HEADS, DEPTH))
    if (width in changes or heads in changes) and "head_dim" not in changes:
        new_width, new_heads = changes.get(width, values[width]), changes.get(heads, values[heads])
        if not isinstance(new_heads, int) or new_heads < 1 or new_width % new_heads:
            raise DistilyConfigError(
                f"student num_attention_heads={new_heads} does not divide hidden_size={new_width}; "
                "expected a head count that divides the hidden size"
            )
        if values.get("head_dim") == values[width] // values[heads]:  # derived from them: derive it again (Qwen3
            values["head_dim"] = new_width // new_heads  # and Gemma would fall back to a fixed default, not this)
    if depth in changes:
        sources = layer_sources or evenly_spaced_layers(values[depth], changes[depth])
        for key, value in values.items():
            if "layer" in key and key not in changes and isinstance(value, list) and len(value) == values[depth]:
                values[key] = [value[index] for index in sources]
    values.update(changes)
    student_config = type(config).from_dict(values)
    check_attention_shape(student_config)
    return student_config


def check_attention_shape(config: PretrainedConfig) -> None:
    heads = getattr(config, HEADS, None)
    kv_heads = getattr(config, "num_key_value_heads", None)
    if heads and kv_heads and heads % kv_heads:
        raise DistilyConfigError(
            f"student num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}; "
            "expected a KV head count that divides the head count"
        )


def evenly_spaced_layers(teacher_depth: int, student_depth: int) -> list[int]:
    """Teacher layer for each student layer: evenly spaced, first and last included."""
    if student_depth == 1:
        return [teacher_depth - 1]
    return [round(i * (teacher_depth - 1) / (student_depth - 1)) for i in range(student_depth)]


def teacher_layer_sources(chosen: Optional[list[int]], teacher_depth: int, student_depth: int) -> list[int]:
    """The teacher layer copied into each student layer: ``chosen`` (``student_layers_from_teacher``), checked,
    else evenly spaced ones."""
    if chosen is None:
        return evenly_spaced_layers(teacher_depth, student_depth)
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


def copy_teacher_layers(teacher: PreTrainedModel, student: PreTrainedModel, teacher_layers: list[int]) -> None:
    """Copy ``teacher_layers[i]`` into student layer i, and every other parameter (embeddings, final
    norm, LM head) whose name and shape match; a tensor the student shares between two names (an LM head tied to
    the embeddings) is copied once, from the first (the embeddings), as transformers ties the head to them."""
    teacher_blocks, student_blocks = decoder_layers(teacher), decoder_layers(student)
    teacher_layers = teacher_layer_sources(teacher_layers, len(teacher_blocks), len(student_blocks))
    with torch.no_grad():
        for student_block, index in zip(student_blocks, teacher_layers):
            _copy_module(teacher_blocks[index], student_block, f"teacher layer {index}")
        prefix = named_decoder_layers(student)[0] + "."
        teacher_params = dict(teacher.state_dict())
        copied = set()  # the student's tensors written so far
        for name, param in student.state_dict().items():
            source = teacher_params.get(name)
            if name.startswith(prefix) or source is None or source.shape != param.shape or param.data_ptr() in copied:
                continue
            param.copy_(source)
            copied.add(param.data_ptr())


def _copy_module(source: torch.nn.Module, target: torch.nn.Module, what: str) -> None:
    source_state, target_state = source.state_dict(), target.state_dict()
    for name, param in target_state.items():
        if name not in source_state or source_state[name].shape != param.shape:
            got = tuple(source_state[name].shape) if name in source_state else "missing"
            raise DistilyConfigError(
                f"cannot copy {what} into the student: {name} has shape {tuple(param.shape)} in the student and "
                f"{got} in the teacher; expected matching shapes (use student_init=random for a reshaped student)"
            )
        with torch.no_grad():
            param.copy_(source_state[name])


def _submodule(model: PreTrainedModel, name: str, role: str, option: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise DistilyConfigError(f"{option}: {role} has no module named {name!r}; expected a name from named_modules()")


def copy_named_modules(teacher: PreTrainedModel, student: PreTrainedModel, names: list[str]) -> None:
    for name in names:
        source = _submodule(teacher, name, "teacher", "copy_teacher_modules")
        target = _submodule(student, name, "student", "copy_teacher_modules")
        _copy_module(source, target, f"teacher module {name}")


# names that mean the same module in every architecture (an LM head tied to the embeddings is one parameter)
FREEZE_ALIASES = {
    "embeddings": PreTrainedModel.get_input_embeddings,
    "lm_head": PreTrainedModel.get_output_embeddings,
}


def freeze_named_modules(student: PreTrainedModel, names: list[str]) -> None:
    for name in names:
        if name in FREEZE_ALIASES:
            module = FREEZE_ALIASES[name](student)
        else:
            module = _submodule(student, name, "student", "freeze_student_modules")
        module.requires_grad_(False)


def student_config(args: ModelArguments, teacher_config: PretrainedConfig) -> PretrainedConfig:
    """The student's config: ``student_config_name_or_path`` or the teacher's, with the overrides; a student that
    copies teacher layers takes their per-layer settings."""
    if args.student_config_name_or_path is not None:
        base = from_pretrained(
            AutoConfig, args.student_config_name_or_path, "student config", trust_remote_code=args.trust_remote_code
        )
        return config_with_overrides(base, args.student_config_overrides)
    overrides, sources = args.student_config_overrides, None
    depth = next((overrides[key] for key in (DEPTH, _canonical(teacher_config, DEPTH)) if key in overrides), None)
    if args.student_init == "teacher" and isinstance(depth, int):
        sources = teacher_layer_sources(args.student_layers_from_teacher, text_depth(teacher_config), depth)
    return config_with_overrides(teacher_config, overrides, sources)


def text_depth(config: PretrainedConfig) -> int:
    """The decoder's depth (a multimodal model's, such as Gemma 3's, is in its text config)."""
    return config.get_text_config().num_hidden_layers


def load_student(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """A saved student in float32; a BitNet student (its config says so) comes back with its ternary layers."""
    config = from_pretrained(AutoConfig, name_or_path, "student", trust_remote_code=trust_remote_code)
    if is_bitnet(config):
        return load_bitnet_student(os.path.expanduser(name_or_path)).train()
    return from_pretrained(
        AutoModelForCausalLM, name_or_path, "student", dtype=torch.float32, trust_remote_code=trust_remote_code
    )


def build_student(args: ModelArguments, teacher: PreTrainedModel) -> PreTrainedModel:
    """The student, in float32 (mixed precision is the trainer's business), ready to train."""
    if args.student_model_name_or_path is not None:
        student = load_student(args.student_model_name_or_path, args.trust_remote_code)
    else:
        config = student_config(args, teacher.config)
        student = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, trust_remote_code=args.trust_remote_code
        )
        # the teacher's generation defaults travel with its tokenizer: where a turn ends (Phi-3's and Gemma's chat
        # models list their end-of-turn token there, not in the config), and how it samples
        student.generation_config = copy.deepcopy(teacher.generation_config)
        if args.student_init == "teacher":
            layers = teacher_layer_sources(args.student_layers_from_teacher, text_depth(teacher.config),
                                           text_depth(config))
            copy_teacher_layers(teacher, student, layers)
    copy_named_modules(teacher, student, args.copy_teacher_modules or [])
    if args.student_as_bitnet and not is_bitnet(student.config):
        convert_to_bitnet(student, input_norm=args.bitnet_input_norm, subln=args.bitnet_subln)
    freeze_named_modules(student, args.freeze_student_modules or [])
    return student

