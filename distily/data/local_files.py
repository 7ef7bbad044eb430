"""Which local files hold a split's documents: a file, or a directory's data files (hidden ones skipped) of the split
their names give, each checked to hold rows before ``datasets`` reads it."""

import logging
import os
from pathlib import Path
from typing import Optional

import datasets
import pyarrow
import pyarrow.parquet

from distily.errors import DistilyConfigError

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def is_hidden(file: Path, root: Path) -> bool:
    """Whether ``file`` is hidden under the dataset folder ``root``: a part of its path there starts with ``.`` or
    ``__`` (``.ipynb_checkpoints/`` copies, macOS ``._x.jsonl`` resource forks, ``__pycache__/``), the files
    ``datasets.load_dataset(folder)`` skips too; read, they would duplicate documents across train and eval."""
    return any(part.startswith((".", "__")) for part in file.relative_to(root).parts)


def _data_files(path: Path) -> list[Path]:
    """The data files under a local path: the file itself, or a directory's files of a kind ``FILE_BUILDERS`` reads
    (hidden ones skipped)."""
    found = sorted(p for p in path.rglob("*") if p.is_file() and not is_hidden(p, path)) if path.is_dir() else [path]
    files = [file for file in found if file.suffix.lower() in FILE_BUILDERS]
    if not files and not path.is_dir():
        raise DistilyConfigError(
            f"dataset_name={str(path)!r} is a {path.suffix or 'suffix-less'} file, which Distily does not read; "
            f"expected a {', '.join(FILE_BUILDERS)} file, a directory of them or one written by save_to_disk"
        )
    if not files:
        raise DistilyConfigError(
            f"dataset_name={str(path)!r} holds no data files; expected {', '.join(FILE_BUILDERS)} files (hidden "
            "ones, under a name starting with . or __, are skipped)"
        )
    return files


def _files_by_split(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    """A data directory's ``files`` by the split their names give, by ``datasets``' data-directory convention (file or
    folder names ``train*``, ``test*``/``eval*``, ``validation*``/``valid*``/``dev*``, or shards
    ``{split}-00000-of-00002``), as ``datasets.load_dataset(directory)`` splits them; empty when no name gives one."""
    try:
        patterns = datasets.data_files.get_data_patterns(str(root))
    except datasets.data_files.EmptyDatasetError:
        return {}
    if patterns == datasets.data_files.DEFAULT_PATTERNS_ALL:  # {"train": ["**"]}: no name gives a split
        return {}
    real = {os.path.realpath(file): file for file in files}
    by_split = {}
    for split, split_patterns in patterns.items():
        matched = datasets.data_files.DataFilesList.from_patterns(split_patterns, base_path=str(root))
        kept = [real[name] for name in sorted({os.path.realpath(name) for name in matched}) if name in real]
        if kept:
            by_split[str(split)] = kept
    return by_split


def _split_files(root: Path, files: list[Path], split: str) -> list[Path]:
    """The files of the data directory ``root`` that hold ``split``; every file when no name gives a split (all read
    as ``train``, as a single file is). A split the names do not give is an error naming those they give; files
    that give none beside files that do are not read (``datasets`` skips them too), with a warning."""
    by_split = _files_by_split(root, files)
    if not by_split:
        return files
    if split not in by_split:
        raise DistilyConfigError(
            f"{str(root)!r} has no split {split!r}; expected one of {', '.join(by_split)} (the splits its file names "
            "give)"
        )
    named = {file for split_files in by_split.values() for file in split_files}
    unnamed = [str(file) for file in files if file not in named]
    if unnamed:
        logger.warning(f"{len(unnamed)} data files under {str(root)!r} name no split ({unnamed[0]}, ...) beside "
                       f"files that do ({', '.join(by_split)}): they are not read")
    return by_split[split]


def local_data_files(path: Path, split: str) -> tuple[str, list[str]]:
    """The ``datasets`` builder and the files of a local path's ``split`` (``_split_files``)."""
    files = _data_files(path)
    if path.is_dir():
        files = _split_files(path, files, split)
    groups: dict[str, list[str]] = {}
    for file in files:
        groups.setdefault(FILE_BUILDERS[file.suffix.lower()], []).append(str(file))
    if len(groups) > 1:
        raise DistilyConfigError(
            f"dataset_name={str(path)!r} mixes file kinds ({', '.join(groups)}); expected one kind of file"
        )
    ((builder, names),) = groups.items()
    for name in names:
        problem = _without_rows(builder, name)
        if problem is not None:
            raise DistilyConfigError(f"data file {name!r} {problem}")
    return builder, names


def _holds_no_json(name: str) -> bool:
    """Whether a JSON or JSON-lines file holds nothing but whitespace, or an empty JSON array (read up to its third
    character that is not whitespace)."""
    seen = ""
    with open(name, encoding="utf-8", errors="replace") as text:
        for chunk in iter(lambda: text.read(4096), ""):
            seen += "".join(chunk.split())
            if len(seen) > 2:
                return False
    return seen in ("", "[]")


def _without_rows(builder: str, name: str) -> Optional[str]:
    """Why the data file ``name``, read by ``builder``, gives no document (None: it may): it is empty, a JSON file of
    nothing but whitespace or ``[]``, or a parquet file that is not one or has no rows (``datasets`` fails on each
    with its own error naming no file, or on an empty file only when it is read first)."""
    if os.path.getsize(name) == 0:
        return "is empty (0 bytes); expected documents in it"
    if builder == "json" and _holds_no_json(name):
        return "holds no rows (only whitespace or []); expected documents in it"
    if builder != "parquet":
        return None
    try:
        rows = pyarrow.parquet.read_metadata(name).num_rows
    except (pyarrow.ArrowException, OSError) as err:
        return f"is not a parquet file ({str(err).splitlines()[0]}); expected a parquet file of documents"
    return "holds no rows; expected documents in it" if rows == 0 else None
