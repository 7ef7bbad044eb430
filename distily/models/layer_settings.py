"""Settings a config gives each decoder layer, as a list with an entry per layer or a dict keyed by layer index:
written again for a student whose layer i stands for teacher layer ``sources[i]``."""

from transformers import PretrainedConfig

from distily.errors import DistilyConfigError
from distily.models.layer_kinds import LAYER_KIND_KEYS

# per-layer lists whose names do not say "layer": Gemma 3n's MLP widths and activation sparsity
PER_LAYER_LISTS = ("intermediate_size", "activation_sparsity_pattern")
# settings that differ from the config's in some layers, by layer index: transformers' heterogeneous configs (Gemma 4's
# full-attention layers have another head_dim and KV head count)
PER_LAYER_OVERRIDES = "per_layer_config"


def _is_per_layer_list(key: str, value, depth: int) -> bool:
    """A list with one entry per layer (a list of layer indices, such as mlp_only_layers, is not one)."""
    named = "layer" in key or key in PER_LAYER_LISTS
    return named and key not in LAYER_KIND_KEYS and isinstance(value, list) and len(value) == depth


def per_layer_values(values: dict, depth: int, sources: list[int]) -> dict:
    """The per-layer lists and per-layer overrides of a config's ``values`` (of ``depth`` layers) under which the
    student's layer i has the settings of layer ``sources[i]``."""
    written = {key: [value[index] for index in sources]
               for key, value in values.items() if _is_per_layer_list(key, value, depth)}
    if values.get(PER_LAYER_OVERRIDES):  # keys are strings once serialized ("03")
        overrides = {int(index): layer for index, layer in values[PER_LAYER_OVERRIDES].items()}
        written[PER_LAYER_OVERRIDES] = {i: dict(overrides[index]) for i, index in enumerate(sources)
                                        if index in overrides}
    return written


def check_kept(config: PretrainedConfig, written: dict, sources: list[int]) -> None:
    """The student's config class keeps the per-layer lists written for it: Gemma 4's makes its last layer attend
    globally, so a copied sliding-window layer there would run as another layer than it learned to be."""
    for key, value in written.items():
        kept = getattr(config, key)
        if key == PER_LAYER_OVERRIDES or kept == value:
            continue
        layer = next(i for i, (ours, theirs) in enumerate(zip(value, kept)) if ours != theirs)
        raise DistilyConfigError(
            f"student layer {layer} stands for teacher layer {sources[layer]} ({key} {value[layer]!r}), but "
            f"{type(config).__name__} makes it {kept[layer]!r}; expected student layers whose {key} it keeps "
            "(student_layers_from_teacher; Gemma 4's last layer is a full_attention one)"
        )


def layer_config(config: PretrainedConfig, layer: int) -> PretrainedConfig:
    """The settings layer ``layer`` runs with: a heterogeneous config's own for that layer, else the config."""
    return config.per_layer_config[layer] if getattr(config, "is_heterogeneous", False) else config
