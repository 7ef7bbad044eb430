"""Every evaluation reads the models in token chunks with their LM heads applied per chunk: the numbers equal
those of the full logits, and no model's LM head module ever runs on a whole batch."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.data.batches import collate
from distily.data.store import TAIL_LOGPROB, TOPK_IDS, TOPK_LOGPROBS
from distily.evaluation.heldout import Evaluator, heldout_metrics
from distily.objectives.losses import forward_kl
from distily.objectives.sparse import bucket_logprobs
from distily.recording.targets import sparse_targets
from distily.teachers.recorded import StoreReference
from tiny import make_tokenizer, tiny_config

VOCAB = 320
LENGTHS = [12, 7, 12, 3, 9]  # padded in batches of two


def _model(arch: str, seed: int, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, layers=2, **overrides)).eval()


def _rows():
    generator = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(VOCAB, (length,), generator=generator)} for length in LENGTHS]


def _full_logits_reference(model, teacher, rows, batch_size, vocab_size=None):
    """The evaluation as it was written on full logits: every batch's [batch, seq, vocab] logits of both models."""
    nll = kl = teacher_nll = 0.0
    targets = agree = positions = 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        valid = mask[:, :-1] & mask[:, 1:]
        following = batch["input_ids"][:, 1:][valid]
        nll -= logits[:, :-1][valid].log_softmax(-1).gather(-1, following[:, None]).double().sum().item()
        teacher_nll -= (teacher_logits[:, :-1][valid].log_softmax(-1).gather(-1, following[:, None])
                        .double().sum().item())
        targets += int(valid.sum())
        student_rows, teacher_rows = logits[mask][:, :vocab_size], teacher_logits[mask][:, :vocab_size]
        kl += forward_kl(student_rows, teacher_rows).sum().item()
        agree += int((student_rows.argmax(-1) == teacher_rows.argmax(-1)).sum())
        positions += int(mask.sum())
    return {"lm_loss": nll / targets, "kl_to_teacher": kl / positions, "top1_agreement": agree / positions,
            "teacher_lm_loss": teacher_nll / targets}


def _count_head_calls(*models) -> list[int]:
    calls = [0]
    for model in models:
        model.get_output_embeddings().register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("student_arch,teacher_arch", [("llama", "qwen2"), ("gpt2", "llama")])
def test_heldout_metrics_in_chunks_equal_the_full_logits(student_arch, teacher_arch):
    # the teacher's vocabulary has 16 padding rows more: both are cut to the shared 320 columns
    student, teacher = _model(student_arch, 0), _model(teacher_arch, 1, vocab_size=VOCAB + 16)
    rows = _rows()
    expected = _full_logits_reference(student, teacher, rows, 2, VOCAB)
    calls = _count_head_calls(student, teacher)
    for chunk_size in (None, 5):  # one chunk per batch; chunks that split sequences and batches
        metrics = heldout_metrics(student, rows, collate, batch_size=2, teacher=teacher, vocab_size=VOCAB,
                                  chunk_size=chunk_size)
        for key in ("lm_loss", "kl_to_teacher", "top1_agreement"):
            assert metrics[key] == pytest.approx(expected[key], rel=1e-5), key
        assert metrics["perplexity"] == pytest.approx(math.exp(expected["lm_loss"]), rel=1e-5)
    assert calls == [0]  # the LM heads were applied chunk by chunk, never as modules on a whole batch
    evaluator = Evaluator({"heldout": rows}, collate, 2, teacher, VOCAB)
    evaluator(student)
    assert evaluator.teacher_metrics()["lm_loss"] == pytest.approx(expected["teacher_lm_loss"], rel=1e-5)


def test_heads_of_one_width_are_compared_over_the_tokenizers_ids_only():
    """Both heads have 64 padding columns past the tokenizer's 320 ids (one width: the objective cuts nothing,
    vocab_size None). Those columns are no text, but they counted in KL and agreement: KL 10.48 against 2.56 over
    the tokenizer's ids, agreement 0.023 against 0 here (their rows scaled by 3); 2.59 against 2.56 unscaled."""
    student, teacher = _model("llama", 0, vocab_size=VOCAB + 64), _model("llama", 1, vocab_size=VOCAB + 64)
    with torch.no_grad():
        for model in (student, teacher):
            model.lm_head.weight[VOCAB:] *= 3
    tokenizer, rows = make_tokenizer(), _rows()
    assert len(tokenizer) == VOCAB
    expected = _full_logits_reference(student, teacher, rows, 2, VOCAB)
    by_set = Evaluator({"heldout": rows}, collate, 2, teacher, None, tokenizer)(student)
    alone = heldout_metrics(student, rows, collate, batch_size=2, teacher=teacher, tokenizer=tokenizer)
    for metrics in (by_set, alone):
        for key in ("kl_to_teacher", "top1_agreement"):
            assert metrics[key] == pytest.approx(expected[key], rel=1e-5), key
        assert metrics["lm_loss"] == pytest.approx(expected["lm_loss"], rel=1e-5)  # the model's own: every column


def test_a_model_with_a_transformed_head_is_read_from_its_full_logits():
    """Scaled logits are not a plain linear head: the model runs whole, and the numbers still match."""
    student = _model("llama", 0)
    teacher = _model("llama", 1)
    teacher.config.logits_scaling = 2.0  # not read by Llama's forward, but marks the head as not plain
    rows = _rows()
    expected = _full_logits_reference(student, teacher, rows, 2)
    calls = _count_head_calls(teacher)
    metrics = heldout_metrics(student, rows, collate, batch_size=2, teacher=teacher, chunk_size=4)
    assert metrics["kl_to_teacher"] == pytest.approx(expected["kl_to_teacher"], rel=1e-5)
    assert calls[0] == 3  # one full forward per batch


def _store_collate(rows, k):
    """Batches as ``collate_recorded`` gives them: the tokens and a store's targets for each position."""
    batch = collate(rows)
    generator = torch.Generator().manual_seed(5)
    teacher_logits = torch.randn(*batch["input_ids"].shape, VOCAB, generator=generator) * 3
    top, ids, tail = sparse_targets(teacher_logits.flatten(0, 1), k, 1.0)
    shape = batch["input_ids"].shape
    batch.update({TOPK_LOGPROBS: top.half().view(*shape, k), TOPK_IDS: ids.view(*shape, k),
                  TAIL_LOGPROB: tail.view(shape)})
    return batch


def test_store_metrics_in_chunks_equal_the_full_logits():
    student, k = _model("llama", 0), 8
    rows = _rows()
    calls = _count_head_calls(student)
    metrics = heldout_metrics(student, rows, lambda batch: _store_collate(batch, k), batch_size=2,
                              reference=StoreReference(1.0), chunk_size=4)
    assert calls == [0]
    kl = agree = positions = 0
    for start in range(0, len(rows), 2):
        batch = _store_collate(rows[start : start + 2], k)
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
        buckets = bucket_logprobs(logits, batch[TOPK_LOGPROBS][mask], batch[TOPK_IDS][mask], batch[TAIL_LOGPROB][mask],
                                  1.0)
        kl += forward_kl(*buckets).sum().item()
        agree += int((logits.argmax(-1) == batch[TOPK_IDS][mask][:, 0]).sum())
        positions += int(mask.sum())
    assert metrics["kl_to_teacher"] == pytest.approx(kl / positions, rel=1e-5)
    assert metrics["top1_agreement"] == pytest.approx(agree / positions)
