"""Which kind each decoder layer is (dense or a mixture of experts; attention, Mamba or recurrent; computing its own
keys and values or reusing an earlier layer's) where a config says so without a per-layer list, by layer indices or
scalars: written again for a student whose layers stand for chosen teacher layers."""

from typing import Callable, NamedTuple, Optional

from transformers import PretrainedConfig

from distily.errors import DistilyConfigError


class LayerKindSetting(NamedTuple):
    """Config keys that say which kind each layer is, not as a per-layer list: ``kind(values, layer)`` reads a
    layer's kind from a config's values, ``write(kinds)`` gives the values under which a student's layer i is of
    kind ``kinds[i]``, or None where these keys cannot say so (``expected`` says which they can). A config holding
    ``unless`` says the same in a per-layer list (its entries are copied instead) and leaves these keys unused."""
    keys: tuple[str, ...]
    kind: Callable[[dict, int], str]
    write: Callable[[list[str]], Optional[dict]]
    expected: str = "student_layers_from_teacher in increasing order"
    unless: Optional[str] = None


def _listed(key: str, listed: str, other: str, unless: Optional[str] = None) -> LayerKindSetting:
    """The layers whose indices ``key`` lists are of kind ``listed``, the others ``other``."""
    return LayerKindSetting(
        (key,), lambda values, layer: listed if layer in values[key] else other,
        lambda kinds: {key: [i for i, kind in enumerate(kinds) if kind == listed]}, unless=unless,
    )


def _dense_first(key: str) -> LayerKindSetting:
    """The first ``key`` layers are dense, the others MoE."""
    def write(kinds: list[str]) -> Optional[dict]:
        dense = kinds.count("dense")
        return None if "MoE" in kinds[:dense] else {key: dense}
    return LayerKindSetting((key,), lambda values, layer: "dense" if layer < values[key] else "MoE", write,
                            unless="mlp_layer_types")


def _last(key: str, listed: str, other: str) -> LayerKindSetting:
    """The last ``key`` layers are of kind ``listed``, the others ``other``."""
    def write(kinds: list[str]) -> Optional[dict]:
        count = len(kinds) - kinds.index(listed) if listed in kinds else 0
        return None if other in kinds[len(kinds) - count:] else {key: count}
    return LayerKindSetting((key,), lambda values, layer: listed if layer >= values["num_hidden_layers"] - values[key]
                            else other, write)


def _moe_run(kinds: list[str]) -> Optional[dict]:
    """Ernie 4.5's MoE layers, one run of them."""
    moe = [layer for layer, kind in enumerate(kinds) if kind == "MoE"]
    start, end = (moe[0], moe[-1]) if moe else (len(kinds), len(kinds) - 1)
    if moe != list(range(start, end + 1)):
        return None
    return {"moe_layer_start_index": start, "moe_layer_end_index": end, "moe_layer_interval": 1}


def _periodic(period: str, offset: str, on: str, off: str, unless: Optional[str] = None) -> LayerKindSetting:
    """Layer i is of kind ``on`` where i % ``period`` == ``offset``, else ``off``: written with the shortest period
    that gives the student's kinds (a period past the last layer where none is ``on``)."""
    def kind(values: dict, layer: int) -> str:
        return on if layer % values[period] == values[offset] else off

    def write(kinds: list[str]) -> Optional[dict]:
        for length in range(1, len(kinds) + 2):
            for start in range(length):
                if all((layer_kind == on) == (i % length == start) for i, layer_kind in enumerate(kinds)):
                    return {period: length, offset: start}
        return None
    return LayerKindSetting((period, offset), kind, write,
                            f"student_layers_from_teacher whose {on} layers repeat with one period", unless)


def _cycle(key: str) -> LayerKindSetting:
    """Layer i is of kind ``key[i % len(key)]``: a student's kinds are a cycle of their own."""
    return LayerKindSetting((key,), lambda values, layer: values[key][layer % len(values[key])],
                            lambda kinds: {key: list(kinds)})


LAYER_KIND_SETTINGS = (
    # Qwen2-MoE, Qwen3-MoE, Qwen3-Next: the layers in mlp_only_layers are dense, the others MoE every
    # decoder_sparse_step-th
    LayerKindSetting(
        ("mlp_only_layers", "decoder_sparse_step"),
        lambda values, layer: "MoE" if layer not in values["mlp_only_layers"]
        and (layer + 1) % values["decoder_sparse_step"] == 0 else "dense",
        lambda kinds: {"mlp_only_layers": [i for i, kind in enumerate(kinds) if kind == "dense"],
                       "decoder_sparse_step": 1},
        unless="mlp_layer_types",
    ),
    # Llama 4: the layers in moe_layers (derived from interleave_moe_layer_step when not given) are MoE
    _listed("moe_layers", "MoE", "dense", unless="mlp_layer_types"),
    _dense_first("first_k_dense_replace"),  # DeepSeek-V2/V3, GLM-4 MoE, dots1, Mistral 4
    _dense_first("num_dense_layers"),  # AFMoE, LFM2-MoE
    # Ernie 4.5: every moe_layer_interval-th layer from moe_layer_start_index to moe_layer_end_index is MoE
    LayerKindSetting(
        ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"),
        lambda values, layer: "MoE" if values["moe_layer_start_index"] <= layer <= values["moe_layer_end_index"]
        and (layer + 1) % values["moe_layer_interval"] == 0 else "dense",
        _moe_run,
        unless="mlp_layer_types",
    ),
    # Jamba: attention every attn_layer_period-th layer from attn_layer_offset, Mamba elsewhere; MoE likewise
    # (Zamba's keys of the same names only seed its layers_block_type)
    _periodic("attn_layer_period", "attn_layer_offset", "attention", "mamba", unless="layers_block_type"),
    _periodic("expert_layer_period", "expert_layer_offset", "MoE", "dense"),
    _listed("attn_layer_indices", "attention", "mamba"),  # Bamba: attention where listed, Mamba elsewhere
    _listed("full_attn_idxs", "attention", "conv"),  # LFM2: kept beside the layer_types it gave
    _cycle("block_types"),  # RecurrentGemma: recurrent and attention blocks repeating block_types
    # Gemma 3n, Gemma 4: the last num_kv_shared_layers layers reuse the keys and values of earlier ones
    _last("num_kv_shared_layers", "KV-sharing", "KV-computing"),
)

LAYER_KIND_KEYS = frozenset(key for setting in LAYER_KIND_SETTINGS for key in setting.keys)

# layer indices a config's constructor derives from its per-layer list, left out of a student's values so that it
# derives them again from the student's list: Zamba2's hybrid_layer_ids (the layers holding its shared transformer
# blocks)
DERIVED_LAYER_KEYS = ("hybrid_layer_ids",)


def layer_kind_values(config: PretrainedConfig, values: dict, sources: list[int], changes: dict) -> dict:
    """The values of ``config``'s ``LAYER_KIND_SETTINGS`` under which student layer i is of the kind layer
    ``sources[i]`` of ``config`` is; none where the overrides set them."""
    written = {}
    for setting in LAYER_KIND_SETTINGS:
        superseded = setting.unless is not None and setting.unless in values
        if superseded or any(values.get(key) is None or key in changes for key in setting.keys):
            continue
        kinds = [setting.kind(values, index) for index in sources]
        student_values = setting.write(kinds)
        if student_values is None:
            raise DistilyConfigError(
                f"student layers standing for layers {sources} would be {', '.join(kinds)}, which "
                f"{type(config).__name__}'s {', '.join(setting.keys)} cannot express; expected {setting.expected}"
            )
        written.update(student_values)
    return written
