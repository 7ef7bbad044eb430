"""Which decoder layers are a mixture of experts, where a config says so without a per-layer list (by layer
indices or a scalar), written again for a student whose layers stand for chosen teacher layers."""

from typing import Callable, NamedTuple, Optional

from transformers import PretrainedConfig

from distily.errors import DistilyConfigError


class MoeLayerSetting(NamedTuple):
    """Config keys that say which layers are a mixture of experts, not as a per-layer list: ``is_moe(values, layer)``
    reads a layer's kind from a config's values, ``write(is_moe)`` gives the values under which a student's layer i
    is MoE exactly where ``is_moe[i]``, or None where these keys cannot say so."""
    keys: tuple[str, ...]
    is_moe: Callable[[dict, int], bool]
    write: Callable[[list[bool]], Optional[dict]]


def _dense_first(key: str) -> MoeLayerSetting:
    """The first ``key`` layers are dense, the others MoE."""
    def write(is_moe: list[bool]) -> Optional[dict]:
        dense = is_moe.count(False)
        return None if any(is_moe[:dense]) else {key: dense}
    return MoeLayerSetting((key,), lambda values, layer: layer >= values[key], write)


def _moe_run(is_moe: list[bool]) -> Optional[dict]:
    """Ernie 4.5's MoE layers, one run of them."""
    moe = [layer for layer, flag in enumerate(is_moe) if flag]
    start, end = (moe[0], moe[-1]) if moe else (len(is_moe), len(is_moe) - 1)
    if moe != list(range(start, end + 1)):
        return None
    return {"moe_layer_start_index": start, "moe_layer_end_index": end, "moe_layer_interval": 1}


MOE_LAYER_SETTINGS = (
    # Qwen2-MoE, Qwen3-MoE, Qwen3-Next: the layers in mlp_only_layers are dense, the others MoE every
    # decoder_sparse_step-th
    MoeLayerSetting(
        ("mlp_only_layers", "decoder_sparse_step"),
        lambda values, layer: layer not in values["mlp_only_layers"]
        and (layer + 1) % values["decoder_sparse_step"] == 0,
        lambda is_moe: {"mlp_only_layers": [i for i, moe in enumerate(is_moe) if not moe], "decoder_sparse_step": 1},
    ),
    # Llama 4: the layers in moe_layers (derived from interleave_moe_layer_step when not given) are MoE
    MoeLayerSetting(("moe_layers",), lambda values, layer: layer in values["moe_layers"],
                    lambda is_moe: {"moe_layers": [i for i, moe in enumerate(is_moe) if moe]}),
    _dense_first("first_k_dense_replace"),  # DeepSeek-V2/V3, GLM-4 MoE, dots1, Mistral 4
    _dense_first("num_dense_layers"),  # AFMoE, LFM2-MoE
    # Ernie 4.5: every moe_layer_interval-th layer from moe_layer_start_index to moe_layer_end_index is MoE
    MoeLayerSetting(
        ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"),
        lambda values, layer: values["moe_layer_start_index"] <= layer <= values["moe_layer_end_index"]
        and (layer + 1) % values["moe_layer_interval"] == 0,
        _moe_run,
    ),
)

MOE_LAYER_KEYS = frozenset(key for setting in MOE_LAYER_SETTINGS for key in setting.keys)


def moe_layer_values(config: PretrainedConfig, values: dict, sources: list[int], changes: dict) -> dict:
    """The values of ``config``'s ``MOE_LAYER_SETTINGS`` under which student layer i is dense or MoE as layer
    ``sources[i]`` of ``config`` is; none where a per-layer ``mlp_layer_types`` says it, or the overrides set them."""
    written = {}
    if "mlp_layer_types" in values:
        return written
    for setting in MOE_LAYER_SETTINGS:
        if any(values.get(key) is None or key in changes for key in setting.keys):
            continue
        is_moe = [setting.is_moe(values, index) for index in sources]
        student_values = setting.write(is_moe)
        if student_values is None:
            raise DistilyConfigError(
                f"student layers standing for layers {sources} would be "
                f"{', '.join('MoE' if moe else 'dense' for moe in is_moe)}, which {type(config).__name__}'s "
                f"{', '.join(setting.keys)} cannot express; expected student_layers_from_teacher in increasing order"
            )
        written.update(student_values)
    return written
