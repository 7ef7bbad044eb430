"""Held-out quality of a model, alone and against its teacher: next-token loss and perplexity,
forward KL to the teacher and top-1 agreement, all averaged over non-padding tokens."""

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from distily.objectives.losses import forward_kl


@torch.no_grad()
def heldout_metrics(
    model: PreTrainedModel,
    dataset,
    collate_fn: Callable,
    batch_size: int = 8,
    teacher: Optional[PreTrainedModel] = None,
    vocab_size: Optional[int] = None,
    desc: str = "Evaluating",
) -> dict[str, float]:
    """``lm_loss`` (next-token cross-entropy, nats), ``perplexity``; with a teacher also ``kl_to_teacher``
    (forward KL(teacher || model) per position, nats) and ``top1_agreement`` (argmax match rate)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = {"nll": 0.0, "targets": 0, "kl": 0.0, "agree": 0.0, "positions": 0}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn), desc=desc, leave=False):
        input_ids = batch["input_ids"].to(device)  # [batch, seq]
        mask = batch["attention_mask"].to(device).bool()  # [batch, seq]
        logits = model(input_ids=input_ids, attention_mask=mask.long()).logits.float()  # [batch, seq, vocab]
        next_valid = mask[:, 1:] & mask[:, :-1]  # [batch, seq - 1]
        totals["nll"] += F.cross_entropy(
            logits[:, :-1][next_valid], input_ids[:, 1:][next_valid], reduction="sum"
        ).item()
        totals["targets"] += int(next_valid.sum())
        if teacher is not None:
            teacher_logits = teacher(input_ids=input_ids, attention_mask=mask.long()).logits.float()
            student_logits = logits[mask][:, :vocab_size]  # [tokens, vocab]
            teacher_logits = teacher_logits[mask][:, :vocab_size]  # [tokens, vocab]
            totals["kl"] += forward_kl(student_logits, teacher_logits).sum().item()
            totals["agree"] += (student_logits.argmax(-1) == teacher_logits.argmax(-1)).sum().item()
            totals["positions"] += int(mask.sum())
    model.train(was_training)
    loss = totals["nll"] / max(totals["targets"], 1)
    metrics = {"lm_loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    if teacher is not None:
        metrics["kl_to_teacher"] = totals["kl"] / max(totals["positions"], 1)
        metrics["top1_agreement"] = totals["agree"] / max(totals["positions"], 1)
    return metrics
