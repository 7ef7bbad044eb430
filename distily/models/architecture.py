"""Facts about a causal LM's architecture that distillation needs, found generically."""

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "seq_length")
LOGIT_TRANSFORM_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # applied after the LM head


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The model's list of decoder blocks: the ``ModuleList`` with ``num_hidden_layers`` entries."""
    depth = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"{type(model).__name__} has no ModuleList of {depth} decoder layers")


def decoder_layers_prefix(model: PreTrainedModel) -> str:
    """The qualified name of ``decoder_layers(model)``, e.g. ``model.layers`` or ``transformer.h``."""
    layers = decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position scheme allows, if the config says."""
    for key in POSITION_LIMIT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the LM head: the width of the logits, padding rows included."""
    return model.get_output_embeddings().weight.shape[0]


def plain_lm_head(config: PretrainedConfig) -> bool:
    """True when the logits are exactly the LM head applied to the last hidden state (no soft-capping or
    scaling after it), so the head can be fused into the loss."""
    return all(getattr(config, key, None) in (None, 1, 1.0) for key in LOGIT_TRANSFORM_KEYS)
