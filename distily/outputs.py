"""Writing outputs so that a crash never leaves a file that looks complete, nothing a command did not
write is ever replaced, and a full, read-only or unwritable filesystem is one line naming the path; sizes and
hashes of files."""

import errno
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distily.errors import DistilyConfigError


@dataclass(frozen=True)
class PreviousOutput:
    """How a command recognises an output it wrote before, the only thing `overwrite` lets it replace."""

    name: str  # what the command writes, e.g. "packed export"
    # Why an existing path (a non-empty directory, or a file) is not such an output; None when it is one.
    why_not: Callable[[Path], str | None]


def check_output(target: Path, *, directory: bool = False, overwrite: bool = False,
                 previous: PreviousOutput | None = None, protected: Mapping[Path, str] | None = None) -> None:
    """Raise DistilyConfigError unless `target` may be written: it does not exist, or `overwrite` is given and
    it is a previous output of the same kind (`previous`; any, when None: the caller owns the path).

    Never replaceable, even with `overwrite`: a path in `protected` (path -> what it is, e.g. the run
    directory) or one containing it, the current directory or one containing it, a symbolic link, a file
    where a directory is written (or the other way round).
    """
    if not os.path.lexists(target):
        return
    resolved = target.resolve()
    for path, what in {**(protected or {}), Path.cwd(): "the current directory"}.items():
        path = Path(path).resolve()
        if resolved == path or resolved in path.parents:
            relation = "is" if resolved == path else "contains"
            raise DistilyConfigError(f"output '{target}' {relation} {what} '{path}'; expected a path outside it")
    name = previous.name if previous is not None else "output"
    if not overwrite:
        raise DistilyConfigError(
            f"output '{target}' already exists; expected a new path, or --overwrite to replace a previous {name}"
        )
    if target.is_symlink():
        raise DistilyConfigError(f"output '{target}' is a symbolic link; expected a new path or a previous {name}")
    if target.is_dir() != directory:
        found, expected = ("a directory", "a file") if target.is_dir() else ("not a directory", "a directory")
        raise DistilyConfigError(f"output '{target}' is {found}; expected {expected} (a previous {name})")
    if previous is None or (directory and not any(target.iterdir())):
        return  # the caller's own path, or an empty directory: nothing to lose
    reason = previous.why_not(target)
    if reason is not None:
        raise DistilyConfigError(
            f"output '{target}' is not a previous {name} ({reason}); expected a new path or a previous {name}"
        )


# What a write needs from the filesystem, by the errno of its failure.
FILESYSTEM_ERRORS = {
    errno.ENOSPC: "free space on its filesystem",
    errno.EDQUOT: "free space in the disk quota",
    errno.EROFS: "a writable filesystem",
    errno.EACCES: "a directory this user may write",
    errno.EPERM: "a directory this user may write",
    errno.ENOTDIR: "a path whose parents are directories",
}
LOW_SPACE_BYTES = 1 << 20  # below this, a failed write with no errno is taken for a full filesystem
SAFETENSORS_HEADER_BYTES = 60  # a tensor's entry in a safetensors header besides its name: dtype, shape, offsets


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.isdir(candidate):
            return candidate
    return Path(".")


def filesystem_errno(error: BaseException, path: Path) -> int | None:
    """The errno of a write under ``path`` that failed because of the filesystem, or None. An OSError carries it;
    safetensors' errors name it ("os error 28"); others (torch's writer) carry none, so the filesystem itself is
    looked at: read-only, not writable, or nearly full. Call it before removing what the failed write left."""
    code = getattr(error, "errno", None)
    if code is None:
        match = re.search(r"\(os error (\d+)\)", str(error))
        code = int(match[1]) if match else None
    if code == errno.EEXIST and os.path.lexists(path) and not os.path.isdir(path):
        code = errno.ENOTDIR  # making the directories above a file's path met a file on the way
    if code in FILESYSTEM_ERRORS:
        return code
    directory = _existing_parent(path)
    stats = os.statvfs(directory)
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(directory, os.W_OK):
        return errno.EACCES
    if stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES:
        return errno.ENOSPC
    return None


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes this user may still write on the filesystem that holds ``path`` (its nearest existing parent)."""
    return shutil.disk_usage(_existing_parent(Path(path))).free


def human_size(count: int) -> str:
    """``count`` bytes in GiB, MiB or KiB, whichever keeps the figure at 1 or more (two decimals)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count / 1024:.2f} KiB"


def check_free_space(path: str | os.PathLike, needed: int, what: str, remedies: str, refuse: bool = True,
                     detail: str = "") -> str:
    """One line giving ``needed`` bytes of ``what`` (``detail``: of what they are made) against the free space where
    ``path`` is written; with ``refuse``, a one-line DistilyConfigError when they exceed it, naming ``remedies`` (what
    to change to need less)."""
    free = free_bytes(path)
    line = f"{what} of ~{human_size(needed)}{detail}; {human_size(free)} free for '{path}'"
    if refuse and needed > free:
        raise DistilyConfigError(f"{line}: it cannot fit; expected {remedies}, more free space, or disk_check=false "
                                 "to try anyway (a filesystem that misreports its free space)")
    return line


def safetensors_size(tensors: Mapping[str, object]) -> int:
    """Bytes of a safetensors file of ``tensors`` (torch tensors, on the meta device too) by name: each tensor's data
    (a storage shared by several names once, as the writer dedupes tied weights) and a JSON header of about
    ``SAFETENSORS_HEADER_BYTES`` plus its name per tensor."""
    seen, data = set(), 0
    for tensor in tensors.values():
        storage = id(tensor) if tensor.is_meta else (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if storage not in seen:
            seen.add(storage)
            data += tensor.numel() * tensor.element_size()
    return data + 8 + sum(len(name) + SAFETENSORS_HEADER_BYTES for name in tensors)


def tree_size(path: Path, leaving_out: Collection[Path] = ()) -> int:
    """Bytes of the files under ``path``, at any depth, but those ``leaving_out`` (0 where there is nothing)."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file() and file not in leaving_out)


def saved_size(save: Callable[[Path], object]) -> int:
    """Bytes ``save(directory)`` writes (a tokenizer's or config's ``save_pretrained``), measured in a temporary
    directory that is removed after."""
    with tempfile.TemporaryDirectory() as directory:
        save(Path(directory))
        return tree_size(Path(directory))


@contextmanager
def filesystem_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failed write of ``what`` under ``path`` whose cause is the filesystem (full, read-only, not
    writable, a file where a directory is needed) into a one-line DistilyConfigError naming the path."""
    try:
        yield
    except DistilyConfigError:
        raise
    except Exception as error:
        where = Path(getattr(error, "filename", None) or path)
        code = filesystem_errno(error, where)
        if code is None:
            raise
        raise DistilyConfigError(
            f"cannot write {what} '{where}': {os.strerror(code)}; expected {FILESYSTEM_ERRORS[code]}"
        ) from error


@contextmanager
def atomic_output(target: Path, *, directory: bool = False, overwrite: bool = False,
                  previous: PreviousOutput | None = None,
                  protected: Mapping[Path, str] | None = None) -> Iterator[Path]:
    """Yield a fresh staging path beside `target` (same filesystem); rename it onto `target` on success.

    The staging path does not exist yet: the caller creates the file (or, with directory=True, the
    directory). `target` is checked by check_output (same arguments) before and again after the write.
    An existing target is only ever replaced by renames: a file by one rename onto it; a directory is
    moved aside into the sibling temporary directory (`.NAME.*/previous`), the new one renamed onto
    `target`, then the old one deleted, so a kill at any moment leaves the old or the new output complete
    (between the two renames: the old one in `.NAME.*/previous`). On an exception, `target` is left (or
    put back) as it was and the staging path removed; a full, read-only or unwritable filesystem is a
    DistilyConfigError naming the path (filesystem_errors).
    """
    rules = {"directory": directory, "overwrite": overwrite, "previous": previous, "protected": protected}
    check_output(target, **rules)
    with filesystem_errors(target, "the output"):
        target.parent.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging, aside = workspace / "staging", workspace / "previous"
    replaced = False
    try:
        with filesystem_errors(target, "the output"):  # diagnosed before the staging path is removed
            yield staging
            check_output(target, **rules)  # something may have appeared there while we wrote
            if directory and os.path.lexists(target):
                os.rename(target, aside)
            os.replace(staging, target)  # a file replaces a file in one rename
        replaced = True
    except BaseException:
        if os.path.lexists(aside) and not os.path.lexists(target):
            os.rename(aside, target)  # put the old output back
        raise
    finally:
        if replaced or not os.path.lexists(aside):  # never delete an old output that is not back in place
            shutil.rmtree(workspace, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write ``data`` as JSON beside ``path``, then rename it into place (replacing the caller's own file)."""
    with atomic_output(Path(path), overwrite=True) as staging:
        staging.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def remove_earlier_outputs(directory: Path, names) -> None:
    """Remove the files and folders ``names`` under ``directory``, which an earlier run of the command wrote, before
    it writes its own: what the new one does not write again (a plot it draws no more) never stands beside its
    results."""
    for name in names:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# A checkpoint's weight files, in the order transformers prefers them: safetensors, else PyTorch's pickles (single or
# sharded; not a run directory's training_args.bin).
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files (``WEIGHT_FILES``, both formats) directly under ``directory``, sorted."""
    return sorted({path for pattern in WEIGHT_FILES for path in Path(directory).glob(pattern) if path.is_file()})


def directory_size(path: str | os.PathLike, pattern: str | None = None) -> int:
    """Bytes of the files matching ``pattern`` directly under ``path``; without one, of the checkpoint's weights
    there: the first of ``WEIGHT_FILES`` that has files, so a checkpoint saved in both formats counts once, as the
    safetensors transformers loads."""
    for candidate in [pattern] if pattern else WEIGHT_FILES:
        files = list(Path(path).glob(candidate))
        if files:
            return sum(f.stat().st_size for f in files)
    return 0


def safetensors_offsets(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Each tensor's ``data_offsets`` in a safetensors file (begin and end in its bytes after the header), by name,
    from its header: 8 bytes of length, then JSON, then the tensors' bytes up to the last tensor's end, where the file
    ends. A file cut off, or whose header does not read, is refused in one line naming it."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length)) if 8 + length <= size else {}  # cut off in its header
        offsets = {name: tuple(entry["data_offsets"]) for name, entry in header.items() if name != "__metadata__"}
        expected = 8 + length + max((stop for start, stop in offsets.values()), default=0)
    except (struct.error, ValueError, AttributeError, KeyError, TypeError):
        raise DistilyConfigError(f"{path.name}'s header is cut off or unreadable") from None
    if size != expected:
        raise DistilyConfigError(f"{path.name} has {size} bytes, its header says {expected}")
    return offsets


def safetensors_tensor_bytes(directory: str | os.PathLike) -> dict[str, int]:
    """The bytes of each tensor in the safetensors files directly under ``directory``, by name, read from their
    headers (``safetensors_offsets``); empty when it has none."""
    found = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        found.update({name: stop - start for name, (start, stop) in safetensors_offsets(path).items()})
    return found


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_problem(path: Path, recorded: dict) -> str | None:
    """What is wrong with a file against its recorded ``{"bytes": ..., "sha256": ...}`` (None: nothing)."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != recorded["bytes"]:
        return f"has {size} bytes, expected {recorded['bytes']}"
    if file_sha256(path) != recorded["sha256"]:
        return "fails its sha256 check"
    return None
