"""The demo's text: the help topics of Python's own documentation (``pydoc_data.topics``), which
every CPython install carries, split into paragraphs."""

import json
from pathlib import Path


MIN_CHARS = 40  # a shorter paragraph is left out


def python_doc_paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for paragraph in topics[name].split("\n\n"):
            paragraph = paragraph.strip()
            if len(paragraph) >= MIN_CHARS:
                paragraphs.append(paragraph)
    return paragraphs


def write_corpus(path: str | Path) -> Path:
    """The paragraphs as a JSON-lines file with a ``text`` column."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for paragraph in python_doc_paragraphs():
            out.write(json.dumps({"text": paragraph}) + "\n")
    return path
