"""Are the eval sets disjoint from the training data? Checked by content, not assumed.

A sequence of an eval set *overlaps* when it shares a span of ``n`` consecutive tokens with a training
sequence (an n-gram test, as in the contamination analyses of GPT-3, Brown et al., 2020, App. C, which
used 13-grams). Spans are compared through 64-bit hashes: the eval sets' hashes are held in memory and
the training sequences are streamed past them, so the cost is one pass over the training tokens.
"""

import logging

import datasets
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tqdm.auto import tqdm

from distily.data.framing import INPUT_IDS
from distily.errors import DistilyConfigError
from distily.metrics import OverlapCheck

logger = logging.getLogger(__name__)

SCAN_BATCH = 256  # training sequences hashed at once


def ngram_hashes(token_ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of every span of ``n`` tokens: ``[..., length]`` ids -> ``[..., length - n + 1]`` uint64.

    The hash is ``sum_j (id_j + 1) * c_j mod 2**64`` with fixed random odd ``c_j``, so equal spans hash equal
    and different spans collide with probability about 2**-64.
    """
    if token_ids.shape[-1] < n:
        return np.empty((*token_ids.shape[:-1], 0), dtype=np.uint64)
    coefficients = np.random.default_rng(0).integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    windows = sliding_window_view(token_ids.astype(np.uint64) + np.uint64(1), n, axis=-1)  # [..., spans, n]
    with np.errstate(over="ignore"):  # wrapping arithmetic is the hash
        return (windows * coefficients).sum(-1, dtype=np.uint64)


def _batches(dataset):
    """Lists of token-id arrays, ``SCAN_BATCH`` sequences at a time, from a ``datasets.Dataset`` (read
    column-wise) or any map-style dataset of ``{"input_ids": ...}`` items."""
    if isinstance(dataset, datasets.Dataset):
        for batch in dataset.with_format("numpy").iter(batch_size=SCAN_BATCH):
            yield _rows(batch[INPUT_IDS])
        return
    for start in range(0, len(dataset), SCAN_BATCH):
        stop = min(start + SCAN_BATCH, len(dataset))
        yield [np.asarray(dataset[index][INPUT_IDS])[None] for index in range(start, stop)]


def _sequences(dataset, n: int) -> list[np.ndarray]:
    """The n-gram hashes of each sequence of a (small) dataset, one array per sequence."""
    return [hashes for rows in _batches(dataset) for block in rows for hashes in ngram_hashes(block, n)]


def training_overlap(train, eval_sets: dict, n: int, max_seq_length: int) -> dict[str, OverlapCheck]:
    """For each eval set: ``sequences``, ``overlapping_sequences`` (those sharing an ``n``-token span with a
    training sequence) and ``ngram``. Logs a warning for each set with an overlap. The datasets hold
    ``input_ids`` sequences of at most ``max_seq_length`` tokens (a ``datasets.Dataset`` or a map-style
    torch dataset)."""
    if n > max_seq_length:
        raise DistilyConfigError(
            f"eval_overlap_ngram={n} exceeds max_seq_length={max_seq_length}; expected at most {max_seq_length}, or 0 "
            "to skip the check"
        )
    hashes = {name: _sequences(dataset, n) for name, dataset in eval_sets.items()}
    wanted = np.unique(np.concatenate([h for per_set in hashes.values() for h in per_set] or [np.empty(0, np.uint64)]))
    shared = _found_in_training(train, wanted, n) if len(wanted) else wanted
    report = {}
    for name, per_sequence in hashes.items():
        overlapping = sum(bool(np.isin(h, shared).any()) for h in per_sequence)
        report[name] = OverlapCheck(sequences=len(per_sequence), overlapping_sequences=overlapping, ngram=n)
        if overlapping:
            logger.warning(
                "eval set %r: %d of %d sequences share a %d-token span with the training data",
                name, overlapping, len(per_sequence), n,
            )
    return report


def _found_in_training(train, wanted: np.ndarray, n: int) -> np.ndarray:
    """The hashes of ``wanted`` (sorted, unique, not empty) that some training sequence holds."""
    found = []
    progress = tqdm(
        _batches(train), total=-(-len(train) // SCAN_BATCH), desc="Checking eval sets against the training data"
    )
    for rows in progress:
        for ids in rows:
            spans = ngram_hashes(ids, n).ravel()  # [rows * spans]
            nearest = wanted[np.minimum(np.searchsorted(wanted, spans), len(wanted) - 1)]  # [rows * spans]
            found.append(spans[nearest == spans])
    return np.unique(np.concatenate(found or [np.empty(0, np.uint64)]))


def _rows(input_ids) -> list[np.ndarray]:
    """A batch of sequences as 2-D arrays: the whole batch when its sequences are equally long (packed
    blocks), else one row each."""
    if isinstance(input_ids, np.ndarray) and input_ids.dtype != object:
        return [input_ids]
    return [np.asarray(ids)[None] for ids in input_ids]
