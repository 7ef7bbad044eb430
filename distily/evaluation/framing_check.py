"""The guard on framing: the teacher's held-out loss on blocks as packed against the same documents each run
alone, framed the way the tokenizer frames a text. Packing that hurts the teacher (a BOS-anchored model fed
blocks that start mid-document, a model trained on whole texts fed EOS where line breaks were) shows up as
a packed loss well above the document-aligned one."""

import logging
from typing import Callable, Optional

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.framing import INPUT_IDS, Framing
from distily.data.packing import tokenize_documents
from distily.evaluation.heldout import heldout_metrics
from distily.metrics import FramingMetrics

logger = logging.getLogger(__name__)

CHECK_BLOCKS = 8  # held-out tokens looked at: about this many blocks' worth
CHECK_MAX_DOCUMENTS = 256
TOLERANCE = 0.05  # a packed loss more than 5% above the document-aligned one is reported


def _sample(documents: list[list[int]], tokens: int) -> list[list[int]]:
    """The first documents, until they hold ``tokens`` tokens (at most CHECK_MAX_DOCUMENTS)."""
    taken, total = [], 0
    for ids in documents[:CHECK_MAX_DOCUMENTS]:
        taken.append(ids)
        total += len(ids)
        if total >= tokens:
            break
    return taken


def check_framing(
    teacher: PreTrainedModel,
    eval_documents: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    framing: Framing,
    text_column: str,
    collate_fn: Callable,
    batch_size: int,
) -> Optional[FramingMetrics]:
    """The packing and the teacher's loss packed and by document on a few held-out documents
    (None when they fill no block); warns in one line when packing makes the teacher more than 5% worse."""
    subset = eval_documents.select(range(min(CHECK_MAX_DOCUMENTS, len(eval_documents))))
    tokenized = tokenize_documents(subset, tokenizer, text_column)[INPUT_IDS]
    documents = _sample([list(ids) for ids in tokenized], CHECK_BLOCKS * framing.max_seq_length)
    packed = framing.pack(documents)
    blocks = [dict(zip(packed, row)) for row in zip(*packed.values())]
    aligned = [{INPUT_IDS: ids[: framing.max_seq_length]} for ids in documents if len(ids) > 1]
    if not blocks or not aligned:
        return None
    measure = dict(collate_fn=collate_fn, batch_size=batch_size, desc="Checking the framing")
    packed_loss = heldout_metrics(teacher, blocks, **measure)["lm_loss"]
    aligned_loss = heldout_metrics(teacher, aligned, **measure)["lm_loss"]
    if packed_loss > (1 + TOLERANCE) * aligned_loss:
        # padded: each document alone, as documents, for a model that ignores restarting positions too
        better = "documents or padded" if framing.packing != "documents" else "stream"
        logger.warning(
            f"packing={framing.packing} makes the teacher's held-out loss {packed_loss:.3f} nats against "
            f"{aligned_loss:.3f} on the same documents run alone (+{packed_loss / aligned_loss - 1:.0%}); "
            f"expected packing={better} (or a text_document_delimiter that matches how the teacher was trained)"
        )
    return FramingMetrics(framing.packing, teacher_lm_loss_packed=packed_loss, teacher_lm_loss_documents=aligned_loss)
