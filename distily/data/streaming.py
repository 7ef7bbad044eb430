"""``dataset_streaming``: the rows a split's row range names (``train[:200000]``) read from a stream of the dataset
(``datasets``' ``streaming=True``), where ``load_dataset(..., split=...)`` downloads and converts every data file of
the split first, whatever slice it is asked for. The rows read are kept on disk (``streamed_cache_dir``) under a key
of what they are (``source``: a Hub dataset's id, subset and commit, or local files' bytes; and the row range), so
that a re-run or a resume reads them there, not from the stream again."""

import hashlib
import json
import logging
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import datasets
import huggingface_hub
from datasets.exceptions import DatasetGenerationError
from filelock import FileLock
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from tqdm.auto import tqdm

from distily.data.arguments import RowRange
from distily.data.tokenization_cache import cached_dataset
from distily.errors import DistilyConfigError
from distily.outputs import filesystem_errors
from distily.paths import distily_cache_dir

logger = logging.getLogger(__name__)

STREAMED_CACHE = "the streamed rows cache"


def streamed_cache_dir() -> str:
    """Where rows read from streams are kept: ``<HF_HOME>/distily/streamed``."""
    return distily_cache_dir("streamed")


def hub_dataset_commit(name: str) -> str:
    """The commit of the Hub dataset ``name``'s main branch: online its newest, offline the one this machine last saw
    (that of the dataset card ``datasets`` downloaded with it, in the Hub cache), found as ``datasets`` finds it."""
    try:
        card = huggingface_hub.hf_hub_download(name, "README.md", repo_type="dataset")
    except LocalEntryNotFoundError:  # offline, never seen: the caller reports it
        raise
    except EntryNotFoundError:  # a dataset without a card
        return huggingface_hub.HfApi().dataset_info(name).sha
    return Path(card).parent.name  # .../snapshots/<commit>/README.md


@contextmanager
def _datasets_progress_bars_off() -> Iterator[None]:
    """No ``datasets`` progress bar (its "Generating train split", of no total) while the block runs."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _read(stream: datasets.IterableDataset, rows: RowRange, where: str, key: str, scratch: str) -> datasets.Dataset:
    """``rows`` of ``stream`` written to an Arrow file under ``scratch`` as they arrive (with a progress bar); none
    is an error."""
    wanted = rows.stop - rows.start
    progress = tqdm(total=wanted, desc=f"Reading {where} {rows.split}[{rows.start}:{rows.stop}]", unit=" rows")
    ended = []  # whether the stream was read to its end

    def read_rows() -> Iterator[dict]:
        for row in stream.skip(rows.start).take(wanted):
            progress.update()
            yield row
        ended.append(True)

    try:
        with _datasets_progress_bars_off(), filesystem_errors(Path(scratch).parent, STREAMED_CACHE):  # a full cache
            read = datasets.Dataset.from_generator(read_rows, features=stream.features, cache_dir=scratch,
                                                   fingerprint=key)
    except (ValueError, DatasetGenerationError) as err:  # datasets writes no dataset of no rows
        if ended and progress.n == 0:
            raise DistilyConfigError(f"{where} split {rows.split!r} holds no row from row {rows.start} on; expected "
                                     "a row range within the split") from err
        raise
    finally:
        progress.close()
    return read


def _warn_if_short(read: datasets.Dataset, rows: RowRange, where: str) -> datasets.Dataset:
    """``read``, with a warning where the split ended before the range did (each time: also when read from the
    cache)."""
    wanted = rows.stop - rows.start
    if len(read) < wanted:
        logger.warning(f"{where} split {rows.split!r} ends at row {rows.start + len(read)}: {len(read)} rows read of "
                       f"the {wanted} of {rows.split}[{rows.start}:{rows.stop}]")
    return read


def streamed_rows(open_stream: Callable[[], datasets.IterableDataset], rows: RowRange, source: dict,
                  where: str) -> datasets.Dataset:
    """``rows`` of the stream ``open_stream()`` opens (only when they are not kept yet), kept under a key of
    ``source`` (what the data is) and ``rows``; ``where`` names the dataset in messages. Processes that ask for the
    same rows at once (a run's processes on one machine each load the documents) take turns: one reads them."""
    key = hashlib.sha256(json.dumps({**source, **asdict(rows)}, sort_keys=True).encode()).hexdigest()[:32]
    cache_dir = streamed_cache_dir()
    with ExitStack() as held:
        with filesystem_errors(cache_dir, STREAMED_CACHE):  # a cache another user owns, read-only or full
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            held.enter_context(FileLock(str(Path(cache_dir) / f".{key}.lock")))
            for killed in Path(cache_dir).glob(f".reading-{key}-*"):  # left by a read of these rows SIGKILLed
                shutil.rmtree(killed, ignore_errors=True)
            scratch = held.enter_context(tempfile.TemporaryDirectory(prefix=f".reading-{key}-", dir=cache_dir))
        read = cached_dataset(cache_dir, key, lambda: _read(open_stream(), rows, where, key, scratch), STREAMED_CACHE)
    return _warn_if_short(read, rows, where)
