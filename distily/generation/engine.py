"""Completions of prompts, batched, behind one interface (``CompletionGenerator``) with two back ends:
``HFGenerator`` (``transformers`` ``generate``, here) and ``VLLMGenerator`` (``vllm_engine.py``).

A generator takes prompts as token-id lists and returns, per prompt, the completion's token ids: up to and
including the first stop token (the model chose to stop there), or ``max_new_tokens`` ids without one; with a
``vocab_size``, only ids below it: the tokenizer's (``vocabulary_size``), as a model's logits may have padding
columns past its last token (an embedding padded to a multiple of 64), which are no text and which a teacher
without those rows cannot read. The stop tokens (``stop_token_ids``) are the tokenizer's end of text and the
model's generation config's: chat models end their turns with a token of their own (Phi-3 with ``<|end|>``, Gemma
with ``<end_of_turn>``) that only their generation config lists (where ``generate`` reads it by default).
``load_weights(model, sharded)`` makes it sample from ``model``'s current weights: the Hugging Face back end
generates with the model itself, the vLLM back end copies the weights into its engine. ``sharded``: the model's
parameters are sharded over the processes (FSDP, DeepSpeed ZeRO-3), which then generate together.
"""

import logging
import math
from abc import ABC, abstractmethod
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from transformers import (
    GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, TopPLogitsWarper,
)

from distily.data.chat import ChatTemplate, assistant_turns
from distily.data.chat_alignment import end_of_turn_id
from distily.data.framing import INPUT_IDS
from distily.errors import DistilyConfigError
from distily.models.finite import NonFiniteOutputs
from distily.generation.arguments import SamplingSettings
from distily.generation.recurrent_cache import cache_argument

logger = logging.getLogger(__name__)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """The ids ``model``'s completions end at: the tokenizer's end of text, then its generation config's
    ``eos_token_id`` (one id or a list)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return list(dict.fromkeys(token for token in ids if token is not None))


def chat_stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
                  template: Optional[ChatTemplate]) -> list[int]:
    """The ids ``model``'s answers in chats rendered with ``template`` end at: the template's end of turn first,
    whether or not ``model``'s generation config lists it (a base model given a chat template stops only at its
    end of text, and would answer on into the next turn), then ``stop_token_ids`` (alone for text: no template)."""
    end_of_turn = end_of_turn_id(tokenizer, template) if template is not None else None
    return list(dict.fromkeys([*([end_of_turn] if end_of_turn is not None else []), *stop_token_ids(tokenizer, model)]))


def vocabulary_size(tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int]) -> int:
    """One past the largest id a completion may hold: the tokenizer's tokens, and every stop token."""
    return max([len(tokenizer), *(token + 1 for token in stop_ids)])


def cut_at_stop(ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    """``ids`` up to and including the first of ``stop_ids`` (all of them when there is none)."""
    end = next((at for at, token in enumerate(ids) if token in stop_ids), None)
    return ids if end is None else ids[: end + 1]


def strip_stop(ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    """A completion without its closing stop token."""
    return ids[:-1] if ids and ids[-1] in stop_ids else ids


def completion_text(tokenizer: PreTrainedTokenizerBase, completion: list[int], stop_ids: Sequence[int]) -> str:
    """A completion as text: without its closing stop token and special tokens."""
    return tokenizer.decode(strip_stop(completion, stop_ids), skip_special_tokens=True)


def answer_opening(tokenizer: PreTrainedTokenizerBase, turns: list[dict], answer: str, template: ChatTemplate,
                   where: str) -> str:
    """What ``template`` writes between the generation prompt after ``turns`` and ``answer``'s content (mostly
    nothing; Qwen3's empty ``<think>`` block), as ``completion_text`` shows it: without special tokens (gpt-oss's
    ``<|channel|>final<|message|>`` reads ``final``); ``where`` names the conversation in errors."""
    if not answer.strip():
        return ""
    rendered = assistant_turns(turns + [{"role": "assistant", "content": answer}], tokenizer, template, where)
    turn = rendered.turns[-1]
    written = tokenizer(rendered.text[turn.start:turn.content_start], add_special_tokens=False)[INPUT_IDS]
    return completion_text(tokenizer, written, ())


def without_opening(answer: str, opening: str) -> str:
    """``answer`` without ``opening`` and the whitespace after it (whitespace before it aside) when it starts with
    it."""
    opening, stripped = opening.strip(), answer.lstrip()
    return stripped[len(opening):].lstrip() if opening and stripped.startswith(opening) else answer


class CompletionGenerator(ABC):
    settings: SamplingSettings

    @abstractmethod
    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """One completion per prompt (see the module's docstring)."""

    @abstractmethod
    def load_weights(self, model: PreTrainedModel, sharded: bool = False) -> None:
        """Sample from ``model``'s current weights from now on (``sharded``: see the module's docstring)."""


class LinearTemperatureLogitsProcessor(LogitsProcessor):
    """Divides the scores by a temperature that moves linearly from ``start`` at the first sampled token
    to ``end`` at the ``length``-th (and stays there): ``T_i = start + (end - start) * min(i / (length - 1), 1)``
    for the i-th sampled token, i from 0. ``start == end`` is plain temperature sampling."""

    def __init__(self, start: float, end: float, length: int, prompt_length: int):
        self.start, self.end, self.length, self.prompt_length = start, end, length, prompt_length

    def temperature(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(step / max(self.length - 1, 1), 1.0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids [batch, prompt + sampled so far], scores [batch, vocab]
        return scores / self.temperature(input_ids.shape[-1] - self.prompt_length)


class VocabularyLogitsProcessor(LogitsProcessor):
    """Leaves only the first ``vocab_size`` ids to choose from (run before the temperature and top-p)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # scores [batch, vocab]
        beyond = torch.arange(scores.shape[-1], device=scores.device) >= self.vocab_size  # [vocab]
        return scores.masked_fill(beyond, -math.inf)


class FiniteScoresProcessor(LogitsProcessor):
    """Notes in ``outputs`` whether the next-token scores held NaN or +inf, and hands ``generate`` finite ones in their
    place (NaN and +inf as 0), so that sampling does not fail on them (a traceback; on a GPU a device-side assert)
    before the generator can say why in one line (run first)."""

    def __init__(self, outputs: NonFiniteOutputs, weights: torch.dtype):
        self.outputs, self.weights = outputs, weights

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # scores [batch, vocab]
        self.outputs.add(scores, self.weights)
        return scores.nan_to_num(nan=0.0, posinf=0.0, neginf=-math.inf)


def left_padded(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [prompts, longest], each prompt at the right end of its row."""
    longest = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)  # [prompts, longest]
    attention_mask = torch.zeros_like(input_ids)  # [prompts, longest]
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, longest - len(prompt):] = 1
    return input_ids, attention_mask


class HFGenerator(CompletionGenerator):
    """``model.generate`` on left-padded prompts, in eval mode (dropout off; gradient checkpointing, which only
    acts in training mode, leaves the KV cache on) under ``no_grad``; the model's mode is restored after. A hybrid
    model that kept no attention layer caches its recurrent states in a ``RecurrentStateCache`` (``cache_argument``).

    Completions hold only ids below ``vocab_size`` (None: any of the model's logit columns). Prompt and completion
    stay within ``max_length`` tokens (a run's sequence length; None: no bound) and the model's
    ``max_position_embeddings``: the batch decodes no more steps than its roomiest prompt can keep, and a
    prompt that leaves the model fewer positions than that is answered alone (a model with learned positions
    has none beyond its last: ``generate`` would fail on it), so no completion is cut for another's sake.

    A sharded model (``load_weights(model, sharded=True)``) gathers its layers as they run, so every process
    must run as many forwards: each ``generate`` is one call on every process, decoding until every process's
    prompts are done (``synced_gpus``), and no more steps than the prompt with the fewest positions left on any
    process allows (there, a prompt near the model's last position shortens the others' completions)."""

    def __init__(self, model: PreTrainedModel, settings: SamplingSettings, stop_ids: Sequence[int],
                 pad_token_id: int, max_length: Optional[int] = None, vocab_size: Optional[int] = None,
                 role: str = "model"):
        self.model, self.settings, self.max_length, self.vocab_size = model, settings, max_length, vocab_size
        self.stop_ids, self.pad_token_id = list(stop_ids), pad_token_id
        self.nonfinite = NonFiniteOutputs(role)  # the ``role`` names the model in its error
        self.sharded = False
        self._warned = False  # about the model's positions, once

    def load_weights(self, model: PreTrainedModel, sharded: bool = False) -> None:
        self.model, self.sharded = model, sharded

    def _sampling(self, prompt_length: int) -> dict:
        """``generate``'s arguments for the settings; its own warpers (temperature, top-p) run after the processors
        given, and skip temperature 1 and top-p 1."""
        settings = self.settings
        bounded = self.vocab_size is not None
        processors = LogitsProcessorList([FiniteScoresProcessor(self.nonfinite, self.model.dtype)]
                                         + ([VocabularyLogitsProcessor(self.vocab_size)] if bounded else []))
        if settings.temperature == 0:
            return {"do_sample": False, "logits_processor": processors}
        if settings.final_temperature is None:
            return {"do_sample": True, "temperature": settings.temperature, "top_k": 0, "top_p": settings.top_p,
                    "logits_processor": processors}
        processors += [
            LinearTemperatureLogitsProcessor(
                settings.temperature,
                settings.final_temperature,
                settings.max_new_tokens,
                prompt_length=prompt_length,
            ),
            TopPLogitsWarper(settings.top_p),
        ]
        # the processors above do the temperature and top-p, in that order
        return {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "logits_processor": processors}

    def _positions(self) -> Optional[int]:
        return getattr(self.model.config, "max_position_embeddings", None)

    def _room(self, prompt: list[int]) -> int:
        """The most tokens the completion of ``prompt`` may have."""
        bounds = [limit - len(prompt) for limit in (self.max_length, self._positions()) if limit is not None]
        return max(min([self.settings.max_new_tokens, *bounds]), 0)

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        rooms = [self._room(prompt) for prompt in prompts]
        positions, most = self._positions(), max(rooms)
        if not self._warned and positions is not None and any(
                positions - len(prompt) < self.settings.max_new_tokens for prompt in prompts):
            self._warned = True
            logger.warning(f"prompt + max_new_tokens ({self.settings.max_new_tokens}) goes beyond the model's "
                           f"{positions} positions: such completions stop at its last position")
        if self.sharded:
            return self._generate_together(prompts, rooms)
        tight = {row for row, prompt in enumerate(prompts)  # fewer positions left than the batch decodes
                 if positions is not None and positions - len(prompt) < most}
        groups = [[row for row in range(len(prompts)) if row not in tight]] + [[row] for row in sorted(tight)]
        completions: list[list[int]] = [[] for _ in prompts]
        for group in groups:
            steps = max((rooms[row] for row in group), default=0)
            if steps == 0:
                continue
            for row, completion in zip(group, self._generate([prompts[row] for row in group], steps)):
                completions[row] = cut_at_stop(completion, self.stop_ids)[: rooms[row]]
        return completions

    def _generate_together(self, prompts: list[list[int]], rooms: list[int]) -> list[list[int]]:
        """One call with every process (see the class's docstring)."""
        positions = self._positions()
        left = min(positions - len(prompt) for prompt in prompts) if positions is not None else max(rooms)
        device = next(self.model.parameters()).device
        bounds = torch.tensor([-max(rooms), left], device=device)  # [2]
        dist.all_reduce(bounds, op=dist.ReduceOp.MIN)
        steps = max(min(-int(bounds[0]), int(bounds[1])), 0)  # the same on every process
        if steps == 0:
            return [[] for _ in prompts]
        completions = self._generate(prompts, steps, synced=True)
        return [cut_at_stop(completion, self.stop_ids)[:room] for completion, room in zip(completions, rooms)]

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], max_new_tokens: int, synced: bool = False) -> list[list[int]]:
        """``max_new_tokens`` sampled ids per prompt (fewer when every row has ended; with ``synced``, when every
        row of every process has)."""
        model = self.model
        input_ids, attention_mask = left_padded(prompts, self.pad_token_id)  # [prompts, longest] each
        device = next(model.parameters()).device
        was_training, defaults = model.training, model.generation_config
        model.eval()
        # generate fills what it is not given from the model's generation config: a neutral one for the run, so
        # that only the settings shape the samples (no repetition penalty or top-k of the model's own), as the
        # vLLM back end's explicit sampling parameters do
        model.generation_config = GenerationConfig()
        try:
            generated = model.generate(
                input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                use_cache=True,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.stop_ids or None,
                synced_gpus=synced,
                **cache_argument(model),
                **self._sampling(input_ids.shape[1]),
            )  # [prompts, longest + <= max_new_tokens]
        finally:
            model.train(was_training)
            model.generation_config = defaults
        self._check_finite(synced)
        return generated[:, input_ids.shape[1]:].tolist()

    def _check_finite(self, synced: bool) -> None:
        """Refuse completions sampled from next-token logits that held NaN or +inf (on any process, ``synced``)."""
        nonfinite = self.nonfinite.take()
        if synced:
            processes = torch.tensor([float(nonfinite)], device=next(self.model.parameters()).device)
            dist.all_reduce(processes)
            nonfinite = processes.item() > 0
        if nonfinite:
            raise DistilyConfigError(self.nonfinite.message(f"the {self.nonfinite.role}'s next-token logits"))
