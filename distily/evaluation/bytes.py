"""Bits per byte: a model's next-token loss per UTF-8 byte of the text it predicted, the measure that compares
models whose tokenizers differ (perplexity is per token, and a token is a different amount of text in each).

    bits_per_byte = (sum of the target tokens' NLL in nats) / ln 2 / (UTF-8 bytes of the target tokens)

The bytes counted are those the predicted target tokens spell (``token_byte_lengths``): the text the targets
cover, as the tokenizer saw it. Special tokens (BOS, EOS, padding) spell nothing and count 0 bytes, though
predicting them costs NLL like any token; but the unknown token of a tokenizer with byte fallback (Llama 2's
``<unk>``) spells its own text: such a tokenizer spells any character in bytes, so it reads ``<unk>`` only where the
text holds those five characters (WikiText-2 does, thousands of times), and they count as the other tokenizers'
pieces of them do. For a SentencePiece tokenizer that adds a space before every text (Llama
1/2, Mistral: ``▁`` prepended), the first token of each document spells that space, so a document counts one byte
more than its raw UTF-8 text; the decoder drops that space again, but the model predicted it.
"""

import json
import math
import re
import weakref
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from distily.objectives.component import next_token_targets

SPACE_MARK = "▁"  # SentencePiece's (metaspace) spelling of a space
BYTE_FALLBACK_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte-fallback tokens: one byte each
_LENGTHS: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, torch.Tensor]" = weakref.WeakKeyDictionary()


def _decoder_spec(tokenizer: PreTrainedTokenizerBase) -> str:
    """The fast tokenizer's decoder as JSON text ('' for a tokenizer without a ``tokenizers`` backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.dumps(json.loads(backend.to_str()).get("decoder"), ensure_ascii=False) if backend is not None else ""


def _sentencepiece_bytes(token: str) -> int:
    """A SentencePiece piece: ``<0xNN>`` is one byte, ``▁`` a space, the rest its UTF-8 bytes."""
    return 1 if BYTE_FALLBACK_TOKEN.fullmatch(token) else len(token.replace(SPACE_MARK, " ").encode("utf-8"))


def _spelling_rule(tokenizer: PreTrainedTokenizerBase, vocab: list[str]) -> Callable[[str], int]:
    """How many bytes a vocabulary token (not an added token) spells, by the tokenizer's family."""
    decoder = _decoder_spec(tokenizer)
    if '"ByteLevel"' in decoder:
        return len  # byte-level BPE (GPT-2, Llama 3, Qwen): each character of a token stands for one byte
    if any(mark in decoder for mark in ('"Metaspace"', '"ByteFallback"', SPACE_MARK)) or (
        not decoder and any(SPACE_MARK in token for token in vocab)
    ):
        return _sentencepiece_bytes
    return lambda token: len(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))


def _unknown_as_text(tokenizer: PreTrainedTokenizerBase) -> Optional[int]:
    """The unknown token's id when the tokenizer falls back to bytes (then it is read only from its own text in the
    input, never for a character the tokenizer cannot spell), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    return tokenizer.unk_token_id if model.get("byte_fallback") else None


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """``[len(tokenizer)]`` int64: the UTF-8 bytes each token id adds to the text it decodes to. Byte-level BPE:
    the bytes its characters stand for; SentencePiece: ``▁`` one space byte, ``<0xNN>`` one byte; a special
    token 0, but a byte-fallback tokenizer's unknown token its content's bytes (``_unknown_as_text``); a
    non-special added token its content's bytes; an id with no token 0. Computed once per tokenizer (again when
    tokens were added to it since)."""
    if tokenizer not in _LENGTHS or len(_LENGTHS[tokenizer]) != len(tokenizer):
        size = len(tokenizer)
        vocab = tokenizer.convert_ids_to_tokens(list(range(size)))
        spelled = _spelling_rule(tokenizer, [token for token in vocab if token is not None])
        added, unknown = tokenizer.added_tokens_decoder, _unknown_as_text(tokenizer)
        lengths = [
            0 if token is None
            else (0 if added[index].special and index != unknown else len(added[index].content.encode("utf-8")))
            if index in added
            else spelled(token)
            for index, token in enumerate(vocab)
        ]
        _LENGTHS[tokenizer] = torch.tensor(lengths, dtype=torch.long)
    return _LENGTHS[tokenizer]


def target_bytes(batch: dict[str, torch.Tensor], byte_lengths: torch.Tensor) -> int:
    """UTF-8 bytes spelled by a batch's next-token targets (``next_token_targets``: the tokens whose NLL the
    held-out loss sums), ``byte_lengths`` from ``token_byte_lengths``."""
    targets = next_token_targets(batch)  # [batch, seq - 1]
    target_ids = batch["input_ids"][:, 1:][targets]  # [targets]
    return int(byte_lengths.to(target_ids.device)[target_ids].sum())


def nats_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Summed NLL (nats) over the UTF-8 bytes of the text it was measured on."""
    return nll_nats / max(n_bytes, 1)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Summed NLL (nats) over the UTF-8 bytes of the text it was measured on, in bits: ``nats_per_byte / ln 2``."""
    return nats_per_byte(nll_nats, n_bytes) / math.log(2)


def byte_metrics(nll_nats: float, n_bytes: int) -> dict[str, float]:
    """``bits_per_byte`` and ``nats_per_byte`` of a summed NLL over ``n_bytes``."""
    return {"bits_per_byte": bits_per_byte(nll_nats, n_bytes), "nats_per_byte": nats_per_byte(nll_nats, n_bytes)}


def dataset_target_bytes(dataset, collate_fn: Callable, byte_lengths: torch.Tensor, batch_size: int = 8) -> int:
    """``target_bytes`` summed over a dataset's batches (as ``collate_fn`` builds them); no model runs."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
    return sum(target_bytes(batch, byte_lengths) for batch in loader)
