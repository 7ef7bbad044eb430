"""The documents to distill on: the rows of the raw dataset with text, token ids or a conversation in them, checked
(a text column of strings, token ids the models have rows for, at least two documents)."""

from typing import Optional

import datasets
import pyarrow.compute

from distily.data.arguments import DataArguments
from distily.data.chat import chat_format, conversations
from distily.data.framing import INPUT_IDS
from distily.data.sources import load_documents
from distily.errors import DistilyConfigError


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
