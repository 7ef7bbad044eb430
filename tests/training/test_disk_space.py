"""``distily distill`` estimates the most bytes its output_dir holds at once before training: against the bytes a run
writes, and a run the disk cannot hold refused with nothing written."""

import logging
from pathlib import Path

import pytest
import yaml

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.training import disk_space, trainer_internals
from distily.training.disk_space import checkpoint_count, output_size
from distily.training.distill import run_distillation
from launch_each import launch_each

SMALL_DISK = """
import sys
import distily.outputs
distily.outputs.free_bytes = lambda path: 1 << 20  # the filesystem's free space, faked
from distily.cli import main
sys.exit(main(["distill", sys.argv[1]]))
"""


def _values(run_values, teacher_dirs, **overrides):
    return run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=6,
                      save_strategy="steps", save_steps=2, save_total_limit=2, use_cpu=True, **overrides)


def test_the_estimate_is_within_a_few_percent_of_the_most_a_run_holds(run_values, teacher_dirs, monkeypatch):
    values = _values(run_values, teacher_dirs)
    held, rotate = [], trainer_internals.rotate_checkpoints

    def measured(run_dir, *args, **kwargs):  # a checkpoint just written, before the oldest beyond the limit goes
        held.append(output_size(Path(run_dir)))
        return rotate(run_dir, *args, **kwargs)

    estimates, estimate = [], disk_space.estimate_disk
    monkeypatch.setattr(trainer_internals, "rotate_checkpoints", measured)
    monkeypatch.setattr(disk_space, "estimate_disk", lambda *args: estimates.append(estimate(*args)) or estimates[-1])
    run_distillation(parse_config(**values))
    run = Path(values["output_dir"])
    assert len(held) == 3 and sorted(path.name for path in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    most = max(*held, output_size(run))  # 3 checkpoints before the first is removed
    (found,) = estimates
    assert (found.checkpoints_at_peak, found.checkpoints_kept) == (3, 2)
    assert found.checkpoint == pytest.approx(output_size(run / "checkpoint-6"), rel=0.05)
    assert most <= found.total <= 1.05 * most, (found, held)


def test_a_run_the_disk_cannot_hold_is_refused_before_anything_is_written(run_values, teacher_dirs, monkeypatch,
                                                                          caplog):
    values = _values(run_values, teacher_dirs)
    monkeypatch.setattr("distily.outputs.free_bytes", lambda path: 1 << 20)  # the filesystem's free space, faked
    with pytest.raises(DistilyConfigError) as refused:
        run_distillation(parse_config(**values))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("run output of ~4.")  # 3 checkpoints of 1.4 MiB
    assert "(3 checkpoints of 1.39 MiB at once; " in message
    assert f"1.00 MiB free for '{values['output_dir']}': it cannot fit; expected a smaller save_total_limit" in message
    assert "disk_check=false" in message
    assert not Path(values["output_dir"]).exists()

    with caplog.at_level(logging.INFO, logger="distily.training.distill"):
        run_distillation(parse_config(**values, disk_check=False))  # told to try anyway: trained, and logged
    assert (Path(values["output_dir"]) / "metrics.json").is_file()
    assert any(record.getMessage().startswith("run output of ~4.") for record in caplog.records)


def test_a_run_the_disk_cannot_hold_is_refused_on_every_process(run_values, teacher_dirs, tmp_path):
    """On 2 processes the one that writes refused alone, and the other went on into the evaluation before training and
    failed there in a collective ('Connection closed by peer', a traceback; on one machine torchrun kills it)."""
    config, script = tmp_path / "distill.yaml", tmp_path / "small_disk.py"
    config.write_text(yaml.safe_dump(_values(run_values, teacher_dirs)))
    script.write_text(SMALL_DISK)
    first, second = launch_each(script, str(config))
    assert [done.returncode for done in (first, second)] == [2, 2], second.stderr[-3000:]
    assert first.stderr.splitlines()[-1].startswith("distily distill: error: run output of ~4.")
    assert second.stderr.splitlines()[-1] == ("distily distill: error: the disk check failed on another process, whose "
                                              "error names the cause; expected it to succeed on every process")
    assert "Traceback" not in first.stderr + second.stderr


@pytest.mark.parametrize("settings, count", [
    ({"save_strategy": "no"}, 0),
    ({"save_strategy": "steps", "save_steps": 0.25}, 4),  # every 25 steps of 100
    ({"save_strategy": "steps", "save_steps": 30}, 4),  # 30, 60, 90 and the last step
    ({"save_strategy": "epoch", "num_train_epochs": 2.5, "max_steps": -1}, 3),
])
def test_the_checkpoints_a_run_writes_are_counted(run_values, teacher_dirs, settings, count):
    training = parse_config(**{**_values(run_values, teacher_dirs), "max_steps": 100, **settings}).training
    assert checkpoint_count(training, 100) == count
