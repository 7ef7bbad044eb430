"""The offline byte-level BPE: any text round-trips, the requested size, its one special token's roles."""

import pytest

from distily.data.tokenizer import train_byte_level_bpe
from tiny import make_documents

TEXTS = make_documents(200, seed=1)


@pytest.fixture(scope="module")
def bpe():
    return train_byte_level_bpe(TEXTS, 300, pad=True)


@pytest.mark.parametrize("text", [
    TEXTS[0],
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Non-ASCII never seen in training: café, naïve, Grüße, 東京, Привет, 🙂",
    "the end of text <|endoftext|> inside",
])
def test_decode_encode_round_trips(bpe, text):
    ids = bpe.encode(text, add_special_tokens=False)
    assert bpe.decode(ids) == text


def test_has_the_requested_vocab_size(bpe):
    assert len(bpe) == 300
    assert len(bpe.get_vocab()) == 300


def test_vocab_is_smaller_when_the_text_runs_out_of_merges():
    small = train_byte_level_bpe(["abab abab"] * 4, 1000)
    assert 257 < len(small) < 1000  # 256 bytes, the special token and a few merges


def test_the_special_token_is_eos_bos_and_pad(bpe):
    eos_id = bpe.convert_tokens_to_ids("<|endoftext|>")
    assert bpe.eos_token == "<|endoftext|>"
    assert bpe.eos_token_id == bpe.bos_token_id == bpe.pad_token_id == eos_id
    assert bpe.encode("one<|endoftext|>two", add_special_tokens=False).count(eos_id) == 1


def test_roles_and_length_are_options():
    bpe = train_byte_level_bpe(TEXTS, 300, "<eos>", bos=False, model_max_length=64)
    assert bpe.eos_token == "<eos>" and bpe.eos_token_id == bpe.convert_tokens_to_ids("<eos>")
    assert bpe.bos_token is None and bpe.pad_token is None
    assert bpe.model_max_length == 64
