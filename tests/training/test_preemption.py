"""A run stopped by SIGTERM (a scheduler's preemption) saves the step under way and resumes from it to the
uninterrupted run's student, bit for bit (fp32 on the CPU); before training it stops at once; on 2 processes that see
the signal at different steps, both stop at the same one. ``distily record`` stops between shards."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distily.config import parse_config
from distily.errors import RunInterrupted
from distily.training.checkpoints import checkpoint_problem
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir
from distily.training.trainer import DistillationTrainer
from interrupts import signal_at_training_step

SIGNAL_WORKER = Path(__file__).with_name("signal_worker.py")
RUN = {"student_config_overrides": {"num_hidden_layers": 2}, "max_steps": 8, "max_samples": 40,
       "learning_rate": 1e-3, "use_cpu": True, "logging_steps": 1}


def _checkpoint_steps(output_dir) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in RunDir(output_dir).checkpoints())


def test_sigterm_saves_the_step_under_way_and_the_resumed_run_ends_with_the_uninterrupted_student(
        teacher_dirs, run_values, tmp_path, monkeypatch):
    """SIGTERM in the first micro-batch of step 5 (2 a step), with no checkpoints asked for: the step is finished
    and checkpointed, the run stops there unfinished (no metrics.json, no student), and the handlers are put back."""
    base = run_values(teacher_dirs["llama"], **RUN, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    reference = {**base, "output_dir": str(tmp_path / "reference")}
    expected = run_distillation(parse_config(**reference))
    stopped = {**base, "output_dir": str(tmp_path / "stopped")}
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        signal_at_training_step(patch, 9, signal.SIGTERM)
        with pytest.raises(RunInterrupted) as stop:
            run_distillation(parse_config(**stopped))
    run = RunDir(stopped["output_dir"])
    checkpoint = run.path / "checkpoint-5"
    assert str(stop.value) == (f"stopped on SIGTERM at step 5; the last checkpoint is {str(checkpoint)!r}, "
                               "resume_from_checkpoint=true continues it")
    assert stop.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) is handler
    assert _checkpoint_steps(run.path) == [5] and checkpoint_problem(checkpoint) is None
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 5
    assert not run.is_finished() and not run.student_weights()

    found = run_distillation(parse_config(**stopped, resume_from_checkpoint="true"))
    assert found["train"]["resumed_from_step"] == 5 and found["train"]["global_step"] == 8
    assert found["student"]["after_loss"] == expected["student"]["after_loss"]
    assert found["train"]["train_loss"] == pytest.approx(expected["train"]["train_loss"], rel=1e-6)
    weights = [load_file(Path(values["output_dir"]) / "model.safetensors") for values in (reference, stopped)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_a_step_that_save_strategy_best_would_not_save_is_saved(teacher_dirs, run_values, tmp_path, monkeypatch):
    """save_strategy=best saves an evaluated step only when it is the best: step 6's evaluation is not (the first
    one, step 3's, is the best here), and SIGTERM in step 6 still leaves its checkpoint."""
    best = {"eval_strategy": "steps", "eval_steps": 3, "save_strategy": "best", "metric_for_best_model": "loss",
            "greater_is_better": True}
    values = run_values(teacher_dirs["llama"], **RUN, **best)
    signal_at_training_step(monkeypatch, 6, signal.SIGTERM)
    with pytest.raises(RunInterrupted, match="^stopped on SIGTERM at step 6; the last checkpoint is .*checkpoint-6'"):
        run_distillation(parse_config(**values))
    assert _checkpoint_steps(values["output_dir"]) == [3, 6]


def test_a_signal_during_a_checkpoint_write_stops_at_that_checkpoint(teacher_dirs, run_values, monkeypatch):
    """SIGTERM while step 4's checkpoint (save_steps) is written: that checkpoint is the step under way, so the run
    stops there; it ran step 5 and wrote a second checkpoint first (as long again as a scheduler's grace period)."""
    values = run_values(teacher_dirs["llama"], **RUN, save_strategy="steps", save_steps=4)
    save = DistillationTrainer._save_checkpoint

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "_save_checkpoint", signalled)
    with pytest.raises(RunInterrupted, match="^stopped on SIGTERM at step 4; the last checkpoint is .*checkpoint-4'"):
        run_distillation(parse_config(**values))
    assert _checkpoint_steps(values["output_dir"]) == [4]
    assert checkpoint_problem(Path(values["output_dir"]) / "checkpoint-4") is None


@pytest.mark.parametrize("at_step", [4, 8])
def test_a_signal_during_an_evaluation_stops_at_that_step_with_its_checkpoint(teacher_dirs, run_values, monkeypatch,
                                                                             at_step):
    """SIGTERM in step 4's or the last step's evaluation (eval_steps 4) with save_strategy=no: step 4's ran one more
    step first; the last step's was never checkpointed (the loop had ended), so the whole run was lost ('nothing to
    resume, start it again')."""
    values = run_values(teacher_dirs["llama"], **RUN, eval_strategy="steps", eval_steps=4)
    evaluate = DistillationTrainer.evaluate

    def signalled(self, *args, **kwargs):
        if self.state.global_step == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "evaluate", signalled)
    with pytest.raises(RunInterrupted, match=f"^stopped on SIGTERM at step {at_step}; the last checkpoint is "
                                             f".*checkpoint-{at_step}'"):
        run_distillation(parse_config(**values))
    assert _checkpoint_steps(values["output_dir"]) == [at_step]
    assert checkpoint_problem(Path(values["output_dir"]) / f"checkpoint-{at_step}") is None


def test_a_stop_signal_before_training_stops_at_once(teacher_dirs, run_values, tmp_path, monkeypatch):
    """SIGUSR1 in the evaluation before training: stopped there, with nothing to resume."""
    values = run_values(teacher_dirs["llama"], **RUN)
    evaluate, steps = DistillationTrainer.evaluate_before_training, []

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "evaluate_before_training", signalled)
    monkeypatch.setattr(DistillationTrainer, "training_step", lambda *args, **kwargs: steps.append(None))
    with pytest.raises(RunInterrupted) as stop:
        run_distillation(parse_config(**values))
    assert str(stop.value) == (f"stopped on SIGUSR1 before the first checkpoint in {values['output_dir']!r}; "
                               "nothing to resume, start it again")
    assert stop.value.exit_status == 128 + signal.SIGUSR1
    assert not steps and not RunDir(values["output_dir"]).checkpoints()


def _launch(values: dict, output_dir: Path, processes: int, rank: int, step: int) -> subprocess.CompletedProcess:
    """``distily distill`` with ``values`` into ``output_dir`` (on ``processes`` under torchrun when more than 1), with
    SIGTERM sent to process ``rank`` as its ``step``-th micro-batch starts (``signal_worker.py``)."""
    config = output_dir.with_suffix(".yaml")
    config.write_text(yaml.safe_dump({**values, "output_dir": str(output_dir)}))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [sys.executable, *(launcher if processes > 1 else []), str(SIGNAL_WORKER), str(rank), str(step),
               "distill", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SIGNAL_WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # processes left waiting in a collective ignore a second SIGTERM
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_distily_distill_sent_sigterm_exits_143_with_the_command_that_resumes(teacher_dirs, run_values, tmp_path):
    values = run_values(teacher_dirs["llama"], **RUN, save_strategy="steps", save_steps=2)
    output_dir = tmp_path / "run"
    done = _launch(values, output_dir, processes=1, rank=0, step=3)
    assert done.returncode == 143, done.stderr[-3000:]
    config = output_dir.with_suffix(".yaml")
    assert done.stderr.splitlines()[-1] == (
        f"distily distill: stopped on SIGTERM at step 3; the last checkpoint is {str(output_dir / 'checkpoint-3')!r}, "
        f"resume with: distily distill {config} --resume_from_checkpoint true")
    assert _checkpoint_steps(output_dir) == [2, 3] and not RunDir(output_dir).is_finished()


@pytest.mark.slow
def test_processes_that_see_sigterm_at_different_steps_stop_at_the_same_step(teacher_dirs, run_values, tmp_path):
    """SIGTERM to process 1 alone, at step 3 (as a launcher's forwarded signal may reach one process a step later
    than another): process 0 writes the checkpoint of step 3 and both stop there."""
    values = run_values(teacher_dirs["llama"], **RUN)
    output_dir = tmp_path / "run"
    done = _launch(values, output_dir, processes=2, rank=1, step=3)
    assert done.returncode != 0
    assert "distily distill: stopped on SIGTERM at step 3; the last checkpoint is" in done.stderr, done.stderr[-3000:]
    assert _checkpoint_steps(output_dir) == [3] and checkpoint_problem(output_dir / "checkpoint-3") is None
    assert not RunDir(output_dir).is_finished()
