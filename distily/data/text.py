"""Text in, packed token sequences out: load, split by document, tokenize, pack, cache."""

import errno
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import datasets
import pyarrow.compute
import pyarrow.parquet
import torch
from transformers import PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.chat import (
    MESSAGES,
    ChatTokenization,
    chat_format,
    conversations,
    run_chat_template,
    tokenize_conversations,
)
from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS, Framing
from distily.data.splits import split_documents
from distily.errors import DistilyConfigError
from distily.logs import quieted
from distily.outputs import file_sha256, filesystem_errors
from distily.paths import distily_cache_dir, looks_like_local_path

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# text_document_delimiter's named values; anything else is a regular expression that starts a document
BLANK_LINE, LINE, FILE = "blank_line", "line", "file"
BLANK_LINES = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")  # one or more blank (or whitespace-only) lines
LINE_BREAK = re.compile(r"\r?\n")  # a record's end in a ``line`` file: not str.splitlines' \x0c, \x85, \u2028...
BOM = "\ufeff"  # what a UTF-8 file may open with (Windows editors write it): no text of its first document


def split_text(text: str, delimiter: str) -> list[str]:
    """A text file's documents, line breaks kept inside each: split at blank lines (``blank_line``), one per
    line (``line``), the whole file (``file``), or before each match of a regular expression (multi-line
    mode, e.g. WikiText's article headings ``^ = [^=]``). A line ends at ``\n`` or ``\r\n`` only: a form feed or a
    Unicode line separator inside a record stays in it."""
    if delimiter == FILE:
        return [text]
    if delimiter == LINE:
        lines = LINE_BREAK.split(text)
        return lines[:-1] if lines[-1] == "" else lines  # the file's final line break ends a line, opens none
    if delimiter == BLANK_LINE:
        return BLANK_LINES.split(text)
    try:
        starts = re.compile(delimiter, re.MULTILINE)
    except re.error as err:
        raise DistilyConfigError(
            f"text_document_delimiter={delimiter!r} is not a regular expression ({err}); expected blank_line, line, "
            "file or a regular expression"
        )
    cuts = sorted({match.start() for match in starts.finditer(text)} | {0, len(text)})
    return [text[begin:end] for begin, end in zip(cuts, cuts[1:])]


def _read_text(path: str) -> str:
    """A UTF-8 file's text, without the byte-order mark it may open with (decoded whole as UTF-8 first, so a bad
    byte's offset counts from the file's start)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as err:
        raise DistilyConfigError(f"{path!r} is not UTF-8 at byte {err.start}; expected UTF-8 text")


def load_text_files(files: list[str], delimiter: str) -> datasets.Dataset:
    """``.txt`` files as a ``text`` column of documents (``split_text``), their line breaks kept."""
    documents = [document for path in files for document in split_text(_read_text(path), delimiter)]
    return datasets.Dataset.from_dict({"text": documents})


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


def _local_files(path: Path, split: str) -> tuple[str, list[str]]:
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


def _load_builder(builder: str, files: list[str]) -> datasets.Dataset:
    """``files`` read by the ``datasets`` builder ``builder``, under a configuration named by their bytes' sha256:
    ``datasets`` knows a local file by its path and mtime, so a file rewritten with its mtime kept
    (``tar -x``, ``cp -p``, a filesystem of whole-second mtimes) was read back from its cached Arrow copy, under the
    same fingerprint (so the tokenization cache's key too). Hashing reads about 400 MB a second."""
    digest = hashlib.sha256("".join(f"{file_sha256(name)}\n" for name in files).encode())
    return datasets.load_dataset(builder, name=f"sha256-{digest.hexdigest()[:24]}", data_files=files, split="train")


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


def _load_json_files(files: list[str]) -> datasets.Dataset:
    """JSON or JSON-lines files as a dataset; a malformed line is named by file and line number."""
    try:  # the builder logs a parse error as it raises it, by row in a chunk
        with quieted("datasets.packaged_modules.json.json", logging.CRITICAL):
            return _load_builder("json", files)
    except Exception:  # the builder's own error says neither file nor line
        bad = _first_bad_json_line([name for name in files if name.lower().endswith(".jsonl")])
        if bad is None:
            raise
        raise DistilyConfigError(f"{bad}; expected one JSON object per line, such as {{\"text\": \"...\"}}")


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
    if path.exists():
        return _read_split(lambda name: _load_local(path, name, args), args)
    if looks_like_local_path(args.dataset_name):
        raise DistilyConfigError(
            f"dataset_name={args.dataset_name!r} does not exist; expected an existing local path or a Hub id"
        )
    try:
        loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        reason = str(err).strip().splitlines()[0]
        raise DistilyConfigError(f"cannot load dataset {args.dataset_name!r}: {reason}")
    except ValueError as err:  # unknown split or subset
        raise DistilyConfigError(f"dataset {args.dataset_name!r}: {str(err).strip().splitlines()[0]}")
    return loaded


def _load_local(path: Path, split: str, args: DataArguments) -> datasets.Dataset:
    """The split ``split`` (a name, no slice) of a local file or data directory (``_local_files``)."""
    builder, files = _local_files(path, split)
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


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of what the tokenizer does: its class, vocabulary, special tokens, its backend's pipeline and
    whether it reads special tokens' text as plain text (``split_special_tokens``, a setting of its
    ``tokenizer_config.json`` kept out of the backend's; in the hash only when set, so other hashes stay as they
    were)."""
    content = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content["backend"] = backend.to_str()
    if getattr(tokenizer, "split_special_tokens", False):
        content["split_special_tokens"] = True
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenize_batch(batch, tokenizer, text_column):
    """Token ids of each document with the tokenizer's own special tokens (BOS where it adds one); no warning for a
    document longer than the model takes (the packing cuts it)."""
    return {INPUT_IDS: tokenizer(batch[text_column], verbose=False)[INPUT_IDS]}


def _pack_batch(batch, framing: Framing):
    return framing.pack(batch[INPUT_IDS], batch.get(LOSS_MASK))


def tokenize_documents(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, text_column: str,
                       num_proc: Optional[int] = None, chat: Optional[ChatTokenization] = None) -> datasets.Dataset:
    """Each document's token ids (``input_ids``); pre-tokenized rows as they are; conversations through the chat
    template (``chat``), with their ``loss_mask``."""
    if INPUT_IDS in documents.column_names:
        return documents
    if MESSAGES in documents.column_names and chat is None:
        raise DistilyConfigError("chat data (a messages column) is read as the training dataset only; expected text")
    tokenize, settings = (_tokenize_batch, {"text_column": text_column}) if chat is None else (
        tokenize_conversations, {"chat": chat})
    return documents.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=documents.column_names,
        fn_kwargs={"tokenizer": tokenizer, **settings},
        desc="Tokenizing",
    )


def data_framing(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                 packing: str) -> Framing:
    """The framing of ``documents`` (``packing`` resolved for this tokenizer and kind of data). Conversations stay
    whole and apart: one per row (``padded``, what ``auto`` gives them, for any model) or best-fit with document
    masks (``documents``, for models that keep packed documents apart)."""
    if MESSAGES in documents.column_names:
        if packing not in ("auto", "padded", "documents"):
            raise DistilyConfigError(
                f"packing={packing!r} would let conversations attend to each other or cut them; expected padded, "
                "documents or auto for chat data"
            )
        packing = "padded" if packing == "auto" else packing
    return Framing.for_tokenizer(packing, tokenizer, max_seq_length, pretokenized=INPUT_IDS in documents.column_names)


def chat_tokenization(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, args: DataArguments,
                      max_seq_length: int) -> Optional[ChatTokenization]:
    """How ``documents`` are tokenized when they are conversations (None for text or token ids)."""
    if MESSAGES not in documents.column_names:
        return None
    template = run_chat_template(tokenizer, args.chat_template, args.chat_template_kwargs,
                                 date=args.chat_template_date)
    return ChatTokenization(template, args.loss_on, max_seq_length)


def tokenize_and_pack(
    documents: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    framing: Framing,
    text_column: str,
    cache_dir: str,
    num_proc: Optional[int] = None,
    chat: Optional[ChatTokenization] = None,
) -> datasets.Dataset:
    """Blocks of at most ``framing.max_seq_length`` token ids (conversations tokenized by ``chat``), cached by
    (data, tokenizer, framing, chat tokenization) so a second run with the same inputs reads the cache instead
    of tokenizing again."""
    identity = f"{documents._fingerprint}|{tokenizer_fingerprint(tokenizer)}|{framing}|{text_column}"
    key = hashlib.sha256(f"{identity}|{chat}".encode() if chat is not None else identity.encode()).hexdigest()[:24]

    def build() -> datasets.Dataset:
        tokenized = tokenize_documents(documents, tokenizer, text_column, num_proc, chat)
        if framing.in_order:
            return _packed_in_order(tokenized, framing, key)
        return tokenized.map(
            _pack_batch,
            batched=True,
            batch_size=1000,
            num_proc=num_proc,
            remove_columns=tokenized.column_names,
            fn_kwargs={"framing": framing},
            desc=f"Packing into {framing.max_seq_length}-token blocks ({framing.packing})",
        )

    return cached_dataset(cache_dir, key, build)


def _packed_in_order(tokenized: datasets.Dataset, framing: Framing, fingerprint: str) -> datasets.Dataset:
    """``stream`` or ``bos_blocks`` blocks (``Framing.in_order``) of all of ``tokenized``'s documents as one run:
    only its last partial block is dropped (packed batch by batch, each batch would drop its own). Read and written
    a batch at a time, so memory holds one; the rows are written under ``fingerprint`` (the cache key)."""
    documents = (ids for batch in tokenized.iter(batch_size=1000) for ids in batch[INPUT_IDS])
    rows = framing.rows_in_order(documents)
    first = next(rows, None)
    columns = [INPUT_IDS] + ([POSITION_IDS] if framing.document_masks else [])
    features = datasets.Features({name: datasets.List(datasets.Value("int64")) for name in columns})
    if first is None:  # from_generator refuses a generator of no rows
        return datasets.Dataset.from_dict({name: [] for name in columns}, features=features)
    return datasets.Dataset.from_generator(lambda: itertools.chain([first], rows), features=features,
                                           fingerprint=fingerprint)


def cached_dataset(cache_dir: str, key: str, build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """The dataset cached under ``cache_dir/key``, built by ``build()`` and saved there when absent (an empty
    one is returned uncached: nothing worth caching, the caller reports it)."""
    cached = Path(cache_dir) / key
    if not (cached / "dataset_info.json").exists():
        built = build()
        if len(built) == 0:
            return built
        _save_entry(built, cached)
    return datasets.load_from_disk(str(cached))


def _save_entry(built: datasets.Dataset, cached: Path) -> None:
    """``built`` saved beside ``cached``, then renamed to it whole (a crash never leaves an entry that looks
    complete), never over an entry there: processes sharing the cache that build the same entry at once all read the
    first one in (the others hold the same rows), which is never moved or deleted under its readers."""
    with filesystem_errors(cached, "the tokenization cache"):
        cached.parent.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    try:
        with filesystem_errors(cached, "the tokenization cache"):  # diagnosed before the workspace is removed
            built.save_to_disk(str(workspace / "entry"))
            _rename_entry(workspace / "entry", cached)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _rename_entry(staging: Path, cached: Path) -> None:
    """Rename the saved entry ``staging`` to ``cached`` unless another process's entry is there already."""
    try:
        os.rename(staging, cached)  # fails onto a directory that holds anything
    except OSError as err:
        if (cached / "dataset_info.json").exists():
            return
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise DistilyConfigError(f"tokenization cache entry '{cached}' is not a saved dataset (no dataset_info.json); "
                                 "expected it removed (Distily writes none such)")


def default_cache_dir() -> str:
    """Where tokenized datasets are cached unless ``tokenization_cache_dir`` says otherwise."""
    return distily_cache_dir("tokenized")


@dataclass
class DistillationData:
    train: datasets.Dataset
    eval: datasets.Dataset
    max_seq_length: int
    framing: Optional[Framing] = None  # how the blocks were built (None: a store's rows)
    eval_documents: Optional[datasets.Dataset] = None  # the held-out documents before packing
    loss_on: Optional[str] = None  # chat data: the tokens the losses count (assistant | all); None: text
    packed_rows: dict[str, int] = field(default_factory=dict)  # each split's rows before max_(eval_)samples


def documents_with_content(documents: datasets.Dataset, args: DataArguments) -> datasets.Dataset:
    """The rows with text (or token ids) in them, reduced to that one column; chat data as checked
    conversations (``distily.data.chat``)."""
    chat = chat_format(documents.column_names, args)
    if chat is not None:
        return conversations(documents, chat, args)
    if INPUT_IDS in documents.column_names:
        return documents.select_columns([INPUT_IDS]).filter(len, input_columns=INPUT_IDS, desc="Dropping empty rows")
    if args.dataset_text_column not in documents.column_names:
        raise DistilyConfigError(
            f"dataset_text_column={args.dataset_text_column!r} is not a column of {args.dataset_name!r}; expected one "
            f"of {', '.join(documents.column_names)} (or an input_ids column)"
        )
    feature = documents.features[args.dataset_text_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DistilyConfigError(
            f"dataset_text_column={args.dataset_text_column!r} of {args.dataset_name!r} is not text (datasets reads it "
            f"as {feature}); expected a string in every row"
        )
    return documents.select_columns([args.dataset_text_column]).filter(
        lambda text: bool(text and text.strip()), input_columns=args.dataset_text_column, desc="Dropping empty rows"
    )


def _ids_outside(documents: datasets.Dataset, limit: int) -> Optional[tuple[int, int]]:
    """The first (row, id) of ``documents``' input_ids outside 0..limit-1, or None; read in Arrow batches."""
    table = documents.with_format("arrow")
    for start in range(0, len(documents), 4096):
        batch = table[start:start + 4096][INPUT_IDS]
        low, high = pyarrow.compute.min_max(pyarrow.compute.list_flatten(batch)).values()
        if (low.as_py() is None or low.as_py() >= 0) and (high.as_py() is None or high.as_py() < limit):
            continue
        for row, ids in enumerate(batch.to_pylist(), start=start):
            bad = next((token for token in ids or [] if not 0 <= token < limit), None)
            if bad is not None:
                return row, bad
    return None


def longest_row(rows: datasets.Dataset, column: str = INPUT_IDS) -> int:
    """The most tokens in one row of ``rows``' ``column``: the longest ``collate`` pads a batch to. Read in Arrow
    batches."""
    table = rows.with_format("arrow")
    lengths = (pyarrow.compute.max(pyarrow.compute.list_value_length(table[start:start + 4096][column])).as_py()
               for start in range(0, len(rows), 4096))
    return max((length or 0 for length in lengths), default=0)


def check_token_ids(documents: datasets.Dataset, limit: int, args: DataArguments) -> None:
    """Pre-tokenized rows hold only ids the models have rows for, 0..limit-1 (else a step fails with an index
    error deep inside the embedding, on a GPU as a device-side assert); the row is counted in the dataset as
    given, empty rows included."""
    if INPUT_IDS not in documents.column_names or _ids_outside(documents, limit) is None:
        return
    row, token = _ids_outside(load_documents(args).select_columns([INPUT_IDS]), limit)  # rows as given
    raise DistilyConfigError(
        f"dataset {args.dataset_name!r} row {row} (counting from 0) holds token id {token}; expected ids in "
        f"0..{limit - 1} (the models' vocabulary)"
    )


def load_training_documents(args: DataArguments) -> datasets.Dataset:
    """The non-empty documents (text or token ids) to distill on; fails fast on a bad dataset."""
    documents = documents_with_content(load_documents(args), args)
    if len(documents) < 2:
        raise DistilyConfigError(
            f"dataset {args.dataset_name!r} has {len(documents)} non-empty documents after filtering; "
            "expected at least 2 (one to train on, one to evaluate)"
        )
    return documents


def conversations_in(blocks: datasets.Dataset) -> int:
    """How many conversations packed ``blocks`` hold: one a row, or under document masks one per position 0."""
    if POSITION_IDS not in blocks.column_names:
        return len(blocks)
    positions = pyarrow.compute.list_flatten(blocks.with_format("arrow")[POSITION_IDS])
    return pyarrow.compute.sum(pyarrow.compute.equal(positions, 0)).as_py()


def no_conversation_left(args: DataArguments, split: str, max_seq_length: int) -> DistilyConfigError:
    """The error for a split whose conversations the cut to ``max_seq_length`` tokens all dropped."""
    more = f" or a larger eval_fraction (now {args.eval_fraction})" if split == "eval" else ""
    return DistilyConfigError(
        f"dataset {args.dataset_name!r} gives no {split} conversation with an assistant token in its first "
        f"{max_seq_length} tokens (the turns before each first answer fill them); expected a larger "
        f"max_seq_length{more}"
    )


def warn_dropped_conversations(given: int, kept: int, split: str, max_seq_length: int) -> None:
    """A warning when the cut to ``max_seq_length`` tokens left ``kept`` of a split's ``given`` conversations: the
    others had none of the assistant's tokens in it, and were dropped."""
    if kept < given:
        logger.warning(
            f"{given - kept} of {given} {split} conversations were dropped: the turns before their first answer fill "
            f"their first {max_seq_length} tokens (max_seq_length), leaving none of the assistant's tokens to learn; "
            "a larger max_seq_length keeps them"
        )


def _at_most(rows: datasets.Dataset, limit: Optional[int]) -> datasets.Dataset:
    """The first ``limit`` rows (all of them without a limit)."""
    return rows if limit is None else rows.select(range(min(limit, len(rows))))


def evaluated_rows(rows: datasets.Dataset, limit: Optional[int], seed: int) -> datasets.Dataset:
    """A random sample of ``limit`` of ``rows`` drawn with ``seed`` (all of them, in order, without a limit or
    below it). Sampled, not cut, because packing orders the rows: best-fit places the longest documents first, so
    the first blocks would hold mostly the longest documents."""
    if limit is None or limit >= len(rows):
        return rows
    return rows.shuffle(seed=seed).select(range(limit))


def sampled_rows(rows: dict[str, datasets.Dataset], args: DataArguments, seed: int):
    """The ``train`` rows shuffled with ``seed`` and cut to ``max_samples``, the ``eval`` rows a random sample of
    ``max_eval_samples`` drawn with ``seed`` (``evaluated_rows``), both as torch tensors."""
    train = _at_most(rows["train"].shuffle(seed=seed), args.max_samples)
    evaluation = evaluated_rows(rows["eval"], args.max_eval_samples, seed)
    return train.with_format("torch"), evaluation.with_format("torch")


def build_datasets(
    args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    seed: int,
    documents: Optional[datasets.Dataset] = None,
) -> DistillationData:
    """Train and eval blocks from disjoint sets of documents, shuffled with ``seed``."""
    documents = load_training_documents(args) if documents is None else documents
    split = split_documents(documents, args.eval_fraction, seed, args.eval_split_by)
    cache_dir = args.tokenization_cache_dir or default_cache_dir()
    framing = data_framing(documents, tokenizer, max_seq_length, args.packing)
    chat = chat_tokenization(documents, tokenizer, args, max_seq_length)
    packed = {
        name: tokenize_and_pack(
            docs, tokenizer, framing, args.dataset_text_column, cache_dir, args.preprocessing_num_workers, chat
        )
        for name, docs in (("train", split["train"]), ("eval", split["test"]))
    }
    for name, blocks in packed.items():
        if len(blocks) == 0 and chat is not None:  # each of the split's conversations was dropped by the cut
            raise no_conversation_left(args, name, max_seq_length)
        if len(blocks) == 0:
            fraction = "a smaller" if name == "train" else "a larger"
            raise DistilyConfigError(
                f"dataset {args.dataset_name!r} gives no {name} sequence of {max_seq_length} tokens; expected more "
                f"text, a smaller max_seq_length or {fraction} eval_fraction (now {args.eval_fraction})"
            )
    if chat is not None:
        for name, docs in (("train", split["train"]), ("eval", split["test"])):
            warn_dropped_conversations(len(docs), conversations_in(packed[name]), name, max_seq_length)
    train, evaluation = sampled_rows(packed, args, seed)
    return DistillationData(
        train=train,
        eval=evaluation,
        max_seq_length=max_seq_length,
        framing=framing,
        eval_documents=split["test"] if chat is None else None,  # conversations are packed as if alone
        loss_on=None if chat is None else chat.loss_on,
        packed_rows={name: len(blocks) for name, blocks in packed.items()},
    )


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
