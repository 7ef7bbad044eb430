"""Before training: the most bytes ``distily distill`` holds in output_dir at once, against the free space of its
filesystem.

A checkpoint holds the Trainer's model (the student with the objective's projectors and norms), the optimizer's
states of the parameters that get gradients (``preflight.optimizer_state_bytes``: Adam's two moments), the
tokenizer and a few small files; the Trainer writes a new one before it removes the oldest beyond
``save_total_limit`` (one more is kept with ``load_best_model_at_end``). At the end the student (weights, config,
tokenizer) and the reports are written beside the checkpoints kept. A packed BitNet export is written by
``distily export``, which checks its own output.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from distily.models.finite import raised_on_every_process
from distily.outputs import check_free_space, human_size, safetensors_size, saved_size, tree_size
from distily.training.arguments import DistillationTrainingArguments
from distily.training.preflight import optimizer_state_bytes, trained_parameters
from distily.training.run_dir import RunDir

CHECKPOINT_STATE_BYTES = 64 << 10  # trainer state, RNG states, scheduler, training arguments, checksums, pickling
REPORT_BYTES = 512 << 10  # beside the student: metrics.json, plots, the model card, run settings, logs
REMEDIES = "a smaller save_total_limit, fewer saves (save_steps, save_strategy=no) or another output_dir"


@dataclass(frozen=True)
class DiskEstimate:
    checkpoint: int  # bytes of one checkpoint
    checkpoints_at_peak: int  # on disk at once while one is written
    checkpoints_kept: int  # on disk when the student is saved
    student: int  # the student saved at the end, with the reports
    existing: int  # bytes already in output_dir, which the run replaces or rotates away

    @property
    def total(self) -> int:
        during = self.checkpoints_at_peak * self.checkpoint
        at_end = self.checkpoints_kept * self.checkpoint + self.student
        return max(max(during, at_end) - self.existing, 0)

    def describe(self) -> str:
        already = f"; less {human_size(self.existing)} already there" if self.existing else ""
        return (f" at most ({self.checkpoints_at_peak} checkpoints of {human_size(self.checkpoint)} at once; the "
                f"student and reports {human_size(self.student)}{already})")


def _every(steps: float, total_steps: int) -> int:
    """An interval in steps: ``steps``, or below 1 that fraction of the run, rounded up (as the Trainer does)."""
    return math.ceil(total_steps * steps) if steps < 1 else int(steps)


def checkpoint_count(training: DistillationTrainingArguments, total_steps: int) -> int:
    """How many checkpoints a run of ``total_steps`` writes, at most."""
    strategy = str(getattr(training.save_strategy, "value", training.save_strategy))
    if strategy == "no":
        return 0
    if strategy == "epoch":
        return math.ceil(training.num_train_epochs)
    if strategy == "best":  # at most one per evaluation
        return math.ceil(total_steps / _every(training.eval_steps or training.logging_steps, total_steps))
    return math.ceil(total_steps / _every(training.save_steps, total_steps))


def output_size(path: Path) -> int:
    """Bytes of the files under ``path`` but the run's lock file (0 where there is nothing)."""
    return tree_size(path, leaving_out={RunDir(path).lock})


def estimate_disk(trainer, total_steps: int) -> DiskEstimate:
    """The bytes of a checkpoint of ``trainer``'s model (a ``DistillationTrainer``'s: the student with the objective),
    of the student saved at the end, and how many checkpoints a run of ``total_steps`` holds at once."""
    training, student, objective = trainer.args, trainer.student, trainer.objective
    tokenizer_bytes = saved_size(trainer.processing_class.save_pretrained)
    checkpoint = (safetensors_size(trainer.model.state_dict()) + CHECKPOINT_STATE_BYTES + tokenizer_bytes
                  + optimizer_state_bytes(training.optim, trained_parameters(student, objective)))
    saves = checkpoint_count(training, total_steps)
    limit = training.save_total_limit or saves  # 0 or None: every checkpoint is kept
    kept = min(saves, limit + int(bool(training.load_best_model_at_end)))
    return DiskEstimate(
        checkpoint=checkpoint,
        checkpoints_at_peak=min(saves, kept + 1),
        checkpoints_kept=kept,
        student=safetensors_size(student.state_dict()) + tokenizer_bytes + saved_size(student.config.save_pretrained)
        + REPORT_BYTES,
        existing=output_size(Path(training.output_dir)),
    )


def check_disk(trainer, total_steps: int) -> str:
    """What the run writes at most (``estimate_disk``) against the free space for output_dir, as a line to log;
    refused (``disk_check``) when it exceeds it, by the processes that write (``should_save``) and, with a line, by
    the others (none is left waiting for them in the evaluation before training)."""
    estimate = estimate_disk(trainer, total_steps)
    with raised_on_every_process(trainer.process_group_device, "the disk check"):
        return check_free_space(trainer.args.output_dir, estimate.total, "run output", REMEDIES,
                                refuse=trainer.args.disk_check and trainer.args.should_save, detail=estimate.describe())
