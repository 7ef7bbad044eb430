"""Atomic writes: an export appears complete under its final name or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(target: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a fresh staging path beside `target` (same filesystem); rename it onto `target` on success.

    The staging path does not exist yet: the caller creates the file (or, with directory=True, the
    directory). On an exception the staging path is removed and `target` is left untouched. An
    existing target directory is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / "staging"
    try:
        yield staging
        if directory and target.is_dir():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
