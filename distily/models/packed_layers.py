"""Tables outside the decoder layers that pack one slice per layer: Gemma 3n's and Gemma 4's per-layer input
embeddings and the projection beside them, whose width is num_hidden_layers * hidden_size_per_layer_input, layer j's
input being slice j. A student copying chosen teacher layers takes those layers' slices."""

import torch
from transformers import PretrainedConfig

PER_LAYER_WIDTH = "hidden_size_per_layer_input"
PER_LAYER_TOKEN_TABLE = "embed_tokens_per_layer"  # the module of a vector per input token for every layer
# the tables, by the end of their names, and the dimension that packs the layers
PACKED_TABLES = {f"{PER_LAYER_TOKEN_TABLE}.weight": 1, "per_layer_model_projection.weight": 0}


def layer_slices(name: str, tensor: torch.Tensor, config: PretrainedConfig, layers: list[int]) -> torch.Tensor:
    """``tensor`` (named ``name`` in a model of ``config``) holding only the slices of ``layers``, in that order, where
    it is a packed per-layer table; else ``tensor``."""
    dim = next((dim for suffix, dim in PACKED_TABLES.items() if name.endswith(suffix)), None)
    width = getattr(config, PER_LAYER_WIDTH, None)
    if dim is None or not width or tensor.shape[dim] != config.num_hidden_layers * width:
        return tensor
    per_layer = tensor.unflatten(dim, (config.num_hidden_layers, width))
    return per_layer.index_select(dim, torch.tensor(layers, device=tensor.device)).flatten(dim, dim + 1)
