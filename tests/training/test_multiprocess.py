"""Data-parallel distillation over processes (``torchrun``, gloo on CPU): 2 processes give the loss curve of
1 process with the same global batch, for a live teacher and for a recorded store, and a checkpoint written
by 2 processes resumes in 1; under FSDP2, on-policy distillation gives 1 process's curve. Each 2-process run is
a ``distily distill`` subprocess under ``torchrun``, as a user launches it; the 1-process runs it is compared with
run in the test's own process. DeepSpeed ZeRO-2 and ZeRO-3 run on its CPU accelerator where deepspeed is installed."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distily.config import parse_config, parse_record_config
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from store_values import store_values
from tiny import make_chat_tokenizer, make_conversations, save_tiny_model, write_chat_jsonl

FSDP_ON_CPU = Path(__file__).parents[1] / "fsdp_on_cpu.py"

# Relative difference allowed between the curves: the processes sum the same tokens in another order
# (and all-reduce the gradients), so they agree to float32 rounding, not bit for bit.
TOLERANCE = 1e-5
LOGGED = ("loss", "loss_logits", "grad_norm")


def _launch_on_two(program: list[str], values: dict, output_dir: Path, **overrides) -> subprocess.CompletedProcess:
    """``distily distill`` with ``values`` and ``overrides`` into ``output_dir`` on 2 processes under torchrun, each
    running ``program`` (``distily.cli``, or a script around it)."""
    config = output_dir.with_suffix(".yaml")
    config.write_text(yaml.safe_dump({**values, "output_dir": str(output_dir), **overrides}))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [sys.executable, *launcher, *program, "distill", str(config)]
    env = {"DS_ACCELERATOR": "cpu", **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _distill_on_two(values: dict, output_dir: Path, fsdp_version: Optional[int] = None, **overrides) -> dict:
    """Run ``distily distill`` on 2 processes (under FSDP ``fsdp_version`` when given, through
    ``fsdp_on_cpu.py``); the metrics it wrote."""
    if fsdp_version is not None:
        overrides.update(fsdp="full_shard auto_wrap", fsdp_config={"fsdp_version": fsdp_version})
    program = [str(FSDP_ON_CPU)] if fsdp_version is not None else ["-m", "distily.cli"]
    done = _launch_on_two(program, values, output_dir, **overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("estimated peak memory") == 1  # the main process reports, once for all
    return json.loads((output_dir / "metrics.json").read_text())


def _distill_here(values: dict, output_dir: Path, **overrides) -> dict:
    """One process, in this one (what ``distily distill`` runs without a launcher); the metrics it wrote."""
    return run_distillation(parse_config(**{**values, "output_dir": str(output_dir), **overrides}))


def _curve(output_dir: Path) -> dict[int, dict[str, float]]:
    """The logged training values per step, from the last checkpoint's ``trainer_state.json``."""
    last = max(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: {key: entry[key] for key in LOGGED} for entry in history if "loss" in entry}


def _assert_same_curve(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for step, values in expected.items():
        for key, value in values.items():
            assert actual[step][key] == pytest.approx(value, rel=TOLERANCE), (step, key, expected, actual)


def _run_values(values: dict) -> dict:
    return {
        **values,
        "student_config_overrides": {"num_hidden_layers": 2},
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "max_steps": 6,
    }


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch_and_resume_in_one(teacher_dirs, run_values, tmp_path):
    # Llama: no dropout, so no per-process randomness. 13 held-out rows in batches of 4 a process: accelerate fills
    # the 2 processes' last batches with 3 rows from the start, which the evaluation's losses must not count. The
    # best checkpoint is the one of the higher held-out loss (step 3): every process loads it at the end, so the
    # evaluation after training is of its weights on both (the second process once kept its last weights)
    values = {**_run_values(run_values(teacher_dirs["llama"])), "max_eval_samples": 13, "per_device_eval_batch_size": 4,
              "eval_strategy": "steps", "eval_steps": 3, "load_best_model_at_end": True,
              "metric_for_best_model": "loss", "greater_is_better": True}
    one = _distill_here(values, tmp_path / "one", per_device_train_batch_size=8)
    two = _distill_on_two(values, tmp_path / "two", per_device_train_batch_size=4)
    _assert_same_curve(_curve(tmp_path / "one"), _curve(tmp_path / "two"))
    state = json.loads((tmp_path / "two" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(tmp_path / "two" / "checkpoint-3")
    for key in ("before_loss", "before_loss_logits", "after_loss", "after_loss_logits", "after_kl_to_teacher"):
        assert two["student"][key] == pytest.approx(one["student"][key], rel=TOLERANCE), key
    assert two["train"]["tokens_seen"] == one["train"]["tokens_seen"]

    # the 2-process checkpoint at step 3, continued by 1 process, retraces the 2-process run's steps 4-6 (its
    # history holds steps 1-3 from the checkpoint)
    _distill_here(values, tmp_path / "resumed", per_device_train_batch_size=8,
                  resume_from_checkpoint=str(tmp_path / "two" / "checkpoint-3"))
    _assert_same_curve(_curve(tmp_path / "two"), _curve(tmp_path / "resumed"))


@pytest.mark.slow
def test_two_processes_match_one_on_a_recorded_store(teacher_dirs, text_file, tmp_path):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path)
    run_recording(parse_record_config(**values))
    values = _run_values({**values, "teacher_source": "recorded"})
    one = _distill_here(values, tmp_path / "one", per_device_train_batch_size=8)
    two = _distill_on_two(values, tmp_path / "two", per_device_train_batch_size=4)
    _assert_same_curve(_curve(tmp_path / "one"), _curve(tmp_path / "two"))
    for key in ("before_loss", "after_loss", "after_kl_to_teacher"):
        assert two["student"][key] == pytest.approx(one["student"][key], rel=TOLERANCE), key


@pytest.mark.slow
def test_two_processes_train_the_objectives_heads_like_one(teacher_dirs, run_values, tmp_path):
    """Linear projectors and affine norms are parameters of the Trainer's model: DDP averages their gradients."""
    values = _run_values(run_values(teacher_dirs["llama"], hidden_states_weight=1.0, hidden_states_norm="affine"))
    _distill_here(values, tmp_path / "one", per_device_train_batch_size=8)
    _distill_on_two(values, tmp_path / "two", per_device_train_batch_size=4)
    _assert_same_curve(_curve(tmp_path / "one"), _curve(tmp_path / "two"))
    one, two = (load_file(tmp_path / run / "checkpoint-6" / "model.safetensors") for run in ("one", "two"))
    heads = [name for name in one if name.startswith("objective.")]
    assert heads and one.keys() == two.keys()
    for name in heads:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_fsdp2_runs_on_policy_distillation_as_one_process_does(tmp_path):
    """Under FSDP2 (the student's layers and the teacher sharded, accelerate's FSDP on CPU processes: see
    ``fsdp_on_cpu.py``), 2 processes x batch 4 of on-policy batches (greedy, so the completions are the
    weights') with evaluations and a checkpoint follow 1 process x batch 8: the same curve, completions (the
    logged lengths count both processes'), held-out metrics and saved student (to float32 rounding)."""
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(tmp_path / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(160))
    values = {**_run_values(store_values(
        teacher, data, tmp_path, max_seq_length=128, lmbda=1.0, on_policy_temperature=0.0,
        on_policy_max_new_tokens=12, logits_loss="jsd",
    )), "max_steps": 4, "save_steps": 4}
    one = _distill_here(values, tmp_path / "one", per_device_train_batch_size=8)
    fsdp = _distill_on_two(values, tmp_path / "fsdp", fsdp_version=2, per_device_train_batch_size=4)
    assert (tmp_path / "fsdp" / "checkpoint-4" / "pytorch_model_fsdp.bin").exists()  # FSDP's own checkpoint
    _assert_same_curve(_curve(tmp_path / "one"), _curve(tmp_path / "fsdp"))
    lengths = [[entry["on_policy/mean_completion_length"] for entry in json.loads(
        (tmp_path / run / "checkpoint-4" / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
        for run in ("one", "fsdp")]
    assert lengths[0] == lengths[1] and len(set(lengths[0])) > 1  # the same completions, of several lengths
    for key in ("before_kl_to_teacher", "after_kl_to_teacher", "after_loss"):
        assert fsdp["student"][key] == pytest.approx(one["student"][key], rel=TOLERANCE), key
    saved = [load_file(tmp_path / run / "model.safetensors") for run in ("one", "fsdp")]
    assert saved[0].keys() == saved[1].keys()
    for name, tensor in saved[0].items():
        # Adam turns a float32-rounding difference in a near-zero gradient into up to a step (lr 1e-3)
        assert torch.allclose(tensor, saved[1][name], rtol=1e-5, atol=1e-4), name


def _zero_config(directory: Path, stage: int) -> str:
    """A DeepSpeed config file of ZeRO ``stage`` (the student saved whole under ZeRO-3), its batch sizes, clipping and
    precision the run's ("auto")."""
    config = directory / f"zero{stage}.json"
    config.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
    }))
    return str(config)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (pip install --no-build-isolation deepspeed)")
def test_deepspeed_zero2_and_zero3_match_one_process(teacher_dirs, run_values, tmp_path):
    """ZeRO-2 (the student's gradients and optimizer states sharded) and ZeRO-3 (its parameters too, and the
    teacher's), 2 processes x batch 4, follow 1 process x batch 8: the curve, the held-out losses before and after
    training and the saved student. ZeRO-2 once stopped at the evaluation before training ("ZeRO inference only
    makes sense with ZeRO Stage 3"), ZeRO-3 at its first backward (the Trainer kept that evaluation's engine)."""
    values = _run_values(run_values(teacher_dirs["llama"]))
    one = _distill_here(values, tmp_path / "one", per_device_train_batch_size=8)
    saved = load_file(tmp_path / "one" / "model.safetensors")
    for stage in (2, 3):
        run = tmp_path / f"zero{stage}"
        metrics = _distill_on_two(values, run, per_device_train_batch_size=4, deepspeed=_zero_config(tmp_path, stage))
        _assert_same_curve(_curve(tmp_path / "one"), _curve(run))
        for key in ("before_loss", "after_loss", "after_kl_to_teacher"):
            assert metrics["student"][key] == pytest.approx(one["student"][key], rel=TOLERANCE), (stage, key)
        student = load_file(run / "model.safetensors")
        assert student.keys() == saved.keys()
        for name, tensor in saved.items():
            assert torch.allclose(tensor, student[name], rtol=1e-5, atol=1e-5), (stage, name)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (pip install --no-build-isolation deepspeed)")
def test_deepspeed_runs_stop_after_max_nonfinite_steps(teacher_dirs, run_values, tmp_path):
    """DeepSpeed skips a step of non-finite gradients itself, before Distily's guard would: ZeRO-2 and ZeRO-3 runs
    whose losses are NaN from the second step once trained to the end (skipping, logging a loss of 0) and wrote a
    student as finished. Now they stop at the second such step in a row, as one process does, with nothing written."""
    values = {**_run_values(run_values(teacher_dirs["llama"])), "max_nonfinite_steps": 2, "save_strategy": "no"}
    for stage in (2, 3):
        run = tmp_path / f"zero{stage}"
        done = _launch_on_two([str(Path(__file__).with_name("nan_losses.py"))], values, run,
                              per_device_train_batch_size=4, deepspeed=_zero_config(tmp_path, stage))
        assert done.returncode != 0, stage
        assert "2 optimizer steps in a row had non-finite gradients" in done.stderr, done.stderr[-3000:]
        assert sorted(path.name for path in run.iterdir()) == ["run_settings.json"], stage
