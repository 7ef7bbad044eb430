"""The only places Distily reaches into private parts of transformers' Trainer and accelerate, each written for
the versions in ``WRITTEN_FOR`` (a warning names any other) and each pinned by a regression test in
``tests/training/test_trainer_internals.py`` that fails when the library behaviour it works around changes.

- ``StagedCheckpoints``: the Trainer writes a checkpoint file by file into ``checkpoint-N``, so a save cut
  short leaves a directory that ``get_last_checkpoint`` takes for a checkpoint. Here it is written into
  ``_checkpoint-staging/checkpoint-N`` and renamed into place once complete (``_get_output_dir`` and
  ``_save_checkpoint``: no public hook runs before the Trainer picks the directory). The best checkpoint the
  Trainer records (``load_best_model_at_end``) is then the staged path: every process, and the checkpoint's
  ``trainer_state.json``, are given the final one. The Trainer pushes a checkpoint (``hub_strategy`` other than
  ``end``) from inside its save, with the checkpoint still staged: ``push_checkpoint`` pushes it once in place.
- ``undo_evaluation_preparation``: an ``evaluate()`` before training prepares the model for evaluation only
  (no DDP wrapper) and marks it prepared; accelerate then refuses to prepare it for training, so each process
  would step on its own gradients.
- ``deepspeed_set_aside``: an ``evaluate()`` before training under DeepSpeed builds an engine for inference alone
  (``deepspeed_init(inference=True)``): ZeRO-1/2 refuse it ("ZeRO inference only makes sense with ZeRO Stage 3"),
  and after a ZeRO-3 one ``train()`` keeps that engine, prepares no optimizer, and fails at its first backward.
  With the Trainer's ``is_deepspeed_enabled`` set aside the evaluation is data parallelism's (each process runs its
  whole copy of the model, which DeepSpeed has not yet partitioned) and ``undo_evaluation_preparation`` follows.
- ``models_loaded_whole``: under a DeepSpeed ZeRO-3 config (``deepspeed`` in the training arguments, or
  accelerate's DeepSpeed launch, whatever its ``zero3_init_flag``) transformers partitions every model it loads
  or builds over the processes as it goes (``deepspeed.zero.Init``), and Distily's checks before training
  (causality, document isolation, framing, sizes) cannot run a partitioned model. Models are loaded whole with
  transformers' ZeRO config set aside (it keeps the config object only behind a private weak reference), and
  DeepSpeed partitions them afterwards: the Trainer's engine the student, ``placement.py`` the teacher
  (pinned by ``tests/training/test_zero3_loading.py``).
- ``quiet_resume_arguments_warning``: on a resume transformers warns of any ``logging_steps``, ``eval_steps``,
  ``save_steps`` or per-device batch that differs from the checkpoint's. Distily checks a resume itself
  (``run_settings.json``) and lets those change, and its fractional defaults never equal the step counts a
  checkpoint holds: every resume warned ``eval_steps: 0.25 (from args) != 30 (from trainer_state.json)``.
"""

import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from transformers import Trainer
from transformers.integrations import deepspeed as hf_deepspeed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, rotate_checkpoints
from transformers.utils.hub import PushInProgress, hf_api

from distily.models.finite import raised_on_every_process
from distily.training.guards import check_finite_weights

CHECKPOINT_STAGING_DIR = "_checkpoint-staging"  # checkpoints are written here, then renamed ("_": never pushed)
WRITTEN_FOR = {"transformers": "5.", "accelerate": "1.1"}  # version prefixes: transformers 5.x, accelerate 1.1x


def check_library_versions() -> None:
    """Warn when transformers or accelerate is a version these workarounds were not written for."""
    for package, prefix in WRITTEN_FOR.items():
        found = version(package)
        if not found.startswith(prefix):
            warnings.warn(
                f"{package} {found}: distily/training/trainer_internals.py was written for {package} {prefix}x; "
                "atomic checkpoints, DDP after a first evaluation and whole models under ZeRO-3 may not hold (run "
                "tests/training/test_trainer_internals.py and tests/training/test_zero3_loading.py)",
                stacklevel=2,
            )


RESUME_ARGUMENTS_WARNING = "Warning: The following arguments do not match the ones in the `trainer_state.json`"


class _WithoutResumeArgumentsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RESUME_ARGUMENTS_WARNING)


WITHOUT_RESUME_ARGUMENTS_WARNING = _WithoutResumeArgumentsWarning()


def quiet_resume_arguments_warning() -> None:
    """Drop transformers' warning that a resumed checkpoint's step settings differ (added once)."""
    logging.getLogger("transformers.trainer_utils").addFilter(WITHOUT_RESUME_ARGUMENTS_WARNING)


class StagedCheckpoints(Trainer):
    """A Trainer whose checkpoints appear only complete; weights that are not finite are never written."""

    _checkpoint_staging = None  # the run directory the Trainer writes into, while a checkpoint is written

    @property
    def process_group_device(self) -> Optional[torch.device]:
        """The device the processes' collectives run on, in a run on several processes; None on one."""
        return self.accelerator.device if self.args.world_size > 1 else None

    def _get_output_dir(self, trial):
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        check_finite_weights(self.model, process_group_device=self.process_group_device)
        run_dir = self._get_output_dir(trial)
        staging = os.path.join(run_dir, CHECKPOINT_STAGING_DIR)
        self._checkpoint_staging = staging
        try:
            with raised_on_every_process(self.process_group_device, "saving the checkpoint"):
                super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        best_is_this_one = self.state.best_model_checkpoint == staged
        if best_is_this_one:  # on every process: each loads the best model from it at the end of training
            self.state.best_model_checkpoint = final
        if self.args.should_save:
            if best_is_this_one:  # the state the Trainer wrote names the staged path, which a resume would not find
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            if not os.listdir(staging):  # else it holds a half-written checkpoint of an interrupted save
                os.rmdir(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        if self.args.push_to_hub:
            self.push_checkpoint(final)

    def _push_from_checkpoint(self, checkpoint_folder):
        """Nothing: the Trainer calls this from inside its save, with the checkpoint still staged."""

    def push_checkpoint(self, checkpoint: str) -> None:
        """Under ``hub_strategy`` every_save, checkpoint or all_checkpoints: the model saved into output_dir and
        pushed (``push_to_hub``, which leaves out ``_*`` and ``checkpoint-*``), and ``checkpoint`` pushed as the
        strategy says (``last-checkpoint``, or under its own name). The Trainer's own push ran from inside the save,
        the checkpoint still staged (uploaded from a folder renamed right after), and copied the checkpoint's
        weights into output_dir as the model: a subclass's model may be more than what it saves as the model
        (Distily's checkpoints hold the student under ``student.`` beside the objective's modules, and no config).
        Like the Trainer, it skips a save while the previous push is still uploading, unless ``hub_always_push``;
        every process calls this."""
        pushing = getattr(self, "push_in_progress", None)  # set on the main process only
        busy = pushing is not None and not pushing.is_done()
        skip = [self.args.hub_strategy == HubStrategy.END or (busy and not self.args.hub_always_push)]
        if broadcast_object_list(skip)[0]:  # the main process's answer: every process saves the model, or none
            return
        step = f"Training in progress, step {self.state.global_step}"
        jobs = [self.push_to_hub(commit_message=step, blocking=False)]  # every process: the model is saved first
        if not self.is_world_process_zero():
            return
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            last = self.args.hub_strategy == HubStrategy.CHECKPOINT
            jobs.append(hf_api().upload_folder(
                repo_id=self.hub_model_id, folder_path=checkpoint,
                path_in_repo="last-checkpoint" if last else os.path.basename(checkpoint),
                commit_message=f"{step}, checkpoint", token=self.args.hub_token, run_as_future=True,
                revision=self.args.hub_revision,
            ))
        self.push_in_progress = PushInProgress(jobs)


def undo_evaluation_preparation(accelerator: Accelerator, model: nn.Module) -> None:
    """Let ``accelerator.prepare`` wrap ``model`` for training (DDP) after an evaluation-only preparation: drop the
    prepared mark, the mixed-precision forward it installed (it is installed again) and its entry among the
    accelerator's models. Nothing to do when ``model`` was not prepared."""
    if not getattr(model, "_is_accelerate_prepared", False):
        return
    del model._is_accelerate_prepared
    if "_original_forward" in vars(model):
        model.forward = model._original_forward
        del model._original_forward
    accelerator._models = [prepared for prepared in accelerator._models if prepared is not model]


@contextmanager
def deepspeed_set_aside(trainer: Trainer):
    """While open, the Trainer evaluates without DeepSpeed (before training: see the module's docstring)."""
    enabled = trainer.is_deepspeed_enabled
    trainer.is_deepspeed_enabled = False
    try:
        yield
    finally:
        trainer.is_deepspeed_enabled = enabled


@contextmanager
def models_loaded_whole():
    """While open, transformers loads and builds models unpartitioned; the run's ZeRO config is back after."""
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
