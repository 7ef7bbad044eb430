"""Numerical guards, atomic checkpoints, and exact resume after SIGKILL."""

import importlib.util
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from distily.config import parse_config, parse_record_config
from distily.errors import DistilyConfigError
from distily.objectives.objective import LogitsComponent
from distily.training.distill import run_distillation
from distily.training.guards import DeepSpeedSkippedSteps, NonFiniteStepGuard, all_finite
from distily.recording.run import run_recording
from distily.training.trainer import DistillationTrainer
from distily.training.trainer_internals import CHECKPOINT_STAGING_DIR
from store_values import store_values


def test_guard_skips_a_non_finite_step_and_stops_after_too_many():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    guard = NonFiniteStepGuard(optimizer, max_consecutive=2)
    weight.grad = torch.tensor([1.0, float("nan"), 0.0])
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3)) and not optimizer.state  # nothing moved
    assert weight.grad is None and guard.counts.skipped == 1
    weight.grad = torch.ones(3)
    optimizer.step()
    assert not torch.equal(weight.detach(), torch.ones(3)) and guard.counts.consecutive == 0
    weight.grad = torch.tensor([float("inf"), 0.0, 0.0])
    optimizer.step()
    weight.grad = torch.tensor([float("inf"), 0.0, 0.0])
    with pytest.raises(DistilyConfigError, match="2 optimizer steps in a row had non-finite gradients"):
        optimizer.step()


def test_steps_deepspeed_skipped_count_as_skipped_and_stop_the_run():
    """DeepSpeed skips a step of non-finite gradients itself, so the guard's wrapped step never ran for it; the
    callback counts it from the step's ``step_was_skipped`` (end to end: ``test_multiprocess``)."""
    weight = torch.nn.Parameter(torch.ones(3))
    guard = NonFiniteStepGuard(torch.optim.SGD([weight], lr=0.1), max_consecutive=2)
    callback = DeepSpeedSkippedSteps(lambda: guard)

    def step(skipped: bool) -> None:
        callback.on_optimizer_step(None, None, None, optimizer=SimpleNamespace(step_was_skipped=skipped))

    step(False)
    assert guard.counts.skipped == 0
    step(True)
    assert (guard.counts.skipped, guard.counts.consecutive) == (1, 1)
    with pytest.raises(DistilyConfigError, match="2 optimizer steps in a row had non-finite gradients"):
        step(True)


@pytest.mark.parametrize("modes", [["fsdp2", "fsdp1"], ["zero3"]], ids=["fsdp", "zero3"])
def test_a_non_finite_gradient_or_weight_on_one_process_stops_every_process(modes):
    """A student sharded by FSDP2 or FSDP1 over 2 processes (gloo), a NaN in one process's slice of the
    gradients: deciding alone the processes disagree (one steps, one skips); the guard decides together, so both
    skip, both take the next finite step, and both stop at the same step. A NaN in one process's slice of the
    weights: every process refuses to write them (once only that process did, and under ZeRO-3 none: a parameter
    there is empty, its slice held apart). ``guard_worker.py``; ZeRO-3 where deepspeed is installed."""
    if modes == ["zero3"] and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install --no-build-isolation deepspeed)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("guard_worker.py")), *modes]
    done = subprocess.run(command, env={"DS_ACCELERATOR": "cpu", **os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    passed = sorted(re.findall(r"ok (\w+) (\d)", done.stdout))  # the processes' lines may interleave
    assert passed == sorted((mode, rank) for mode in modes for rank in "01")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_finite_is_isfinite_over_every_element(dtype):
    """Against ``torch.isfinite``, including sums that overflow from finite terms (fp16's 65504 is reached by
    two of its large values) and infinities of both signs whose sum is NaN."""
    big = torch.finfo(dtype).max
    cases = [
        [torch.ones(4, 3, dtype=dtype), torch.zeros(5, dtype=dtype)],
        [torch.ones(4, dtype=dtype), torch.tensor([1.0, float("nan")], dtype=dtype)],
        [torch.tensor([float("inf"), 1.0], dtype=dtype)],
        [torch.tensor([float("inf"), -float("inf")], dtype=dtype)],
        [torch.full((3,), big, dtype=dtype), torch.tensor([-big, -big], dtype=dtype)],  # finite, sums overflow
        [torch.full((3,), big, dtype=dtype), torch.tensor([float("-inf")], dtype=dtype)],
        [],
    ]
    for tensors in cases:
        expected = all(bool(torch.isfinite(tensor).all()) for tensor in tensors)
        assert all_finite(iter(tensors)) is expected, tensors


def _nan_logits_at_steps_2_and_3(monkeypatch) -> None:
    """The logit loss NaN in the 2nd and 3rd training forwards (one micro-batch a step: steps 2 and 3)."""
    calls = {"n": 0}
    forward = LogitsComponent.forward

    def sometimes_nan(self, *args):
        value = forward(self, *args)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in (2, 3):
                return value * float("nan")
        return value

    monkeypatch.setattr(LogitsComponent, "forward", sometimes_nan)


def test_a_run_with_non_finite_losses_skips_those_steps(teacher_dirs, run_values, monkeypatch):
    _nan_logits_at_steps_2_and_3(monkeypatch)
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=5)
    skipped = []
    original = DistillationTrainer.train

    def train(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        skipped.append(self.nonfinite_guard.counts.skipped)
        return output

    monkeypatch.setattr(DistillationTrainer, "train", train)
    run_distillation(parse_config(**values))
    assert skipped == [2]
    weights = load_file(Path(values["output_dir"]) / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_an_interrupted_checkpoint_is_never_taken_for_a_complete_one(teacher_dirs, run_values, monkeypatch):
    values = run_values(
        teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, save_strategy="steps", save_steps=2
    )
    saves = {"n": 0}
    original = DistillationTrainer._save_rng_state

    def crash_on_second_save(self, output_dir):
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(DistillationTrainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        run_distillation(parse_config(**values))
    out = Path(values["output_dir"])
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert (out / CHECKPOINT_STAGING_DIR / "checkpoint-4").is_dir()  # the half-written one, set aside
    assert not (out / "metrics.json").exists()


def _launch(config_path: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "distily.cli", "distill", str(config_path), *flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


FEATURES = {"hidden_states_weight": 1.0, "hidden_states_norm": "affine"}  # a linear projector and a norm per layer pair


@pytest.mark.slow
@pytest.mark.parametrize(  # a live Llama teacher with features: its logits too, and the objective's state
    "arch, teacher_source, objective",
    [("gpt2", "live", {}), ("llama", "recorded", {}), ("llama", "live", FEATURES)],
    ids=["gpt2-live", "llama-recorded", "llama-features"],
)
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights_bit_for_bit(
    arch, teacher_source, objective, teacher_dirs, run_values, text_file, tmp_path
):
    """fp32 on the CPU: the resumed run's weights (and objective state) are the uninterrupted run's, bit for bit."""
    steps = 8
    base = run_values(
        teacher_dirs[arch],
        student_config_overrides={"num_hidden_layers": 2},
        max_steps=steps,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=0,  # keep every checkpoint
        learning_rate=1e-3,
        use_cpu=True,
        **objective,
    )
    if teacher_source == "recorded":  # a store of the teacher, read in the same order after the resume
        store = store_values(teacher_dirs[arch], text_file, tmp_path / "store")
        run_recording(parse_record_config(**store))
        keys = ("teacher_store", "record_top_k", "max_samples", "max_eval_samples")
        base = {**base, **{key: store[key] for key in keys}, "teacher_source": "recorded"}
    reference = {**base, "output_dir": str(tmp_path / "reference")}
    run_distillation(parse_config(**reference))

    killed = {**base, "output_dir": str(tmp_path / "killed")}
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(killed))
    kill_after = random.Random(arch).randint(2, steps - 2)
    process = _launch(config_path)
    deadline = time.time() + 300
    while not (Path(killed["output_dir"]) / f"checkpoint-{kill_after}").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (Path(killed["output_dir"]) / "metrics.json").exists()

    first = Path(killed["output_dir"]) / "checkpoint-1" / "model.safetensors"
    written = first.stat().st_mtime_ns
    resumed = _launch(config_path, "--resume_from_checkpoint", "true")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert first.stat().st_mtime_ns == written  # resumed, not started over
    # the exported student, and the last checkpoint's model: the student with the objective's projectors and norms
    files = ["model.safetensors"] + [f"checkpoint-{steps}/model.safetensors"] * bool(objective)
    for file in files:
        expected = load_file(Path(reference["output_dir"]) / file)
        actual = load_file(Path(killed["output_dir"]) / file)
        assert expected.keys() == actual.keys() and expected
        assert not objective or file == "model.safetensors" or any(name.startswith("objective.") for name in expected)
        different = [name for name in expected if not torch.equal(actual[name], expected[name])]
        assert not different, (file, different)


def test_the_logged_loss_and_train_loss_leave_the_skipped_steps_out(teacher_dirs, run_values, monkeypatch):
    """The Trainer counted a skipped step's non-finite loss as its window's running mean: 0.0 when the step began
    its window, so the logged loss read 0 and train_loss was pulled down. Logged every step here, steps 2 and 3 are
    skipped: they log NaN, and train_loss is the mean of the three steps taken."""
    _nan_logits_at_steps_2_and_3(monkeypatch)
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=5,
                        logging_steps=1)
    history = []
    original = DistillationTrainer.train

    def train(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        history.extend(self.state.log_history)
        return output

    monkeypatch.setattr(DistillationTrainer, "train", train)
    metrics = run_distillation(parse_config(**values))
    logged = {entry["step"]: entry for entry in history if "loss" in entry}
    assert all(math.isnan(logged[step]["loss"]) for step in (2, 3))
    taken = [logged[step]["loss"] for step in (1, 4, 5)]
    assert all(math.isfinite(loss) and loss > 1 for loss in taken)
    for step in (1, 4, 5):  # the loss is the weighted sum of the logged components, as the Trainer's was
        assert logged[step]["loss"] == pytest.approx(logged[step]["loss_logits"], rel=1e-3)
    assert metrics["train"]["train_loss"] == pytest.approx(sum(taken) / 3, rel=1e-3)
