"""Whether a checkpoint is intact: every file as it was written, checked before a run resumes from it.

When the Trainer has saved a checkpoint, ``CheckpointChecksums`` (a callback, on the main process) writes
``CHECKSUMS_FILE`` into it: each file's size and sha256. A checkpoint with that file is intact when every
file it lists is there with its size and sha256. A checkpoint without it (written before Distily wrote
checksums, or a run killed between the save and the checksums) is checked for truncation only: its
``trainer_state.json`` (the Trainer writes it last) reads as JSON, each safetensors file is as long as its
header says, each torch file's zip directory (at the end of the file) reads.
"""

import json
import os
import zipfile
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distily.errors import DistilyConfigError
from distily.outputs import file_problem, file_sha256, safetensors_offsets, write_json_atomic

CHECKSUMS_FILE = "distily_checksums.json"
TRAINER_STATE_FILE = "trainer_state.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _files(checkpoint: Path) -> list[Path]:
    return sorted(path for path in checkpoint.rglob("*") if path.is_file() and path.name != CHECKSUMS_FILE)


def write_checksums(checkpoint: Path) -> None:
    """Record the size and sha256 of every file of a checkpoint directory, in it."""
    files = {
        str(path.relative_to(checkpoint)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in _files(checkpoint)
    }
    write_json_atomic(checkpoint / CHECKSUMS_FILE, {"files": files})


def _checksum_problem(checkpoint: Path, listed: dict) -> Optional[str]:
    for name, expected in sorted(listed.items()):
        problem = file_problem(checkpoint / name, expected)
        if problem is not None:
            return f"{name} {problem}"
    return None


def _safetensors_problem(path: Path) -> Optional[str]:
    """Why a safetensors file is not as long as its header says (``safetensors_offsets``), or None."""
    try:
        safetensors_offsets(path)
    except DistilyConfigError as problem:
        return str(problem)
    return None


def _truncation_problem(checkpoint: Path) -> Optional[str]:
    try:
        json.loads((checkpoint / TRAINER_STATE_FILE).read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE_FILE} is missing or unreadable"
    for path in _files(checkpoint):
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
            if problem is not None:
                return problem
        elif path.suffix in TORCH_SUFFIXES and not zipfile.is_zipfile(path):
            return f"{path.name} is cut off (its zip directory does not read)"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike) -> Optional[str]:
    """Why a checkpoint directory is not intact, or None when it is (see the module's docstring)."""
    checkpoint = Path(checkpoint)
    checksums = checkpoint / CHECKSUMS_FILE
    if not checksums.is_file():
        return _truncation_problem(checkpoint)
    try:
        listed = json.loads(checksums.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{CHECKSUMS_FILE} is unreadable"
    return _checksum_problem(checkpoint, listed)


class CheckpointChecksums(TrainerCallback):
    """Write the checksums of each checkpoint once the Trainer has saved it (on the processes that save)."""

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            write_checksums(checkpoint)
