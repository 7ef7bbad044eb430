"""Writing outputs so that a crash never leaves a file that looks complete; sizes and hashes of files."""

import hashlib
import json
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


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write ``data`` as JSON beside ``path``, then rename it into place."""
    with atomic_output(Path(path)) as staging:
        staging.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def directory_size(path: str | os.PathLike, pattern: str = "*.safetensors") -> int:
    """Bytes of the files matching ``pattern`` directly under ``path``."""
    return sum(f.stat().st_size for f in Path(path).glob(pattern))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
