"""Packed rows into the tensors of a batch: padded, with labels, loss masks and per-document positions."""

import datasets
import pyarrow.compute
import torch

from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS


def longest_row(rows: datasets.Dataset, column: str = INPUT_IDS) -> int:
    """The most tokens in one row of ``rows``' ``column``: the longest ``collate`` pads a batch to. Read in Arrow
    batches."""
    table = rows.with_format("arrow")
    lengths = (pyarrow.compute.max(pyarrow.compute.list_value_length(table[start:start + 4096][column])).as_py()
               for start in range(0, len(rows), 4096))
    return max((length or 0 for length in lengths), default=0)


def collate(features: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence; ``attention_mask`` marks real tokens, ``labels`` are -100 on padding, a
    row's ``loss_mask`` (chat data) is padded with 0.

    Blocks with document masks also carry ``position_ids`` (restarting at each document; padding counts
    as one more document), and a document's first token is no target of the token before it (-100), as
    when each document is run alone."""
    longest = max(len(f[INPUT_IDS]) for f in features)
    input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)  # [batch, seq]
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)  # [batch, seq]
    masked = POSITION_IDS in features[0]
    position_ids = torch.arange(longest).repeat(len(features), 1)  # [batch, seq]
    for row, feature in enumerate(features):
        ids = torch.as_tensor(feature[INPUT_IDS], dtype=torch.long)
        length = len(ids)
        input_ids[row, :length] = ids
        attention_mask[row, :length] = 1
        if masked:
            position_ids[row, :length] = torch.as_tensor(feature[POSITION_IDS], dtype=torch.long)
            position_ids[row, length:] = torch.arange(longest - length)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    batch = {INPUT_IDS: input_ids, "attention_mask": attention_mask, "labels": labels}
    if LOSS_MASK in features[0]:
        batch[LOSS_MASK] = torch.zeros_like(attention_mask)  # [batch, seq]
        for row, feature in enumerate(features):
            batch[LOSS_MASK][row, : len(feature[LOSS_MASK])] = torch.as_tensor(feature[LOSS_MASK], dtype=torch.long)
    if masked:
        labels[position_ids == 0] = -100  # a document's first token: nothing before it in its document
        batch[POSITION_IDS] = position_ids
    return batch


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int) -> dict:
    """prompt + completion per row, right-padded (``collate``), with ``loss_mask`` 1 at the positions that predict
    a completion token: ``len(prompt) - 1`` to ``len(prompt) + len(completion) - 2``."""
    batch = collate([{INPUT_IDS: prompt + completion} for prompt, completion in zip(prompts, completions)],
                    pad_token_id)
    loss_mask = torch.zeros_like(batch[INPUT_IDS])  # [batch, seq]
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        loss_mask[row, len(prompt) - 1: len(prompt) + len(completion) - 1] = 1
    batch[LOSS_MASK] = loss_mask
    return batch
