"""The library behaviours ``distily/training/trainer_internals.py`` works around, pinned: when one of these tests
fails, transformers or accelerate changed, and the workaround must be checked (or removed)."""

import logging
import warnings
from pathlib import Path

import pytest
import torch
import transformers.trainer
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, Trainer, TrainerState, TrainingArguments
from transformers.trainer_utils import compare_trainer_and_checkpoint_args, get_last_checkpoint

from distily.training import trainer_internals
from distily.training.run_dir import RunDir
from distily.training.trainer_internals import (
    CHECKPOINT_STAGING_DIR,
    RESUME_ARGUMENTS_WARNING,
    WITHOUT_RESUME_ARGUMENTS_WARNING,
    StagedCheckpoints,
    check_library_versions,
    deepspeed_set_aside,
    quiet_resume_arguments_warning,
    undo_evaluation_preparation,
)
from hub_recorder import RecordingHub
from tiny import tiny_config


def _trainer(cls, output_dir: Path) -> Trainer:
    model = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1))
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True, save_strategy="no")
    return cls(model=model, args=args)


def _save_killed_after_the_weights(trainer: Trainer, monkeypatch) -> None:
    """A checkpoint save cut short after the model's weights, before the optimizer and trainer state."""
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.state.global_step = 1

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer._save_checkpoint(trainer.model, trial=None)


def test_the_trainer_alone_leaves_a_half_written_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    """What ``StagedCheckpoints`` works around: without it, get_last_checkpoint takes the half-written one."""
    _save_killed_after_the_weights(_trainer(Trainer, tmp_path), monkeypatch)
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    assert not (tmp_path / "checkpoint-1" / "trainer_state.json").exists()


def test_staged_checkpoints_appear_only_complete(tmp_path, monkeypatch):
    trainer = _trainer(StagedCheckpoints, tmp_path)
    _save_killed_after_the_weights(trainer, monkeypatch)
    assert get_last_checkpoint(str(tmp_path)) is None
    assert (tmp_path / CHECKPOINT_STAGING_DIR / "checkpoint-1").is_dir()  # set aside

    monkeypatch.undo()
    trainer._save_checkpoint(trainer.model, trial=None)
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    assert (tmp_path / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (tmp_path / CHECKPOINT_STAGING_DIR).exists()  # the half-written one was this one: replaced


def test_an_evaluation_only_preparation_blocks_the_training_one_until_undone():
    """What ``undo_evaluation_preparation`` works around: accelerate does not prepare a model twice, so after an
    evaluation-only preparation the training one (the DDP wrapper on several processes) would not happen."""
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: this test's precision
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = torch.nn.Linear(2, 2)
    forward = model.forward
    accelerator.prepare_model(model, evaluation_mode=True)
    assert model._is_accelerate_prepared and model.forward != forward  # mixed precision wrapped its forward
    assert accelerator.prepare_model(model) is model and model in accelerator._models  # not prepared again

    undo_evaluation_preparation(accelerator, model)
    assert not hasattr(model, "_is_accelerate_prepared") and model.forward == forward
    assert model not in accelerator._models
    accelerator.prepare_model(model)  # prepared afresh
    assert model._is_accelerate_prepared and model in accelerator._models
    AcceleratorState._reset_state(reset_partial_state=True)


def test_an_evaluation_before_training_under_deepspeed_builds_an_engine_for_inference_unless_set_aside(
        tmp_path, monkeypatch):
    """What ``deepspeed_set_aside`` works around: under DeepSpeed the Trainer builds an engine for inference alone for
    an evaluation before training (refused by ZeRO-1/2; after ZeRO-3 ``train()`` kept it). The flag set aside, the
    evaluation is data parallelism's (deepspeed itself is not needed to show it)."""
    def deepspeed_init(trainer, num_training_steps, inference=False):
        raise RuntimeError(f"deepspeed_init(inference={inference})")

    monkeypatch.setattr(transformers.trainer, "deepspeed_init", deepspeed_init)
    trainer = _trainer(Trainer, tmp_path)
    trainer.is_deepspeed_enabled = True  # as a DeepSpeed run's Trainer has it
    rows = [{"input_ids": torch.arange(1, 9), "labels": torch.arange(1, 9)}] * 2
    with pytest.raises(RuntimeError, match=r"inference=True"):
        trainer.evaluate(rows)
    with deepspeed_set_aside(trainer):
        metrics = trainer.evaluate(rows)
    assert trainer.is_deepspeed_enabled and metrics["eval_loss"] > 0


def test_a_library_version_the_workarounds_were_not_written_for_is_named(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_library_versions()  # the installed versions
    monkeypatch.setattr(trainer_internals, "version", lambda package: "9.0" if package == "accelerate" else "5.1")
    with pytest.warns(UserWarning, match="accelerate 9.0: distily/training/trainer_internals.py was written for"):
        check_library_versions()


def test_a_resume_does_not_warn_that_fractional_step_settings_differ_from_the_checkpoints(tmp_path):
    """Every resume of a run with Distily's fractional defaults warned 'eval_steps: 0.25 (from args) != 30 (from
    trainer_state.json)'. Pinned: transformers still warns so, with this message, without the filter."""
    library_logger = logging.getLogger("transformers.trainer_utils")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger.addHandler(handler)
    args = TrainingArguments(output_dir=str(tmp_path), eval_steps=0.25, save_steps=0.25, report_to="none", use_cpu=True)
    try:
        library_logger.removeFilter(WITHOUT_RESUME_ARGUMENTS_WARNING)
        compare_trainer_and_checkpoint_args(args, TrainerState(eval_steps=7919, save_steps=7920, train_batch_size=8))
        assert [record.getMessage().startswith(RESUME_ARGUMENTS_WARNING) for record in records] == [True]
        quiet_resume_arguments_warning()
        compare_trainer_and_checkpoint_args(args, TrainerState(eval_steps=7921, save_steps=7922, train_batch_size=8))
        assert len(records) == 1
    finally:
        library_logger.removeHandler(handler)


@pytest.mark.parametrize("saves", [True, False], ids=["main process", "other process"])
def test_the_best_checkpoint_is_recorded_where_it_was_renamed_to(tmp_path, monkeypatch, saves):
    """The Trainer records the best checkpoint (``load_best_model_at_end``) as the staged path. A process that does
    not save kept it and at the end of training loaded no best model (under DDP the processes then evaluated
    different weights); the checkpoint's trainer_state.json named it too, so a run resumed from it lost its best."""
    trainer = _trainer(StagedCheckpoints, tmp_path)
    trainer.args.save_strategy = "steps"
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.state.global_step = trainer.state.best_global_step = 1
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda args: saves))
    if not saves:  # what the main process wrote, with the other processes waiting
        (tmp_path / CHECKPOINT_STAGING_DIR / "checkpoint-1").mkdir(parents=True)
    trainer._save_checkpoint(trainer.model, trial=None)
    final = str(tmp_path / "checkpoint-1")
    assert trainer.state.best_model_checkpoint == final
    if saves:
        assert TrainerState.load_from_json(f"{final}/trainer_state.json").best_model_checkpoint == final


@pytest.mark.parametrize("strategy", ["every_save", "checkpoint", "all_checkpoints"])
def test_a_checkpoint_is_pushed_once_in_place_without_the_staging_folder(tmp_path, monkeypatch, strategy):
    """The Trainer pushes from inside its save, the checkpoint still staged: output_dir went up with the staging
    folder's ``checkpoint-N`` in it (optimizer state included), and the checkpoint as last-checkpoint from the staged
    folder, renamed away while the upload runs. Now: the model at the top, the checkpoint as the strategy
    says, from where it stays."""
    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    monkeypatch.setattr(trainer_internals, "hf_api", lambda: hub)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1))
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, save_strategy="steps",
                             push_to_hub=True, hub_model_id="someone/tiny", hub_strategy=strategy)
    trainer = StagedCheckpoints(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    for step in (1, 2):
        trainer.state.global_step = step
        trainer._save_checkpoint(trainer.model, trial=None)
    pushed = [path for upload in hub.uploads for path in upload["paths"]]
    assert not [path for path in pushed if CHECKPOINT_STAGING_DIR in path]
    checkpoints = {"every_save": set(), "checkpoint": {"last-checkpoint"},
                   "all_checkpoints": {"checkpoint-1", "checkpoint-2"}}[strategy]
    assert {path.split("/")[0] for path in pushed if "/" in path} == checkpoints
    assert [upload["message"] for upload in hub.uploads if "config.json" in upload["paths"]] == [
        "Training in progress, step 1", "Training in progress, step 2"]
    for checkpoint in checkpoints:
        assert {"optimizer.pt", "trainer_state.json"} <= {path.name for path in (hub.repo / checkpoint).iterdir()}
    assert AutoModelForCausalLM.from_pretrained(hub.repo).state_dict().keys() == model.state_dict().keys()


def test_what_a_killed_save_left_in_a_staging_folder_is_never_pushed(tmp_path, monkeypatch):
    """A checkpoint save killed part-way leaves its checkpoint in the staging folder, where it stays when the run
    resumes (a killed save of the student, its files in theirs until the next); the Trainer's push_to_hub leaves out
    only ``_*`` and ``checkpoint-*``, so the resumed run pushed them too."""
    trainer = _trainer(StagedCheckpoints, tmp_path / "run")
    _save_killed_after_the_weights(trainer, monkeypatch)
    monkeypatch.undo()
    RunDir(tmp_path / "run").student_staging.mkdir()
    (RunDir(tmp_path / "run").student_staging / "model.safetensors").write_bytes(b"half")
    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    trainer.push_to_hub()
    assert (tmp_path / "run" / CHECKPOINT_STAGING_DIR / "checkpoint-1" / "model.safetensors").is_file()
    assert "model.safetensors" in hub.uploads[0]["paths"]
    staged = (CHECKPOINT_STAGING_DIR, RunDir.STUDENT_STAGING)
    assert not [path for path in hub.uploads[0]["paths"] if path.startswith(staged)]
