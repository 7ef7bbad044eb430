"""A cache for generating with a hybrid model that kept none of its attention layers: a student of Jamba, Bamba,
GraniteMoeHybrid, RecurrentGemma, Nemotron-H, Zamba2 or LFM2 whose layers are all Mamba, recurrent or convolutional;
or one whose first layer caches nothing: a Nemotron-H student whose first layer is an MLP or MoE block.

These model classes build a causal mask for their attention layers on every forward, sized by the cache's
``get_mask_sizes``, which asks an attention layer of the cache; a cache of recurrent states alone has none and
``transformers`` raises ``ValueError: `get_mask_sizes` can only be called on Attention layers`` (in ``generate``
and in any forward with ``use_cache=True``). ``RecurrentStateCache`` answers instead with the sizes of a mask over
the cache's length and the query, which no layer reads. ``transformers`` reads the length of the cache from its first
layer, which for a block that caches nothing raises ``AttributeError: 'DummyLayer' object has no attribute
'get_seq_length'``; ``RecurrentStateCache`` reads it from the first layer that caches something. ``cache_argument``
gives one to ``generate`` for the models that need it. Their completions are the full forward's greedy continuations
(``tests/generation``).
"""

from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin, DummyLayer, LinearAttentionCacheLayerMixin


class RecurrentStateCache(DynamicCache):
    """``DynamicCache`` whose mask sizes, where no layer attends, are the cache's length and the query's, and whose
    length is that of a layer that caches something."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx < len(self.layers) and isinstance(self.layers[layer_idx], DummyLayer):
            layer_idx = next((index for index, layer in enumerate(self.layers) if not isinstance(layer, DummyLayer)),
                             len(self.layers))
        return super().get_seq_length(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        if any(isinstance(layer, CacheLayerMixin) for layer in self.layers):
            return super().get_mask_sizes(query_length, layer_idx)
        return int(self.get_seq_length()) + query_length, 0  # (kv_length, kv_offset)


def cache_argument(model: PreTrainedModel) -> dict:
    """``generate``'s cache argument for ``model``: a fresh ``RecurrentStateCache`` where its cache holds recurrent
    states and no attention layer, or its first layer caches nothing, else none (``generate`` makes its own, as it
    does for every other model)."""
    cache = RecurrentStateCache(config=model.config.get_text_config(decoder=True))
    recurrent = any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in cache.layers)
    attending = any(isinstance(layer, CacheLayerMixin) for layer in cache.layers)
    first_empty = bool(cache.layers) and isinstance(cache.layers[0], DummyLayer) and (recurrent or attending)
    return {"cache": cache} if (recurrent and not attending) or first_empty else {}
