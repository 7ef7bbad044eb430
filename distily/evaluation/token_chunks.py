"""What every evaluation reads, chunk by chunk: a model's logits for a few of a batch's tokens at a time.

The model's decoder runs without its LM head (as the trainer runs the teacher, ``teachers/live.py``) and the
head is applied to one chunk of tokens at a time, as the training loss does (``objectives/chunked.py``), so no
evaluation holds a ``[tokens, vocab]`` tensor of a model, let alone of two. A model whose logits are not a plain
linear head of its last hidden state (``plain_lm_head``), or whose weights are sharded across processes, returns
its full logits instead, read chunk by chunk.
"""

from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from distily.data.framing import model_inputs
from distily.models.architecture import decoder_of, plain_lm_head
from distily.objectives.chunked import LOSS_CHUNK_ELEMENTS, LogitRows
from distily.objectives.component import loss_positions, next_token_targets


def _sharded(weight: torch.Tensor) -> bool:
    """Whether ``weight`` holds only this process's slice (FSDP2's DTensor, DeepSpeed ZeRO-3's partition)."""
    return hasattr(weight, "device_mesh") or hasattr(weight, "ds_id")


def fused_head(model: nn.Module) -> Optional[nn.Linear]:
    """The LM head to apply chunk by chunk, or None when the model's full logits must be computed instead."""
    if not isinstance(model, PreTrainedModel) or not plain_lm_head(model):
        return None
    head = model.get_output_embeddings()
    return None if _sharded(head.weight) else head


def logit_rows(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[LogitRows, int]:
    """(the model's logits for any rows of the batch's flattened ``[batch * seq]`` tokens, its vocabulary size)."""
    head = fused_head(model)
    if head is None:
        logits = model(**model_inputs(batch)).logits  # [batch, seq, vocab]
        return LogitRows(logits.flatten(0, 1), None, None), logits.shape[-1]
    states = decoder_of(model)(**model_inputs(batch)).last_hidden_state  # [batch, seq, hidden], final norm applied
    return LogitRows(states.flatten(0, 1), head.weight, head.bias), head.weight.shape[0]


@dataclass
class TokenChunk:
    """Some of a batch's loss positions: their rows in the flattened ``[batch * seq]`` tokens, whether each has a
    next-token target (``next_token_targets``) and the id of that next token (any id where it has none)."""

    rows: torch.Tensor  # [n] int64
    has_target: torch.Tensor  # [n] bool
    next_ids: torch.Tensor  # [n] int64


def token_chunks(batch: dict[str, torch.Tensor], vocab_size: int,
                 chunk_size: Optional[int] = None) -> Iterator[TokenChunk]:
    """The batch's loss positions (``loss_positions``: the non-padding tokens; for chat data the assistant's) in
    chunks of ``chunk_size`` (None: ``LOSS_CHUNK_ELEMENTS / vocab_size``, the training loss's slice, so each chunk's
    fp32 logits stay within one of its blocks)."""
    chunk_size = chunk_size or max(1, LOSS_CHUNK_ELEMENTS // vocab_size)
    has_target = F.pad(next_token_targets(batch), (0, 1)).flatten()  # [batch * seq]: none at the last position
    next_ids = F.pad(batch["input_ids"][:, 1:], (0, 1)).flatten()  # [batch * seq]
    rows = loss_positions(batch).flatten().nonzero().squeeze(-1)  # [n counted]
    for start in range(0, rows.numel(), chunk_size):
        chunk = rows[start : start + chunk_size]
        yield TokenChunk(chunk, has_target[chunk], next_ids[chunk])
