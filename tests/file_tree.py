"""A snapshot of a directory tree, to assert that a command left everything in it as it was."""

import hashlib
from pathlib import Path


def tree(root: Path) -> dict[str, str]:
    """Every path under root (hidden ones included), with the sha256 of each file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}
