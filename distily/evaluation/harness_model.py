"""lm-eval's ``HFLM`` for a model already in memory, its ``generate`` given Distily's cache argument: a student of a
hybrid teacher that kept no attention layer generates with ``RecurrentStateCache`` (``generation/recurrent_cache.py``),
where ``transformers``' own cache would raise. Imported only where lm-evaluation-harness is installed."""

from lm_eval.models.huggingface import HFLM

from distily.generation.recurrent_cache import cache_argument


class HarnessModel(HFLM):
    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        return super()._model_generate(context, max_length, stop, **cache_argument(self.model), **generation_kwargs)
