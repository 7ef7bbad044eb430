"""lm-eval's ``HFLM`` for a model already in memory, given Distily's cache argument: a student of a hybrid teacher
that kept no attention layer generates with ``RecurrentStateCache`` (``generation/recurrent_cache.py``), where
``transformers``' own cache would raise, and reads its likelihoods with ``use_cache=False`` (they read no cache, and
one its config asks for would raise likewise). Imported only where lm-evaluation-harness is installed."""

from typing import Optional

import torch
from lm_eval.models.huggingface import HFLM

from distily.generation.recurrent_cache import cache_argument


def _without_cache(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A forward pre-hook: the forward's keyword arguments with ``use_cache=False``."""
    return args, {**kwargs, "use_cache": False}


class HarnessModel(HFLM):
    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        return super()._model_generate(context, max_length, stop, **cache_argument(self.model), **generation_kwargs)

    def _model_call(self, inps: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                    labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The logits likelihoods are read from; for a model ``cache_argument`` gives a cache to, without one."""
        if not cache_argument(self.model):
            return super()._model_call(inps, attn_mask, labels)
        hook = self.model.register_forward_pre_hook(_without_cache, with_kwargs=True)
        try:
            return super()._model_call(inps, attn_mask, labels)
        finally:
            hook.remove()
