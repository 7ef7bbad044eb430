"""The disjointness check: eval sequences sharing a span of n tokens with the training data are caught."""

import random

import datasets
import pytest

from distily.data.framing import Framing
from distily.data.packing import tokenize_and_pack
from distily.errors import DistilyConfigError
from distily.evaluation.overlap import training_overlap
from distily.evaluation.perplexity import load_eval_set
from distily.metrics import OverlapCheck
from tiny import make_documents, write_jsonl


def sequences(rows):
    return datasets.Dataset.from_dict({"input_ids": rows}).with_format("torch")


def test_a_planted_span_of_n_tokens_is_caught_and_a_shorter_one_is_not():
    train = sequences([list(range(start, start + 32)) for start in range(0, 3200, 32)])
    fresh = list(range(10_000, 10_032))
    eval_sets = {
        "clean": sequences([fresh, fresh]),
        "planted": sequences([fresh[:19] + list(range(704, 717)), fresh]),  # 13 tokens of training sequence 22
        "near_miss": sequences([fresh[:20] + list(range(704, 716))]),  # only 12 tokens in common
        "across": sequences([fresh[:16] + list(range(696, 712))]),  # 16 in common, but split over two sequences
    }
    report = training_overlap(train, eval_sets, n=13, max_seq_length=32)
    assert report["clean"] == OverlapCheck(sequences=2, overlapping_sequences=0, ngram=13)
    assert report["planted"].overlapping_sequences == 1
    assert report["near_miss"].overlapping_sequences == 0
    assert report["across"].overlapping_sequences == 0  # the model never saw these tokens together
    assert training_overlap(train, eval_sets, n=12, max_seq_length=32)["near_miss"].overlapping_sequences == 1


def test_a_training_document_planted_in_an_eval_file_is_caught(tokenizer, tmp_path):
    documents = make_documents(80)
    train = tokenize_and_pack(datasets.Dataset.from_dict({"text": documents}), tokenizer,
                              Framing("stream", 32, eos_token_id=tokenizer.eos_token_id), "text", str(tmp_path))
    rng = random.Random(0)  # words outside the training grammar
    fresh = [" ".join(f"item{rng.randrange(10**6)} x{rng.randrange(99)}" for _ in range(40)) for _ in range(4)]
    spec = {"config": None, "split": "train", "text_column": "text", "max_samples": None}
    eval_sets = {
        name: load_eval_set(name, {**spec, "path": write_jsonl(tmp_path / f"{name}.jsonl", docs)}, tokenizer, 32,
                            str(tmp_path))
        for name, docs in (("clean", fresh), ("planted", fresh[:2] + [max(documents, key=len)] + fresh[2:]))
    }
    report = training_overlap(train, eval_sets, n=13, max_seq_length=32)
    assert report["clean"].overlapping_sequences == 0
    assert report["planted"].overlapping_sequences >= 1


def test_a_span_longer_than_the_sequences_is_refused():
    with pytest.raises(DistilyConfigError, match="eval_overlap_ngram=64 exceeds max_seq_length=32"):
        training_overlap(sequences([[1] * 32]), {"a": sequences([[1] * 32])}, n=64, max_seq_length=32)
