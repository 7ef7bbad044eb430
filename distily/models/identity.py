"""Which teacher exactly: its id plus its Hub revision, or for a local checkpoint a hash of its weights."""

import hashlib
import os
from typing import Optional

from transformers import PreTrainedModel

from distily.outputs import file_sha256, weight_files

SAMPLES, SAMPLE_BYTES = 8, 1 << 16  # sampled_weights_digest: 512 KiB read per weight file
WEIGHTS_DIGEST = "teacher_weights_digest"  # a store's manifest: a local teacher's sampled_weights_digest


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


def sampled_weights_digest(directory: str | os.PathLike) -> Optional[str]:
    """A sha256 over a local checkpoint's weight files' names, sizes and ``SAMPLES`` slices of ``SAMPLE_BYTES`` spread
    evenly over each (its first and last among them), None if it has none: weights saved again at the path (the
    teacher trained on) differ in every slice past the files' headers, read in milliseconds where ``weights_sha256``
    reads every byte."""
    files = weight_files(directory)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        with open(path, "rb") as weights:
            for index in range(SAMPLES):
                weights.seek(round(index * max(size - SAMPLE_BYTES, 0) / (SAMPLES - 1)))
                digest.update(weights.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _local_directory(name_or_path: str) -> Optional[str]:
    """The checkpoint directory ``name_or_path`` names on this machine; None for a Hub id."""
    path = os.path.expanduser(name_or_path)
    return path if os.path.isdir(path) else None


def _loaded_commit(teacher: PreTrainedModel) -> Optional[str]:
    """The Hub commit a loaded teacher came from (its config holds it; None for a local checkpoint)."""
    return getattr(teacher.config, "_commit_hash", None)


def local_weights_digest(name_or_path: str) -> Optional[str]:
    """The ``sampled_weights_digest`` of the local checkpoint ``name_or_path`` names; None for a Hub id."""
    local = _local_directory(name_or_path)
    return sampled_weights_digest(local) if local is not None else None


def weights_fingerprint(name_or_path: str, teacher: PreTrainedModel) -> Optional[str]:
    """What tells a loaded teacher's weights apart cheaply: for a local checkpoint its ``sampled_weights_digest``, for
    a Hub id the commit it was loaded from (None where neither is known)."""
    local = _local_directory(name_or_path)
    return sampled_weights_digest(local) if local is not None else _loaded_commit(teacher)


def teacher_identity(name_or_path: str, teacher: PreTrainedModel) -> dict:
    """``checkpoint_identity`` of a loaded teacher."""
    return checkpoint_identity(name_or_path, _loaded_commit(teacher))


def checkpoint_identity(name_or_path: str, commit: Optional[str]) -> dict:
    """``teacher_model_name_or_path``, ``teacher_revision`` (``commit``, for a Hub id) and ``teacher_weights_sha256``
    (for a local checkpoint directory)."""
    local = _local_directory(name_or_path)
    return {
        "teacher_model_name_or_path": name_or_path,
        "teacher_revision": None if local is not None else commit,
        "teacher_weights_sha256": weights_sha256(local) if local is not None else None,
    }
