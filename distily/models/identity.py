"""Which teacher exactly: its id plus its Hub revision, or for a local checkpoint a hash of its weights."""

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel

from distily.outputs import file_sha256

WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)")
"""What ``from_pretrained`` loads weights from: whole or sharded, safetensors or pickled. A Trainer's output folder
also holds ``training_args.bin`` (its pickled arguments), which is no weight file and changes with every run."""


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """A local checkpoint's weight files (``WEIGHT_FILE``), sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if WEIGHT_FILE.fullmatch(p.name) and p.is_file())


def weights_sha256(directory: str | os.PathLike) -> Optional[str]:
    """One hash over a local checkpoint's weight files (names and contents); None if it has none."""
    files = weight_files(directory)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def teacher_identity(name_or_path: str, teacher: PreTrainedModel) -> dict:
    """``teacher_model_name_or_path``, ``teacher_revision`` (the Hub commit, for a Hub id) and
    ``teacher_weights_sha256`` (for a local checkpoint directory)."""
    local = os.path.isdir(os.path.expanduser(name_or_path))
    return {
        "teacher_model_name_or_path": name_or_path,
        "teacher_revision": None if local else getattr(teacher.config, "_commit_hash", None),
        "teacher_weights_sha256": weights_sha256(os.path.expanduser(name_or_path)) if local else None,
    }
