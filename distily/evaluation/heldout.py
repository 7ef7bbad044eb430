"""Held-out quality of a model, alone and against its teacher, on packed eval sets: next-token loss and
perplexity, bits per byte (given the model's tokenizer), forward KL to the teacher and top-1 agreement, each
averaged over the loss positions (``loss_positions``: non-padding tokens, only the assistant's for chat data;
bits per byte: over the bytes of the target tokens)."""

from typing import Callable, Optional

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.framing import model_inputs
from distily.evaluation.agreement import agreement_sums
from distily.evaluation.bytes import byte_metrics, target_bytes, token_byte_lengths
from distily.evaluation.perplexity import batch_next_token_nll, perplexity
from distily.metrics import metric_key
from distily.objectives.component import loss_positions


def _loss_metrics(nll: float, targets: int, n_bytes: Optional[int] = None) -> dict[str, float]:
    """Loss and perplexity of a summed NLL over its targets; bits and nats per byte when their bytes are counted."""
    loss = nll / max(targets, 1)
    metrics = {"lm_loss": loss, "perplexity": perplexity(loss)}
    return metrics if n_bytes is None else {**metrics, **byte_metrics(nll, n_bytes)}


def _metrics(sums: dict[str, float], with_teacher: bool) -> dict[str, float]:
    metrics = _loss_metrics(sums["nll"], sums["targets"], sums["bytes"])
    if with_teacher:
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


@torch.no_grad()
def _sums(
    model: PreTrainedModel,
    dataset,
    collate_fn: Callable,
    batch_size: int,
    teacher: Optional[PreTrainedModel],
    vocab_size: Optional[int],
    desc: str,
    byte_lengths: Optional[torch.Tensor] = None,
    teacher_byte_lengths: Optional[torch.Tensor] = None,
) -> dict[str, float]:
    """Sums over the dataset: the model's next-token loss and targets; with a teacher also the KL and agreement
    sums, positions, and the teacher's own next-token loss (same forward pass, so it costs nothing more); the
    targets' bytes by each tokenizer given (``token_byte_lengths``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = {"nll": 0.0, "targets": 0, "kl": 0.0, "agree": 0, "positions": 0, "teacher_nll": 0.0,
            "bytes": None if byte_lengths is None else 0, "teacher_bytes": None if teacher_byte_lengths is None else 0}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn), desc=desc, leave=False):
        batch = {key: value.to(device) for key, value in batch.items()}
        mask = loss_positions(batch)  # [batch, seq]
        logits = model(**model_inputs(batch)).logits  # [batch, seq, vocab]
        nll, targets = batch_next_token_nll(logits, batch)
        sums["nll"] += nll
        sums["targets"] += targets
        _add_bytes(sums, batch, byte_lengths, teacher_byte_lengths)
        if teacher is not None:
            teacher_logits = teacher(**model_inputs(batch)).logits.to(device)
            kl, agree, positions = agreement_sums(logits, teacher_logits, mask, vocab_size)
            sums["kl"] += kl
            sums["agree"] += agree
            sums["positions"] += positions
            sums["teacher_nll"] += batch_next_token_nll(teacher_logits, batch)[0]
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
) -> dict[str, float]:
    """``lm_loss`` (next-token cross-entropy, nats), ``perplexity``; with the model's ``tokenizer`` also
    ``bits_per_byte`` and ``nats_per_byte`` (``distily.evaluation.bytes``); with a teacher also ``kl_to_teacher``
    (forward KL(teacher || model) per position, nats) and ``top1_agreement`` (argmax match rate)."""
    sums = _sums(model, dataset, collate_fn, batch_size, teacher, vocab_size, desc, _byte_lengths(tokenizer))
    return _metrics(sums, teacher is not None)


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
        self.teacher, self.vocab_size = teacher, vocab_size
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer or tokenizer
        self._teacher_metrics: dict[str, dict[str, float]] = {}

    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        metrics = {}
        byte_lengths = _byte_lengths(self.tokenizer)
        teacher_byte_lengths = _byte_lengths(self.teacher_tokenizer if self.teacher is not None else None)
        for name, dataset in self.eval_sets.items():
            sums = _sums(
                model, dataset, self.collate_fn, self.batch_size, self.teacher, self.vocab_size,
                f"Evaluating on {name}", byte_lengths, teacher_byte_lengths,
            )
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
