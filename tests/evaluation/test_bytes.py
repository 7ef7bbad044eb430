"""Bytes per token of byte-level BPE and SentencePiece tokenizers against the UTF-8 text they encode, and bits
per byte against a hand computation."""

import math

import pytest
import torch
from tokenizers import decoders

from distily.data.batches import collate
from distily.evaluation.bytes import (
    bits_per_byte,
    dataset_target_bytes,
    nats_per_byte,
    target_bytes,
    token_byte_lengths,
)
from tiny import make_sentencepiece_tokenizer, make_tokenizer

TEXTS = [
    "The cat sees a book today.",
    "naïve café, Straße, 東京, Ελληνικά",
    "emoji 😀🎉 and a ZWJ family 👩‍👩‍👧",
    "  two leading spaces,   three inside",
    "line one\nline two\n\n\tindented\r\nwindows",
    " ",
    "\n",
]


def spelled_bytes(tokenizer, ids) -> int:
    return int(token_byte_lengths(tokenizer)[ids].sum())


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bpe_tokens_spell_exactly_the_texts_bytes(text):
    tokenizer = make_tokenizer()
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]  # a special token spells nothing
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert spelled_bytes(tokenizer, ids) == len(text.encode("utf-8"))


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_tokens_spell_the_texts_bytes(text):
    """``▁`` is one space byte, ``<0xNN>`` one byte, ``<s>`` nothing. Without a prepended space the count is the
    text's bytes; with one (Llama 2) the space the tokenizer adds to a text that does not start with one counts
    too: it is the text the targets spell (the decoder drops it again)."""
    never, first = make_sentencepiece_tokenizer("never"), make_sentencepiece_tokenizer("first")
    ids = never(text)["input_ids"]
    assert ids[0] == never.bos_token_id  # BOS is no text
    assert spelled_bytes(never, ids) == len(text.encode("utf-8"))
    added_space = 0 if text.startswith(" ") else 1
    assert spelled_bytes(first, first(text)["input_ids"]) == len(text.encode("utf-8")) + added_space


def test_byte_fallback_and_special_tokens_have_their_lengths():
    tokenizer = make_sentencepiece_tokenizer()
    lengths = token_byte_lengths(tokenizer)
    assert lengths.shape == (len(tokenizer),) and lengths.dtype == torch.long
    for token, expected in (("<s>", 0), ("</s>", 0), ("<unk>", 5), ("<0x0A>", 1), ("<0xF0>", 1), ("▁", 1)):
        assert lengths[tokenizer.convert_tokens_to_ids(token)] == expected, token
    assert token_byte_lengths(tokenizer) is lengths  # computed once per tokenizer
    spelled = tokenizer.convert_ids_to_tokens(tokenizer(TEXTS[2])["input_ids"])
    assert "<0xF0>" in spelled and "▁a" in spelled  # the texts above go through byte fallback and pieces


def test_unknown_token_of_a_byte_fallback_tokenizer_spells_its_text():
    """WikiText-2 writes ``<unk>`` for rare words; a SentencePiece tokenizer reads those five characters as its
    unknown token (it spells any other character in bytes), a byte-level BPE as pieces: both count them."""
    text = "The <unk> sees a <unk> book."
    sentencepiece, byte_level = make_sentencepiece_tokenizer("never"), make_tokenizer()
    ids = sentencepiece(text)["input_ids"]
    assert ids.count(sentencepiece.unk_token_id) == 2
    assert spelled_bytes(sentencepiece, ids) == len(text.encode("utf-8"))
    assert spelled_bytes(byte_level, byte_level(text)["input_ids"]) == len(text.encode("utf-8"))


def test_target_bytes_count_the_predicted_tokens_only():
    """The first token of a sequence (and of each document under document masks) is no target; padding is none."""
    tokenizer = make_tokenizer()
    first, second = "The cat sees a book.", "A dog reads é."
    rows = [{"input_ids": tokenizer(text)["input_ids"]} for text in (first, second)]
    batch = collate(rows, pad_token_id=tokenizer.eos_token_id)
    lengths = token_byte_lengths(tokenizer)
    first_tokens = [ids["input_ids"][0] for ids in rows]
    expected = len((first + second).encode()) - int(lengths[first_tokens].sum())
    assert target_bytes(batch, lengths) == expected
    assert dataset_target_bytes(rows, collate, lengths, batch_size=1) == expected  # batching changes nothing


def test_bits_per_byte_is_the_summed_nll_in_bits_over_the_bytes():
    assert nats_per_byte(10 * math.log(2), 5) == pytest.approx(2 * math.log(2))
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    assert bits_per_byte(0.0, 0) == 0.0  # nothing measured: no division by zero


@pytest.mark.parametrize("decoder", [
    lambda: decoders.Metaspace(replacement="▁", prepend_scheme="first"),
    lambda: decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)]),
])
def test_any_sentencepiece_decoder_is_recognised(decoder):
    """Whether the decoder is a Metaspace, or a plain ``▁`` replacement without byte fallback, a piece spells
    ``▁`` as one space byte (not the three UTF-8 bytes of the character ``▁``)."""
    reference = make_sentencepiece_tokenizer()
    tokenizer = make_sentencepiece_tokenizer()
    tokenizer.backend_tokenizer.decoder = decoder()
    assert torch.equal(token_byte_lengths(tokenizer), token_byte_lengths(reference))
