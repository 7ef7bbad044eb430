"""A cache for generating with a hybrid model that kept none of its attention layers: a student of Jamba, Bamba,
GraniteMoeHybrid, RecurrentGemma, Nemotron-H, Zamba2 or LFM2 whose layers are all Mamba, recurrent or convolutional.

These model classes build a causal mask for their attention layers on every forward, sized by the cache's
``get_mask_sizes``, which asks an attention layer of the cache; a cache of recurrent states alone has none and
``transformers`` raises ``ValueError: `get_mask_sizes` can only be called on Attention layers`` (in ``generate``
and in any forward with ``use_cache=True``). ``RecurrentStateCache`` answers instead with the sizes of a mask over
the cache's length and the query, which no layer reads; ``cache_argument`` gives one to ``generate`` for the models
that need it. Their completions are the full forward's greedy continuations (``tests/generation``).
"""

from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin, LinearAttentionCacheLayerMixin


class RecurrentStateCache(DynamicCache):
    """``DynamicCache`` whose mask sizes, where no layer attends, are the cache's length and the query's."""

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        if any(isinstance(layer, CacheLayerMixin) for layer in self.layers):
            return super().get_mask_sizes(query_length, layer_idx)
        return int(self.get_seq_length()) + query_length, 0  # (kv_length, kv_offset)


def cache_argument(model: PreTrainedModel) -> dict:
    """``generate``'s cache argument for ``model``: a fresh ``RecurrentStateCache`` where its cache holds recurrent
    states and no attention layer, else none (``generate`` makes its own, as it does for every other model)."""
    cache = RecurrentStateCache(config=model.config.get_text_config(decoder=True))
    recurrent = any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in cache.layers)
    attending = any(isinstance(layer, CacheLayerMixin) for layer in cache.layers)
    return {"cache": cache} if recurrent and not attending else {}
