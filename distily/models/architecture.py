"""Facts about a causal LM's architecture that distillation needs, found generically."""

from typing import Optional

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from distily.errors import DistilyConfigError

POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "seq_length")
DEFAULT_MAX_SEQ_LENGTH = 1024
# applied to the logits after the LM head (Gemma 2/3/3n/4, Cohere, Granite, Falcon-H1, ...), in the model's config
# or, for models loaded as ...ForConditionalGeneration, in its text config
LOGIT_TRANSFORM_KEYS = ("final_logit_softcapping", "logits_soft_cap", "logit_scale", "logits_scaling",
                        "lm_head_multiplier", "output_multiplier")


def named_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, list) of the decoder blocks: the only ``ModuleList`` with ``num_hidden_layers``
    entries, e.g. ``model.layers`` or ``transformer.h``, not counting lists inside another (a Zamba2 block's
    adapters, one per hybrid layer: as many as the layers where every one is hybrid) or lists of single layers
    without modules inside (Gemma 3n's AltUp projections, one per extra stream: 3, as many as a 3-layer student's
    blocks)."""
    config = model.config.get_text_config()
    depth = getattr(config, "num_hidden_layers", None)
    lists = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and depth is not None and len(module) == depth
        and all(any(True for _ in block.children()) for block in module)
    ]
    found = [(name, module) for name, module in lists
             if not any(name.startswith(f"{outer}.") for outer, _ in lists)]
    if len(found) != 1:
        raise DistilyConfigError(
            f"found {len(found)} module lists of length num_hidden_layers={depth} in {type(model).__name__}; "
            "expected exactly one list of decoder blocks"
        )
    return found[0]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return named_decoder_layers(model)[1]


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position scheme allows, if the config says."""
    for key in POSITION_LIMIT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_max_seq_length(requested: int | None, *models: PreTrainedModel) -> int:
    """The packed sequence length: ``requested``, checked against every model's position limit, or by default
    the smaller of that limit and ``DEFAULT_MAX_SEQ_LENGTH``."""
    limits = [limit for limit in (max_positions(m.config) for m in models) if limit is not None]
    limit = min(limits) if limits else None
    if requested is None:
        return min(limit or DEFAULT_MAX_SEQ_LENGTH, DEFAULT_MAX_SEQ_LENGTH)
    if limit is not None and requested > limit:
        raise DistilyConfigError(
            f"max_seq_length={requested} exceeds the models' position limit {limit}; expected at most {limit}"
        )
    return requested


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the LM head: the width of the logits, padding rows included."""
    return model.get_output_embeddings().weight.shape[0]


def token_id_limit(*models: PreTrainedModel) -> int:
    """One past the largest token id every model can take in and predict: the fewest rows of any input
    embedding or LM head."""
    return min(min(model.get_input_embeddings().num_embeddings, output_vocab_size(model)) for model in models)


def plain_lm_head(model: PreTrainedModel) -> bool:
    """True when the logits are exactly ``F.linear(last hidden state, head.weight, head.bias)``, so the head
    can be fused into the loss: a linear head with float weights and ``nn.Linear``'s own forward (not a
    quantized or ternary one), reading the decoder's output directly (``_head_reads_decoder``), and no
    soft-capping or scaling after it."""
    head = model.get_output_embeddings()
    linear = isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward and head.weight.is_floating_point()
    configs = [model.config, model.config.get_text_config()]
    return linear and _head_reads_decoder(model, head) and all(
        getattr(config, key, None) in (None, 1, 1.0) for config in configs for key in LOGIT_TRANSFORM_KEYS
    )


def decoder_of(model: PreTrainedModel) -> nn.Module:
    """The decoder under a causal LM's head: ``get_decoder()``, or where that finds none and returns the model itself,
    the ``model`` attribute causal LMs keep it in (Llama 4's causal LM, whose ``base_model_prefix`` names an
    attribute it does not have)."""
    decoder, inner = model.get_decoder(), getattr(model, "model", None)
    return inner if decoder is model and isinstance(inner, nn.Module) else decoder


# the config key naming the residual stream a model that carries several computes on (Gemma 3n's AltUp)
ACTIVE_STREAM = "altup_active_idx"


def active_stream(config: PretrainedConfig) -> Optional[int]:
    """The residual stream a model of ``config`` computes on, where it carries several; else None."""
    return getattr(config.get_text_config(), ACTIVE_STREAM, None)


def block_output(hidden: torch.Tensor, stream: Optional[int]) -> torch.Tensor:
    """An entry of a model's ``output_hidden_states`` as ``[batch, seq, width]``: of a model that carries several
    residual streams (Gemma 3n's AltUp: ``[streams, batch, seq, width]``), its active one (``active_stream``)."""
    return hidden if stream is None else hidden[stream]


def attending_layers(model: PreTrainedModel) -> list[int]:
    """The decoder layers (0-based) whose attention probabilities a forward with ``output_attentions`` returns, in
    the order it returns them: those holding a module of the class transformers records them from (the decoder's
    ``_can_record_outputs``), so not a hybrid model's Mamba, recurrent, convolutional or linear-attention layers;
    every layer where the decoder names no such class."""
    recorded = (getattr(decoder_of(model), "_can_record_outputs", None) or {}).get("attentions")
    layers = decoder_layers(model)
    if recorded is None:
        return list(range(len(layers)))
    target, name = getattr(recorded, "target_class", recorded), getattr(recorded, "layer_name", None)
    return [index for index, layer in enumerate(layers)
            if any(isinstance(module, target) and (name is None or name in path)
                   for path, module in layer.named_modules(prefix="layer"))]


def _head_reads_decoder(model: PreTrainedModel, head: nn.Module) -> bool:
    """Whether ``decoder_of(model)`` (what the fused paths run) is a module of its own whose last hidden state
    goes straight into ``head``: every weight of the model is the decoder's or the head's. Not so where a
    prediction head (dense, activation, norm) sits between them (ModernBERT's and RoBERTa's decoders), nor where
    no decoder is found but the model itself."""
    decoder = decoder_of(model)
    if decoder is model:
        return False
    inside = {id(parameter) for module in (decoder, head) for parameter in module.parameters()}
    return all(id(parameter) in inside for parameter in model.parameters())
