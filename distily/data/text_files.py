"""How a ``.txt`` file becomes documents: decoded as UTF-8, split at blank lines, lines, a regular expression or not
at all (``text_document_delimiter``), line breaks kept inside each."""

import re
from pathlib import Path

import datasets

from distily.errors import DistilyConfigError

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
