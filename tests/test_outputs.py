"""atomic_output and check_output: nothing the caller did not write is replaced, and a replacement is
renames only, so a failure or a kill at any moment leaves the old or the new output complete; safetensors headers."""

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from file_tree import tree
from safetensors.torch import save_file
from small_filesystem import small_filesystem

from distily.errors import DistilyConfigError
from distily.outputs import PreviousOutput, atomic_output, check_output, safetensors_tensor_bytes, write_json_atomic

MARKER = "made-by-us"
OURS = PreviousOutput("test export", lambda path: None if (path / MARKER).is_file() else "it has no marker")



def write_export(path: Path, content: str) -> None:
    path.mkdir()
    (path / MARKER).write_text("")
    (path / "weights").write_text(content)


def replace_export(target: Path, content: str, **rules) -> None:
    with atomic_output(target, directory=True, previous=OURS, **rules) as staging:
        write_export(staging, content)


def test_a_new_directory_appears_only_complete(tmp_path):
    replace_export(tmp_path / "out", "new")
    assert (tmp_path / "out" / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


@pytest.mark.parametrize("directory", [True, False])
def test_an_existing_output_is_refused_without_overwrite(directory, tmp_path):
    target = tmp_path / "out"
    target.mkdir() if directory else target.write_text("the user's")
    before = tree(tmp_path)
    with pytest.raises(DistilyConfigError, match="already exists; expected a new path, or --overwrite"):
        with atomic_output(target, directory=directory) as staging:
            staging.write_text("ours")
    assert tree(tmp_path) == before


def test_overwrite_replaces_a_previous_output(tmp_path):
    write_export(tmp_path / "out", "old")
    replace_export(tmp_path / "out", "new", overwrite=True)
    assert (tmp_path / "out" / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("contents, expected", [
    ({"notes.txt": "mine"}, r"is not a previous test export \(it has no marker\)"),
    ({}, None),  # an empty directory: nothing to lose
])
def test_overwrite_replaces_only_what_looks_like_its_own(contents, expected, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for name, text in contents.items():
        (target / name).write_text(text)
    before = tree(tmp_path)
    if expected is None:
        replace_export(target, "new", overwrite=True)
        assert (target / "weights").read_text() == "new"
        return
    with pytest.raises(DistilyConfigError, match=expected):
        replace_export(target, "new", overwrite=True)
    assert tree(tmp_path) == before


def test_overwrite_never_replaces_a_protected_path_or_one_containing_it(tmp_path):
    run = tmp_path / "work" / "run"
    run.mkdir(parents=True)
    (run / MARKER).write_text("")  # even if it looked like an export
    (run / "model.safetensors").write_text("weights")
    before = tree(tmp_path)
    for target, match in ((run, "is the run directory"), (run.parent, "contains the run directory")):
        with pytest.raises(DistilyConfigError, match=match):
            replace_export(target, "new", overwrite=True, protected={run: "the run directory"})
    assert tree(tmp_path) == before


@pytest.mark.parametrize("output, match", [(".", "is the current directory"), ("..", "contains the current directory")])
def test_overwrite_never_replaces_the_current_directory_or_one_containing_it(output, match, tmp_path, monkeypatch):
    here = tmp_path / "parent" / "here"
    here.mkdir(parents=True)
    (here / MARKER).write_text("")
    (here / "notes.txt").write_text("the user's")
    monkeypatch.chdir(here)
    before = tree(tmp_path)
    with pytest.raises(DistilyConfigError, match=match):
        replace_export(Path(output), "new", overwrite=True)
    with pytest.raises(DistilyConfigError, match=match):  # also when the caller owns the path
        with atomic_output(Path(output), directory=True, overwrite=True) as staging:
            staging.mkdir()
    assert tree(tmp_path) == before


def test_overwrite_refuses_a_symlink_and_a_file_for_a_directory(tmp_path):
    write_export(tmp_path / "real", "old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("the user's")
    before = tree(tmp_path)
    with pytest.raises(DistilyConfigError, match="is a symbolic link"):
        replace_export(tmp_path / "link", "new", overwrite=True)
    with pytest.raises(DistilyConfigError, match="is not a directory; expected a directory"):
        replace_export(tmp_path / "file", "new", overwrite=True)
    with pytest.raises(DistilyConfigError, match="is a directory; expected a file"):
        with atomic_output(tmp_path / "real", overwrite=True, previous=OURS) as staging:
            staging.write_text("new")
    assert tree(tmp_path) == before


def test_a_failure_while_writing_leaves_the_previous_output_and_no_staging(tmp_path):
    write_export(tmp_path / "out", "old")
    before = tree(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(tmp_path / "out", directory=True, overwrite=True, previous=OURS) as staging:
            write_export(staging, "half")
            raise RuntimeError("disk full")
    assert tree(tmp_path) == before


def test_a_failure_between_the_renames_puts_the_previous_output_back(tmp_path, monkeypatch):
    write_export(tmp_path / "out", "old")
    before = tree(tmp_path)

    def failing_replace(source, destination):
        raise OSError("rename failed")

    monkeypatch.setattr("distily.outputs.os.replace", failing_replace)  # the old one is already aside
    with pytest.raises(OSError, match="rename failed"):
        replace_export(tmp_path / "out", "new", overwrite=True)
    monkeypatch.undo()
    assert tree(tmp_path) == before


def test_an_output_that_appears_while_writing_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(DistilyConfigError, match="already exists"):
        with atomic_output(target, directory=True) as staging:
            write_export(staging, "ours")
            target.mkdir()
            (target / "notes.txt").write_text("someone else's")
    assert tree(tmp_path) == {"out": "dir", "out/notes.txt": hashlib.sha256(b"someone else's").hexdigest()}


KILLED = """
import os, sys
from pathlib import Path
from distily.outputs import PreviousOutput, atomic_output
target, moment = Path(sys.argv[1]), sys.argv[2]
def killing(function):  # os.replace renames the new output in, after the old one was moved aside
    def wrapped(*args):
        if moment == "between the renames":
            os._exit(9)  # like SIGKILL: no cleanup runs
        return function(*args)
    return wrapped
os.replace = killing(os.replace)
ours = PreviousOutput("test export", lambda path: None)
with atomic_output(target, directory=True, overwrite=True, previous=ours) as staging:
    staging.mkdir()
    (staging / "made-by-us").write_text("")
    (staging / "weights").write_text("new")
    if moment == "while writing":
        os._exit(9)
"""


@pytest.mark.parametrize("moment", ["while writing", "between the renames"])
def test_a_kill_at_any_moment_leaves_a_complete_output(moment, tmp_path):
    target = tmp_path / "out"
    write_export(target, "old")
    script = textwrap.dedent(KILLED)
    completed = subprocess.run([sys.executable, "-c", script, str(target), moment], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert completed.returncode == 9, completed.stderr
    complete = {path.parent.name if path.parent != target else "target": path.read_text()
                for path in tmp_path.rglob("weights")}
    if moment == "while writing":
        assert complete["target"] == "old"
    else:  # the old output moved aside, the new one complete beside it: nothing lost
        assert not target.exists()
        assert complete == {"previous": "old", "staging": "new"}


def test_write_json_atomic_replaces_its_own_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"step": 1})
    write_json_atomic(path, {"step": 2})
    assert path.read_text() == '{\n  "step": 2\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_check_output_accepts_a_new_path(tmp_path):
    check_output(tmp_path / "new" / "out", directory=True)


def test_a_full_filesystem_is_one_line_naming_the_output_and_leaves_nothing(tmp_path):
    with small_filesystem(tmp_path / "small", "64k") as small:
        before = tree(small)
        with pytest.raises(DistilyConfigError) as refused:
            with atomic_output(small / "export.bin") as staging:
                staging.write_bytes(b"x" * (1 << 20))
        assert str(refused.value) == (f"cannot write the output '{small / 'export.bin'}': No space left on device; "
                                      "expected free space on its filesystem")
        assert tree(small) == before


@pytest.mark.parametrize("code, expected", [
    (errno.ENOSPC, "No space left on device; expected free space on its filesystem"),
    (errno.EROFS, "Read-only file system; expected a writable filesystem"),
    (errno.EACCES, "Permission denied; expected a directory this user may write"),
])
def test_a_filesystem_error_while_writing_is_one_line_and_leaves_the_previous_output(code, expected, tmp_path):
    write_export(tmp_path / "out", "old")
    before = tree(tmp_path)
    with pytest.raises(DistilyConfigError) as refused:
        with atomic_output(tmp_path / "out", directory=True, overwrite=True, previous=OURS) as staging:
            write_export(staging, "half")
            raise OSError(code, os.strerror(code))
    assert str(refused.value) == f"cannot write the output '{tmp_path / 'out'}': {expected}"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("below", ["x.gguf", "deeper/x.gguf"])
def test_an_output_below_a_file_is_one_line_naming_it_and_leaves_the_file(below, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(DistilyConfigError) as refused:
        with atomic_output(tmp_path / "notes.txt" / below) as staging:
            staging.write_text("never")
    assert str(refused.value).endswith("Not a directory; expected a path whose parents are directories")
    assert str(tmp_path / "notes.txt") in str(refused.value)
    assert tree(tmp_path) == before


def test_safetensors_tensor_sizes_are_read_from_whole_files_only(tmp_path):
    """The tensors' sizes from the headers; a file cut off is refused in one line naming it, as a checkpoint's is
    (they were read from its header as if it were whole)."""
    save_file({"a": torch.zeros(3), "b": torch.zeros(2, 4, dtype=torch.bfloat16)}, tmp_path / "model.safetensors")
    assert safetensors_tensor_bytes(tmp_path) == {"a": 12, "b": 16}
    size = (tmp_path / "model.safetensors").stat().st_size
    os.truncate(tmp_path / "model.safetensors", size - 1)
    with pytest.raises(DistilyConfigError, match=f"^model.safetensors has {size - 1} bytes, its header says {size}$"):
        safetensors_tensor_bytes(tmp_path)
