"""The raw dataset a run reads: from the Hub, local files (``distily.data.local_files``) or a directory written by
``save_to_disk``, the split and slice ``dataset_split`` names; with ``dataset_streaming``, a Hub dataset's or local
files' rows read from a stream (``distily.data.streaming``)."""

import hashlib
import json
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Optional

import datasets
from huggingface_hub.errors import RepositoryNotFoundError

from distily.arguments import check_local_path_exists
from distily.data.arguments import DataArguments, RowRange, row_ranges
from distily.data.local_files import local_data_files
from distily.data.streaming import hub_dataset_commit, streamed_rows
from distily.data.text_files import load_text_files
from distily.errors import DistilyConfigError
from distily.logs import quieted
from distily.outputs import file_sha256


def _files_sha256(files: list[str]) -> str:
    """One sha256 over the bytes of ``files`` (about 400 MB a second)."""
    return hashlib.sha256("".join(f"{file_sha256(name)}\n" for name in files).encode()).hexdigest()


def _load_builder(builder: str, files: list[str]) -> datasets.Dataset:
    """``files`` read by the ``datasets`` builder ``builder``, under a configuration named by their bytes' sha256:
    ``datasets`` knows a local file by its path and mtime, so a file rewritten with its mtime kept
    (``tar -x``, ``cp -p``, a filesystem of whole-second mtimes) was read back from its cached Arrow copy, under the
    same fingerprint (so the tokenization cache's key too). The dataset's fingerprint is the builder's and the bytes'
    too: ``datasets`` would give it one of the files' mtimes, so the same file written again (copied back, a fresh
    checkout) read as other documents, and a store recorded on it was refused."""
    digest = _files_sha256(files)
    loaded = datasets.load_dataset(builder, name=f"sha256-{digest[:24]}", data_files=files, split="train")
    fingerprint = hashlib.sha256(f"{builder}:{digest}".encode()).hexdigest()[:16]
    return datasets.Dataset(loaded.data, info=loaded.info, split=loaded.split, fingerprint=fingerprint)


def _first_bad_json_line(files: list[str]) -> Optional[str]:
    """Where a JSON-lines file is not one JSON object per line: the file, line number and what is wrong."""
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    return f"data file {name!r} line {number} is not valid JSON ({err.msg}, column {err.colno})"
                if not isinstance(row, dict):
                    return f"data file {name!r} line {number} holds a JSON {type(row).__name__}"
    return None


@contextmanager
def _json_line_errors(files: list[str]) -> Iterator[None]:
    """A failure to read JSON or JSON-lines ``files`` as a ``DistilyConfigError`` naming the malformed line by file
    and line number, where one is."""
    try:  # the builder logs a parse error as it raises it, by row in a chunk
        with quieted("datasets.packaged_modules.json.json", logging.CRITICAL):
            yield
    except DistilyConfigError:
        raise
    except Exception:  # the builder's own error says neither file nor line
        bad = _first_bad_json_line([name for name in files if name.lower().endswith(".jsonl")])
        if bad is None:
            raise
        raise DistilyConfigError(f"{bad}; expected one JSON object per line, such as {{\"text\": \"...\"}}")


def _load_json_files(files: list[str]) -> datasets.Dataset:
    """JSON or JSON-lines files as a dataset; a malformed line is named by file and line number."""
    with _json_line_errors(files):
        return _load_builder("json", files)


def load_documents(args: DataArguments) -> datasets.Dataset:
    """The raw dataset: from the Hub, local files, or a directory written by ``save_to_disk``."""
    if args.dataset_name is None:
        raise DistilyConfigError("dataset_name is not set; expected a Hub dataset id or a local path")
    path = Path(os.path.expanduser(args.dataset_name))
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return _read_split(lambda name: _split(loaded, name, args), args)
        return _read_split(lambda name: loaded, args)
    if path.exists() and args.dataset_streaming:
        return _streamed(lambda rows: _streamed_local(path, rows, args), args)
    if path.exists():
        return _read_split(lambda name: _load_local(path, name, args), args)
    check_local_path_exists(args.dataset_name, "dataset_name")
    with _hub_errors(args.dataset_name):
        if args.dataset_streaming:
            commit = hub_dataset_commit(args.dataset_name)
            return _streamed(lambda rows: _streamed_hub(args, commit, rows), args)
        return datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)


@contextmanager
def _hub_errors(name: str) -> Iterator[None]:
    """A Hub dataset that cannot be reached, found or read as asked as a one-line ``DistilyConfigError``."""
    try:
        yield
    except DistilyConfigError:
        raise
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError,
            RepositoryNotFoundError) as err:
        raise DistilyConfigError(f"cannot load dataset {name!r}: {str(err).strip().splitlines()[0]}")
    except ValueError as err:  # unknown split or subset
        raise DistilyConfigError(f"dataset {name!r}: {str(err).strip().splitlines()[0]}")


def _streamed(read: Callable[[RowRange], datasets.Dataset], args: DataArguments) -> datasets.Dataset:
    """The row ranges ``dataset_split`` names (``row_ranges``), each read by ``read``, one after another."""
    parts = [read(rows) for rows in row_ranges(args.dataset_split, "dataset_split")]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _streamed_hub(args: DataArguments, commit: str, rows: RowRange) -> datasets.Dataset:
    """``rows`` of the Hub dataset ``dataset_name`` at ``commit``, read from a stream."""
    source = {"dataset": args.dataset_name, "config": args.dataset_config_name, "commit": commit}
    return streamed_rows(
        lambda: datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=rows.split, streaming=True,
                                      revision=commit),
        rows, source, repr(args.dataset_name),
    )


def _streamed_local(path: Path, rows: RowRange, args: DataArguments) -> datasets.Dataset:
    """``rows`` of a local file or data directory's split, read from a stream of its files (``.txt`` files are split
    into documents whole, as without streaming, then read as a stream)."""
    builder, files = local_data_files(path, rows.split)
    source = {"builder": builder, "files_sha256": _files_sha256(files)}
    if builder == "text":
        source["text_document_delimiter"] = args.text_document_delimiter
        return streamed_rows(lambda: load_text_files(files, args.text_document_delimiter).to_iterable_dataset(),
                             rows, source, repr(str(path)))
    with _json_line_errors(files) if builder == "json" else nullcontext():
        return streamed_rows(lambda: datasets.load_dataset(builder, data_files=files, split="train", streaming=True),
                             rows, source, repr(str(path)))


def _load_local(path: Path, split: str, args: DataArguments) -> datasets.Dataset:
    """The split ``split`` (a name, no slice) of a local file or data directory (``local_data_files``)."""
    builder, files = local_data_files(path, split)
    if builder == "text":
        return load_text_files(files, args.text_document_delimiter)
    if builder == "json":
        return _load_json_files(files)
    return _load_builder(builder, files)


def _read_split(load_split: Callable[[str], datasets.Dataset], args: DataArguments) -> datasets.Dataset:
    """``dataset_split`` of local data whose split ``name`` is ``load_split(name)``, read as ``datasets`` reads a Hub
    dataset's: ``train``, a slice (``train[:10%]``, ``train[-500:]``) or a sum of them (``train[:100]+test``)."""
    try:
        instruction = datasets.ReadInstruction.from_spec(args.dataset_split)
    except ValueError as err:
        raise DistilyConfigError(f"dataset_split={args.dataset_split!r} of {args.dataset_name!r}: {err}; expected a "
                                 "split such as train, train[:10%] or train[:1000]+test")
    names = dict.fromkeys(part.split("[")[0].strip() for part in args.dataset_split.split("+"))
    loaded = {name: load_split(name) for name in names}
    parts = []
    for part in instruction.to_absolute({name: len(dataset) for name, dataset in loaded.items()}):
        dataset = loaded[part.splitname]
        whole = (part.from_, part.to) == (0, len(dataset))
        parts.append(dataset if whole else dataset.select(range(part.from_, part.to)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _split(dataset_dict: datasets.DatasetDict, split: str, args: DataArguments) -> datasets.Dataset:
    if split not in dataset_dict:
        raise DistilyConfigError(
            f"dataset_split={split!r} is not in {args.dataset_name!r}; expected one of {', '.join(dataset_dict)}"
        )
    return dataset_dict[split]
