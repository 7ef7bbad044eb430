"""A small byte-level BPE tokenizer trained here, offline: for the tests, the demo teacher, the experiments
and the benchmarks, which need a tokenizer without downloading one."""

from __future__ import annotations

import json
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast


def train_byte_level_bpe(
    texts: Iterable[str],
    vocab_size: int,
    eos_token: str = "<|endoftext|>",
    *,
    bos: bool = True,
    pad: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE of ``vocab_size`` tokens (fewer if the text runs out of merges) trained
    on ``texts``, with ``eos_token`` as its one special token: the end-of-text token, also the
    beginning-of-text token when ``bos`` and the padding token when ``pad``. Every byte is in the
    vocabulary, so any text round-trips through encode and decode.

    Each item of ``texts`` is one training sequence. To train on a text file exactly as
    ``Tokenizer.train([path])`` does, pass the open file (``open(path, encoding="utf-8", newline="")``):
    its lines, line endings included."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos_token], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    settings = {"eos_token": eos_token}
    if bos:
        settings["bos_token"] = eos_token
    if pad:
        settings["pad_token"] = eos_token
    if model_max_length is not None:
        settings["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **settings)


def train_sentencepiece_bpe(
    texts: Iterable[str], vocab_size: int, *, model_max_length: int | None = None, prepend_scheme: str = "always"
) -> PreTrainedTokenizerFast:
    """A SentencePiece-style (Llama 2) BPE of ``vocab_size`` tokens trained on ``texts``: ``▁`` for the space,
    ``<0x..>`` byte fallback for characters it lacks (so any text round-trips), ``<s>`` (BOS) before every text,
    ``</s>`` (EOS) and ``<unk>``: conventions other than ``train_byte_level_bpe``'s, for cross-tokenizer runs.
    ``prepend_scheme`` (``always``, ``first``, ``never``): when ``▁`` is put before a text, as the Metaspace
    pre-tokenizer of ``tokenizers`` takes it (Llama 2 prepends it to every text)."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]  # ordinary pieces, as in Llama 2's vocabulary
    metaspace = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    pieces = Tokenizer(models.BPE())
    pieces.pre_tokenizer = metaspace
    pieces.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=max(vocab_size - len(specials) - 256, 1)))
    learned = json.loads(pieces.to_str())["model"]
    vocab = {token: index for index, token in enumerate(specials + byte_tokens)}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = metaspace
    tokenizer.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme=prepend_scheme), decoders.ByteFallback()])
    tokenizer.add_special_tokens(specials)
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    settings = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", **settings)
