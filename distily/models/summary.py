"""What a model is, in the numbers a reader compares: depth, widths, dtype, BitNet or not."""

from transformers import PreTrainedModel

from distily.models.bitnet import BITNET_CONFIG_KEY
from distily.models.experts import active_parameters

ACTIVE_PARAMETERS = "active_parameters"  # a mixture of experts': the parameters a token passes through

SHAPE_KEYS = {  # summary name: config attribute (after get_text_config; GPT-2's names are attribute aliases)
    "layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "attention_heads": "num_attention_heads",
    "key_value_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
}


def architecture_summary(model: PreTrainedModel) -> dict:
    """``model_type``, the shape numbers of ``SHAPE_KEYS`` the config has, one for every layer (not Gemma 3n's
    per-layer MLP widths, nor what a heterogeneous config sets apart for some layers: Gemma 4's KV heads with
    attention_k_eq_v), ``dtype``, and ``bitnet``: the options of a ternary (BitNet b1.58) model, ``None`` for a
    dense one, with ``bitnet_in_transformers`` for a ternary one: whether its saved config carries transformers' BitNet
    ``quantization_config`` (convert_to_bitnet)."""
    config = model.config.get_text_config()
    summary = {"model_type": config.model_type}
    per_layer = getattr(config, "per_layer_attributes", None) or set()
    for name, attribute in SHAPE_KEYS.items():
        value = None if attribute in per_layer else getattr(config, attribute, None)
        if isinstance(value, int):
            summary[name] = value
    summary["dtype"] = str(model.dtype).removeprefix("torch.")
    summary["bitnet"] = getattr(model.config, BITNET_CONFIG_KEY, None)
    if summary["bitnet"] is not None:  # whether plain transformers loads its checkpoint as the ternary model
        summary["bitnet_in_transformers"] = getattr(model.config, "quantization_config", None) is not None
    active = active_parameters(model)
    if active is not None:
        summary[ACTIVE_PARAMETERS] = active
    return summary


def parameter_count(model: PreTrainedModel) -> int:
    """Each parameter once (tied embeddings and LM head are one), 4-bit ones as the weights they stand for."""
    return model.num_parameters()
