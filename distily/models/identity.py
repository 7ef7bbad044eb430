"""Which teacher exactly: its id plus its Hub revision, or for a local checkpoint a hash of its weights."""

import hashlib
import os
from typing import Optional

from transformers import PreTrainedModel

from distily.outputs import file_sha256, weight_files


def weights_sha256(directory: str | os.PathLike) -> Optional[str]:
    """One hash over a local checkpoint's weight files (``distily.outputs.weight_files``: not a Trainer's pickled
    ``training_args.bin``, which changes with every run), names and contents; None if it has none. All of them: a
    multimodal checkpoint's other towers too, though the teacher is its language model (it names the checkpoint)."""
    files = weight_files(directory)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def teacher_identity(name_or_path: str, teacher: PreTrainedModel) -> dict:
    """``checkpoint_identity`` of a loaded teacher (its config holds the Hub commit it was loaded from)."""
    return checkpoint_identity(name_or_path, getattr(teacher.config, "_commit_hash", None))


def checkpoint_identity(name_or_path: str, commit: Optional[str]) -> dict:
    """``teacher_model_name_or_path``, ``teacher_revision`` (``commit``, for a Hub id) and ``teacher_weights_sha256``
    (for a local checkpoint directory)."""
    local = os.path.isdir(os.path.expanduser(name_or_path))
    return {
        "teacher_model_name_or_path": name_or_path,
        "teacher_revision": None if local else commit,
        "teacher_weights_sha256": weights_sha256(os.path.expanduser(name_or_path)) if local else None,
    }
