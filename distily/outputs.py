"""Writing outputs so that a crash never leaves a file that looks complete; sizes and hashes of files."""

import hashlib
import json
import os
from pathlib import Path


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write ``data`` as JSON beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(partial, path)


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
