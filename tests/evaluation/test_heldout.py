"""Perplexity and agreement of tiny bigram models against values worked out by hand."""

import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from torch import nn
from transformers import PreTrainedTokenizerFast

from distily.data.batches import collate
from distily.evaluation.heldout import Evaluator, heldout_metrics

# Next-token distributions p(. | current token) over a vocabulary of 3; rows sum to 1.
STUDENT = [[1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 2, 1 / 4], [1 / 8, 1 / 8, 3 / 4]]  # argmax 0, 1, 2
TEACHER = [[1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 4, 1 / 2]]  # argmax 1, 1, 2
# Two sequences; the second is padded (with id 0, which would change every number if it counted).
SEQUENCES = [[0, 1, 2, 1], [2, 2]]


class BigramLM(nn.Module):
    """logits[b, t] = log p(. | input_ids[b, t]): a model whose every number is known."""

    def __init__(self, probabilities):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(probabilities).log())
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])  # [batch, seq, vocab]


def dataset():
    return [{"input_ids": torch.tensor(ids)} for ids in SEQUENCES]


# By hand. Targets (pairs of real tokens): 0->1, 1->2, 2->1 in the first sequence, 2->2 in the second.
STUDENT_NLL = (math.log(4) + math.log(4) + math.log(8) + math.log(4 / 3)) / 4
TEACHER_NLL = (math.log(2) + math.log(4) + math.log(4) + math.log(2)) / 4
# KL(teacher row || student row) for current token 0, 1, 2:
#   0: 1/4 ln(1/2) + 1/2 ln 2 + 0 = ln(2)/4;  1: 0;  2: 1/4 ln 2 + 1/4 ln 2 + 1/2 ln(2/3) = ln(4/3)/2.
# Positions: tokens 0, 1, 2, 1 and 2, 2 (six; padding excluded).
KL = (math.log(2) / 4 + 0 + math.log(4 / 3) / 2 + 0 + math.log(4 / 3) / 2 + math.log(4 / 3) / 2) / 6
# Argmaxes agree for current tokens 1 and 2, not 0: five of the six positions.
AGREEMENT = 5 / 6


def byte_level_tokenizer(tokens: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer whose token ``i`` is ``tokens[i]`` (``Ġ`` is its spelling of a space byte)."""
    backend = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)}, merges=[]))
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


# Tokens 0, 1, 2 spell 1, 2 and 3 bytes ("a", " b", "  c"); the targets 1, 2, 1, 2 spell 10 bytes.
STUDENT_TOKENS, TARGET_BYTES = ["a", "Ġb", "ĠĠc"], 10


def test_perplexity_and_agreement_of_a_tiny_model_match_hand_computed_values():
    metrics = heldout_metrics(BigramLM(STUDENT), dataset(), collate, batch_size=2, teacher=BigramLM(TEACHER))
    assert metrics["lm_loss"] == pytest.approx(STUDENT_NLL, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(STUDENT_NLL), rel=1e-6)
    assert metrics["kl_to_teacher"] == pytest.approx(KL, rel=1e-6)
    assert metrics["top1_agreement"] == pytest.approx(AGREEMENT)
    one_at_a_time = heldout_metrics(BigramLM(STUDENT), dataset(), collate, batch_size=1, teacher=BigramLM(TEACHER))
    assert one_at_a_time == pytest.approx(metrics)  # sums over batches, one division: batching changes nothing


def test_evaluator_names_each_set_and_computes_the_teacher_metrics_once():
    student, teacher = BigramLM(STUDENT), BigramLM(TEACHER)
    evaluator = Evaluator({"heldout": dataset(), "recent": dataset()}, collate, batch_size=2, teacher=teacher)
    for _ in range(2):
        metrics = evaluator(student)
    assert metrics["perplexity"] == pytest.approx(math.exp(STUDENT_NLL), rel=1e-6)
    assert metrics["recent_kl_to_teacher"] == pytest.approx(KL, rel=1e-6)
    assert metrics["recent_top1_agreement"] == pytest.approx(AGREEMENT)
    calls = teacher.calls
    teacher_metrics = evaluator.teacher_metrics()
    assert teacher.calls == calls  # kept from the first evaluation's teacher pass
    assert teacher_metrics["perplexity"] == pytest.approx(2**1.5, rel=1e-6)  # exp(1.5 ln 2)
    assert teacher_metrics["recent_lm_loss"] == pytest.approx(TEACHER_NLL, rel=1e-6)


def test_bits_per_byte_are_the_summed_nll_in_bits_over_the_targets_bytes():
    metrics = heldout_metrics(BigramLM(STUDENT), dataset(), collate, batch_size=2,
                              tokenizer=byte_level_tokenizer(STUDENT_TOKENS))
    assert metrics["bits_per_byte"] == pytest.approx(4 * STUDENT_NLL / math.log(2) / TARGET_BYTES, rel=1e-6)
    assert metrics["nats_per_byte"] == pytest.approx(4 * STUDENT_NLL / TARGET_BYTES, rel=1e-6)
    assert "bits_per_byte" not in heldout_metrics(BigramLM(STUDENT), dataset(), collate)  # no tokenizer, no bytes


def test_teacher_and_student_bytes_are_counted_by_each_ones_tokenizer():
    """A teacher whose tokens spell one byte each: its 4 targets are 4 bytes, the student's 10."""
    teacher = BigramLM(TEACHER)
    evaluator = Evaluator({"heldout": dataset()}, collate, batch_size=2, teacher=teacher,
                          tokenizer=byte_level_tokenizer(STUDENT_TOKENS),
                          teacher_tokenizer=byte_level_tokenizer(["a", "b", "c"]))
    metrics = evaluator(BigramLM(STUDENT))
    assert metrics["bits_per_byte"] == pytest.approx(4 * STUDENT_NLL / math.log(2) / TARGET_BYTES, rel=1e-6)
    teacher_metrics = evaluator.teacher_metrics()
    assert teacher_metrics["bits_per_byte"] == pytest.approx(4 * TEACHER_NLL / math.log(2) / 4, rel=1e-6)
    alone = Evaluator({"heldout": dataset()}, collate, 2, teacher, tokenizer=byte_level_tokenizer(["a", "b", "c"]))
    assert alone.teacher_metrics() == pytest.approx(teacher_metrics)  # its own pass gives the same numbers
