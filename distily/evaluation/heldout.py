"""Held-out quality of a model, alone and against its teacher, on packed eval sets: next-token loss and
perplexity, bits per byte (given the model's tokenizer), forward KL to the teacher and top-1 agreement, each
averaged over the loss positions (``loss_positions``: non-padding tokens, only the assistant's for chat data;
bits per byte: over the bytes of the target tokens)."""

from typing import Callable, Optional, Protocol

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.evaluation.agreement import agreement_sums
from distily.evaluation.bytes import byte_metrics, target_bytes, token_byte_lengths
from distily.evaluation.perplexity import next_token_nll, perplexity
from distily.evaluation.token_chunks import TokenChunk, logit_rows, token_chunks
from distily.metrics import metric_key


def _loss_metrics(nll: float, targets: int, n_bytes: Optional[int] = None) -> dict[str, float]:
    """Loss and perplexity of a summed NLL over its targets; bits and nats per byte when their bytes are counted."""
    loss = nll / max(targets, 1)
    metrics = {"lm_loss": loss, "perplexity": perplexity(loss)}
    return metrics if n_bytes is None else {**metrics, **byte_metrics(nll, n_bytes)}


def _metrics(sums: dict[str, float], with_reference: bool) -> dict[str, float]:
    metrics = _loss_metrics(sums["nll"], sums["targets"], sums["bytes"])
    if with_reference:
        metrics["kl_to_teacher"] = sums["kl"] / max(sums["positions"], 1)
        metrics["top1_agreement"] = sums["agree"] / max(sums["positions"], 1)
    return metrics


def _byte_lengths(tokenizer: Optional[PreTrainedTokenizerBase]) -> Optional[torch.Tensor]:
    return None if tokenizer is None else token_byte_lengths(tokenizer)


def _add_bytes(sums: dict, batch: dict[str, torch.Tensor], byte_lengths: Optional[torch.Tensor],
               teacher_byte_lengths: Optional[torch.Tensor]) -> None:
    """Add the bytes the batch's targets spell by the model's tokenizer (``bytes``) and the teacher's
    (``teacher_bytes``), where each is known (the counts stay None otherwise)."""
    for key, lengths in (("bytes", byte_lengths), ("teacher_bytes", teacher_byte_lengths)):
        if lengths is not None:
            sums[key] += target_bytes(batch, lengths)


def compared_columns(vocab_size: Optional[int], tokenizer: Optional[PreTrainedTokenizerBase]) -> Optional[int]:
    """The logit columns KL and agreement compare: ``vocab_size`` when given (heads of different widths), else the
    tokenizer's ids (heads of one width may both have padding columns past them, which are no text), else all."""
    return vocab_size if vocab_size is not None or tokenizer is None else len(tokenizer)


def chunk_nll(logits: torch.Tensor, chunk: TokenChunk) -> float:
    """Summed next-token loss (nats) of a chunk's tokens that have a target, from their logits [n, vocab]."""
    return float(next_token_nll(logits[chunk.has_target], chunk.next_ids[chunk.has_target]))


class Reference(Protocol):
    """What a model is compared with, chunk by chunk: ``begin(batch)`` before a batch's chunks, then ``sums(logits,
    chunk)`` with the model's logits [n, vocab] of each chunk: ``kl``, ``agree`` and ``positions`` (and any other
    sum the walk keeps)."""

    def begin(self, batch: dict[str, torch.Tensor]) -> None: ...

    def sums(self, logits: torch.Tensor, chunk: TokenChunk) -> dict[str, float]: ...


class TeacherReference:
    """A live teacher: forward KL(teacher || model) and top-1 agreement over the first ``vocab_size`` columns (None:
    all), and the teacher's own next-token loss from the same logits."""

    def __init__(self, teacher: PreTrainedModel, vocab_size: Optional[int] = None):
        self.teacher, self.vocab_size = teacher, vocab_size

    def begin(self, batch):
        self.rows, self.columns = logit_rows(self.teacher, batch)

    def sums(self, logits, chunk):
        teacher_logits = self.rows(chunk.rows.to(self.rows.states.device), self.columns).to(logits.device)  # [n, V_t]
        kl, agree, positions = agreement_sums(logits, teacher_logits, self.vocab_size)
        return {"kl": kl, "agree": agree, "positions": positions, "teacher_nll": chunk_nll(teacher_logits, chunk)}


@torch.no_grad()
def _sums(
    model: PreTrainedModel,
    dataset,
    collate_fn: Callable,
    batch_size: int,
    reference: Optional[Reference],
    desc: str,
    chunk_size: Optional[int] = None,
    byte_lengths: Optional[torch.Tensor] = None,
    teacher_byte_lengths: Optional[torch.Tensor] = None,
) -> dict[str, float]:
    """Sums over the dataset: the model's next-token loss and targets; with a reference also its sums (KL and
    agreement, positions; a live teacher's own next-token loss, from the same pass, so it costs nothing more); the
    targets' bytes by each tokenizer given (``token_byte_lengths``). Every batch is read in token chunks
    (``token_chunks``): no [tokens, vocab] logits of either model are held."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = {"nll": 0.0, "targets": 0, "kl": 0.0, "agree": 0, "positions": 0, "teacher_nll": 0.0,
            "bytes": None if byte_lengths is None else 0, "teacher_bytes": None if teacher_byte_lengths is None else 0}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn), desc=desc, leave=False):
        batch = {key: value.to(device) for key, value in batch.items()}
        rows, columns = logit_rows(model, batch)
        if reference is not None:
            reference.begin(batch)
        for chunk in token_chunks(batch, columns, chunk_size):
            logits = rows(chunk.rows, columns)  # [n, vocab]
            sums["nll"] += chunk_nll(logits, chunk)
            sums["targets"] += int(chunk.has_target.sum())
            if reference is not None:
                for key, value in reference.sums(logits, chunk).items():
                    sums[key] += value
        _add_bytes(sums, batch, byte_lengths, teacher_byte_lengths)
    model.train(was_training)
    return sums


def heldout_metrics(
    model: PreTrainedModel,
    dataset,
    collate_fn: Callable,
    batch_size: int = 8,
    teacher: Optional[PreTrainedModel] = None,
    vocab_size: Optional[int] = None,
    desc: str = "Evaluating",
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    reference: Optional[Reference] = None,
    chunk_size: Optional[int] = None,
) -> dict[str, float]:
    """``lm_loss`` (next-token cross-entropy, nats), ``perplexity``; with the model's ``tokenizer`` also
    ``bits_per_byte`` and ``nats_per_byte`` (``distily.evaluation.bytes``); with a teacher (or another
    ``reference``) also ``kl_to_teacher`` (forward KL(teacher || model) per position, nats) and ``top1_agreement``
    (argmax match rate), over ``compared_columns``. ``chunk_size``: tokens per chunk (None: ``token_chunks``'s
    default)."""
    if teacher is not None:
        reference = TeacherReference(teacher, compared_columns(vocab_size, tokenizer))
    sums = _sums(model, dataset, collate_fn, batch_size, reference, desc, chunk_size, _byte_lengths(tokenizer))
    return _metrics(sums, reference is not None)


class Evaluator:
    """Called with the student at every evaluation: ``heldout_metrics`` on each eval set, keyed by
    ``metric_key``. The teacher's own loss and perplexity do not change, so they are computed once (in
    the first call's teacher pass) and kept in ``teacher_metrics()``. Bits per byte count the bytes of each
    model's targets by its own tokenizer: the student's ``tokenizer``, the teacher's ``teacher_tokenizer``
    (the student's when not given)."""

    def __init__(
        self,
        eval_sets: dict[str, datasets.Dataset],
        collate_fn: Callable,
        batch_size: int,
        teacher: Optional[PreTrainedModel] = None,
        vocab_size: Optional[int] = None,
        tokenizer: Optional[PreTrainedTokenizerBase] = None,
        teacher_tokenizer: Optional[PreTrainedTokenizerBase] = None,
    ):
        self.eval_sets = eval_sets
        self.collate_fn, self.batch_size = collate_fn, batch_size
        self.teacher, self.vocab_size = teacher, compared_columns(vocab_size, tokenizer)
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer or tokenizer
        self._teacher_metrics: dict[str, dict[str, float]] = {}

    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        metrics = {}
        byte_lengths = _byte_lengths(self.tokenizer)
        teacher_byte_lengths = _byte_lengths(self.teacher_tokenizer if self.teacher is not None else None)
        for name, dataset in self.eval_sets.items():
            reference = TeacherReference(self.teacher, self.vocab_size) if self.teacher is not None else None
            sums = _sums(model, dataset, self.collate_fn, self.batch_size, reference, f"Evaluating on {name}",
                         byte_lengths=byte_lengths, teacher_byte_lengths=teacher_byte_lengths)
            if self.teacher is not None:
                self._teacher_metrics.setdefault(
                    name, _loss_metrics(sums["teacher_nll"], sums["targets"], sums["teacher_bytes"])
                )
            found = _metrics(sums, self.teacher is not None)
            metrics.update({metric_key(name, metric): value for metric, value in found.items()})
        return metrics

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's ``lm_loss``, ``perplexity`` (and bits and nats per byte) on each eval set (keyed as
        ``__call__``'s); empty without a teacher."""
        if self.teacher is None:
            return {}
        for name, dataset in self.eval_sets.items():
            if name not in self._teacher_metrics:
                desc = f"Evaluating the teacher on {name}"
                self._teacher_metrics[name] = heldout_metrics(
                    self.teacher, dataset, self.collate_fn, self.batch_size, desc=desc, tokenizer=self.teacher_tokenizer
                )
        return {
            metric_key(name, metric): value
            for name, found in self._teacher_metrics.items()
            for metric, value in found.items()
        }
