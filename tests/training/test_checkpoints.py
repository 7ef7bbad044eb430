"""Checkpoint integrity: checksums written after each save, the newest intact checkpoint resumed from, and a
student whose final save was killed left resumable."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.training.checkpoints import CHECKSUMS_FILE, CheckpointChecksums, checkpoint_problem, write_checksums
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir
from distily.training.trainer import DistillationTrainer
from launch_each import launch_each


def _checkpoint(path: Path) -> Path:
    path.mkdir()
    save_file({"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3)}, path / "model.safetensors")
    torch.save({"state": torch.zeros(5)}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    return path


def _cut(path: Path, keep: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(keep)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checksums_find_a_cut_or_changed_file(tmp_path):
    checkpoint = _checkpoint(tmp_path / "checkpoint-2")
    write_checksums(checkpoint)
    listed = json.loads((checkpoint / CHECKSUMS_FILE).read_text())["files"]
    assert sorted(listed) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert checkpoint_problem(checkpoint) is None
    size = (checkpoint / "model.safetensors").stat().st_size
    _flip_last_byte(checkpoint / "optimizer.pt")
    assert checkpoint_problem(checkpoint) == "optimizer.pt fails its sha256 check"
    _cut(checkpoint / "model.safetensors", size - 4)
    assert checkpoint_problem(checkpoint) == f"model.safetensors has {size - 4} bytes, expected {size}"
    (checkpoint / "model.safetensors").unlink()
    assert checkpoint_problem(checkpoint) == "model.safetensors is missing"


def test_without_checksums_a_checkpoint_is_checked_for_truncation(tmp_path):
    checkpoint = _checkpoint(tmp_path / "checkpoint-2")  # as a run killed before its checksums were written
    assert checkpoint_problem(checkpoint) is None
    size = (checkpoint / "model.safetensors").stat().st_size
    _cut(checkpoint / "model.safetensors", size - 1)
    assert checkpoint_problem(checkpoint) == f"model.safetensors has {size - 1} bytes, its header says {size}"
    _cut(checkpoint / "model.safetensors", 20)
    assert checkpoint_problem(checkpoint) == "model.safetensors has 20 bytes, its header says " + str(
        8 + int.from_bytes((checkpoint / "model.safetensors").read_bytes()[:8], "little")
    )
    _cut(checkpoint / "model.safetensors", 5)
    assert checkpoint_problem(checkpoint) == "model.safetensors's header is cut off or unreadable"
    (checkpoint / "model.safetensors").unlink()
    _cut(checkpoint / "optimizer.pt", (checkpoint / "optimizer.pt").stat().st_size - 30)
    assert checkpoint_problem(checkpoint) == "optimizer.pt is cut off (its zip directory does not read)"
    (checkpoint / "optimizer.pt").unlink()
    (checkpoint / "trainer_state.json").write_text('{"global_st')
    assert checkpoint_problem(checkpoint) == "trainer_state.json is missing or unreadable"


def _values(run_values, teacher_dirs, **overrides):
    return run_values(
        teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, save_strategy="steps", save_steps=2,
        use_cpu=True, **overrides,
    )


def _killed_after_training(values, monkeypatch):
    """A run of 4 steps (checkpoints 2 and 4) killed after training, before its student and metrics.json."""
    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(DistillationTrainer, "evaluate_after_training", killed)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(parse_config(**values))


def _weights(path: Path) -> dict:
    """The tensors of a safetensors file, copied: load_file maps the file, which the test then changes."""
    return {name: tensor.clone() for name, tensor in load_file(path).items()}


def _student_part(checkpoint_weights: dict) -> dict:
    """A checkpoint holds the student and the objective (``student.*``, ``objective.*``); the run's output the
    student."""
    return {name.removeprefix("student."): tensor for name, tensor in checkpoint_weights.items()
            if name.startswith("student.")}


def _same_tensors(path: Path, expected: dict) -> bool:
    actual = load_file(path)
    return actual.keys() == expected.keys() and all(torch.equal(actual[name], expected[name]) for name in expected)


@pytest.mark.parametrize("damage", ["truncated weights", "a changed byte in optimizer.pt"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(damage, teacher_dirs, run_values,
                                                                           monkeypatch, caplog):
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    _killed_after_training(values, monkeypatch)
    assert all((out / name / CHECKSUMS_FILE).is_file() for name in ("checkpoint-2", "checkpoint-4"))
    trained = _weights(out / "checkpoint-4" / "model.safetensors")  # what steps 3 and 4 gave
    size = (out / "checkpoint-4" / "model.safetensors").stat().st_size
    if damage == "truncated weights":
        _cut(out / "checkpoint-4" / "model.safetensors", size // 2)
        problem = f"model.safetensors has {size // 2} bytes, expected {size}"
    else:
        _flip_last_byte(out / "checkpoint-4" / "optimizer.pt")
        problem = "optimizer.pt fails its sha256 check"

    with caplog.at_level(logging.WARNING, logger="distily"):
        metrics = run_distillation(parse_config(**values, resume_from_checkpoint="true"))
    warnings = [record.getMessage() for record in caplog.records if "intact" in record.getMessage()]
    assert warnings == [f"resuming from {out / 'checkpoint-2'}, the newest intact checkpoint: checkpoint-4 is not "
                        f"intact ({problem})"]
    assert metrics["train"]["global_step"] == 4
    assert checkpoint_problem(out / "checkpoint-4") is None  # written again, steps 3 and 4 trained again
    assert _same_tensors(out / "checkpoint-4" / "model.safetensors", trained)
    assert _same_tensors(out / "model.safetensors", _student_part(trained))


KILLED_WHILE_SAVING_THE_STUDENT = """
import os, sys
import transformers.modeling_utils as modeling_utils
from distily.cli import main
save = modeling_utils.safe_save_file
def killed_halfway(tensors, filename, *args, **kwargs):  # SIGKILL while the final student is half written
    save(tensors, filename, *args, **kwargs)
    if "checkpoint-" not in str(filename):
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        os._exit(9)
modeling_utils.safe_save_file = killed_halfway
sys.exit(main(["distill", sys.argv[1]]))
"""


def test_a_kill_while_the_student_is_saved_leaves_no_student_and_a_resumable_run(teacher_dirs, run_values, tmp_path):
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    script = textwrap.dedent(KILLED_WHILE_SAVING_THE_STUDENT)
    killed = subprocess.run([sys.executable, "-c", script, str(config)], env=env, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr[-2000:]
    run = RunDir(out)
    assert not run.is_finished() and not run.student_weights()  # nothing half-written where a user would look
    assert [path.name for path in run.checkpoints()] == ["checkpoint-4", "checkpoint-2"]  # newest first
    trained = _weights(out / "checkpoint-4" / "model.safetensors")

    metrics = run_distillation(parse_config(**values, resume_from_checkpoint="true"))  # takes the dead run's lock over
    assert metrics["train"]["global_step"] == 4
    # nothing lost: the student of the last step
    assert _same_tensors(out / "model.safetensors", _student_part(trained))
    assert not run.student_staging.exists() and not run.lock.exists()


DISK_FULL = """
import errno, os, sys
import safetensors.torch
import transformers.modeling_utils as modeling_utils
from distily.cli import main
def full_for(written, save):
    def full(tensors, filename, *args, **kwargs):
        if written in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return save(tensors, filename, *args, **kwargs)
    return full
# the student's weights (through save_pretrained), the checkpoints' (the Trainer's own save): the main process's alone
modeling_utils.safe_save_file = full_for(sys.argv[2], modeling_utils.safe_save_file)
safetensors.torch.save_file = full_for(sys.argv[2], safetensors.torch.save_file)
sys.exit(main(["distill", sys.argv[1]]))
"""


def _disk_full_on_two(values: dict, written: str, tmp_path: Path, main_line: str, what: str) -> None:
    """``distily distill`` on 2 processes whose writes of a file named with ``written`` fail on a full disk: the main
    process, which writes it, exits with ``main_line``, the other with the line naming ``what``."""
    config, script = tmp_path / "config.yaml", tmp_path / "disk_full.py"
    config.write_text(yaml.safe_dump(values))
    script.write_text(DISK_FULL)
    main, other = launch_each(script, str(config), written)
    for done, line in ((main, main_line), (other, f"{what} failed on another process, whose error names the cause; "
                                                   "expected it to succeed on every process")):
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.splitlines()[-1] == f"distily distill: error: {line}"


@pytest.mark.slow
def test_a_student_the_main_process_cannot_write_stops_every_process(teacher_dirs, run_values, tmp_path):
    """2 processes: the main one writes the student, on a full disk, and raised its line while the other waited for it
    at the barrier after the save, which ended in gloo's "Connection closed by peer" traceback (exit 1; NCCL, blind
    to a peer's exit, waits for its timeout). Now both agree first: each exits with a line, no student written, and
    the run resumes from its last checkpoint to a finished one."""
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    _disk_full_on_two(values, "_student-staging", tmp_path, f"cannot write the student '{out}/_student-staging/"
                      "model.safetensors': No space left on device; expected free space on its filesystem",
                      "saving the student")
    run = RunDir(out)
    assert not run.is_finished() and not run.student_weights() and not run.student_staging.exists()
    resumed = {**values, "per_device_train_batch_size": 8}  # the global batch of 2 processes of 4
    assert run_distillation(parse_config(**resumed, resume_from_checkpoint="true"))["train"]["global_step"] == 4
    assert run.student_weights()


@pytest.mark.slow
def test_a_checkpoint_the_main_process_cannot_write_stops_every_process(teacher_dirs, run_values, tmp_path):
    """As for the student: the other process waited at the barrier after the Trainer's checkpoint save (gloo's
    traceback, exit 1); now each exits with a line, and no checkpoint appears (the staged one stays staged)."""
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    _disk_full_on_two(values, "checkpoint-", tmp_path, f"cannot write in output_dir '{out}/_checkpoint-staging/"
                      "checkpoint-2/model.safetensors': No space left on device; expected free space on its "
                      "filesystem", "saving the checkpoint")
    assert not RunDir(out).checkpoints() and not RunDir(out).is_finished()


def test_a_resumed_run_goes_on_counting_the_non_finite_steps_in_a_row(teacher_dirs, run_values, monkeypatch,
                                                                       tmp_path):
    """Steps 2 to 4 have non-finite gradients and max_nonfinite_steps=3: the run stops at step 4, and so does the
    same run killed after checkpoint-3 (two skipped in a row) and resumed (the counts started again at 0 and it
    finished)."""
    compute_loss = DistillationTrainer.compute_loss

    def non_finite_at_steps_2_to_4(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if model.training and self.state.global_step + 1 in (2, 3, 4) else loss

    monkeypatch.setattr(DistillationTrainer, "compute_loss", non_finite_at_steps_2_to_4)
    values = {**_values(run_values, teacher_dirs, max_steps=6, save_total_limit=0, max_nonfinite_steps=3),
              "save_steps": 1}
    with pytest.raises(DistilyConfigError, match="3 optimizer steps in a row"):
        run_distillation(parse_config(**values))
    state = json.loads((Path(values["output_dir"]) / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["NonFiniteStepCounts"]["attributes"] == {"consecutive": 2, "skipped": 2}
    for later in ("checkpoint-4", "checkpoint-5", "checkpoint-6"):  # killed after checkpoint-3
        shutil.rmtree(Path(values["output_dir"]) / later, ignore_errors=True)
    with pytest.raises(DistilyConfigError, match="3 optimizer steps in a row"):
        run_distillation(parse_config(**{**values, "resume_from_checkpoint": "true"}))


def test_a_resumed_run_reports_the_whole_runs_training_loss_and_time(teacher_dirs, run_values, monkeypatch, tmp_path):
    """metrics.json's train_loss and wall_seconds used to be the last session's (the Trainer's figures of its own
    train() call): the mean over steps 4 to 6 and their time, for a run killed after checkpoint-3 and resumed."""
    values = _values(run_values, teacher_dirs, max_steps=6, logging_steps=2)  # a checkpoint between two logs
    values["save_steps"] = 3
    whole = run_distillation(parse_config(**{**values, "output_dir": str(tmp_path / "whole")}))
    on_save, compute_loss = CheckpointChecksums.on_save, DistillationTrainer.compute_loss

    def killed_after_checkpoint_3(self, args, state, control, **kwargs):
        on_save(self, args, state, control, **kwargs)
        if state.global_step == 3:
            raise KeyboardInterrupt("killed")

    def slow_first_step(self, model, inputs, *args, **kwargs):
        if model.training and self.state.global_step == 0:
            time.sleep(0.5)
        return compute_loss(self, model, inputs, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointChecksums, "on_save", killed_after_checkpoint_3)
        patch.setattr(DistillationTrainer, "compute_loss", slow_first_step)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(parse_config(**values))
    resumed = run_distillation(parse_config(**values, resume_from_checkpoint="true"))["train"]
    assert resumed["train_loss"] == pytest.approx(whole["train"]["train_loss"], rel=1e-6)
    assert resumed["resumed_from_step"] == 3 and "resumed_from_step" not in whole["train"]
    assert resumed["wall_seconds"] > 0.5 + resumed["train_runtime"]
