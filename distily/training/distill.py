"""``distily distill``: configuration in, student and metrics out."""

import os
import time
from functools import partial
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel, set_seed
from transformers.trainer_utils import get_last_checkpoint

import distily
from distily.config import DistillConfig
from distily.data.text import build_datasets, collate, load_training_documents
from distily.errors import DistilyConfigError
from distily.evaluation.heldout import heldout_metrics
from distily.models.architecture import max_positions, output_vocab_size
from distily.models.student import build_student
from distily.models.teacher import load_teacher, load_tokenizer
from distily.models.vocab import check_same_tokenizer, shared_vocab_size
from distily.objectives.objective import build_objective
from distily.outputs import directory_size, write_json_atomic
from distily.training.trainer import DistillationTrainer

METRICS_FILE = "metrics.json"  # written last: its presence marks a finished run
DEFAULT_MAX_SEQ_LENGTH = 1024


def resolve_resume(training) -> Optional[str | bool]:
    """``resume_from_checkpoint``: a checkpoint path, or true/last for the newest in output_dir."""
    value = training.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "no", ""):
        return None
    if str(value).lower() in ("true", "last", "yes"):
        if get_last_checkpoint(training.output_dir) is None:
            raise DistilyConfigError(
                f"resume_from_checkpoint={value!r} but {training.output_dir!r} holds no checkpoint; expected a "
                "directory with checkpoint-* subdirectories"
            )
        return True
    if not os.path.isdir(value):
        raise DistilyConfigError(f"resume_from_checkpoint={value!r} does not exist; expected a checkpoint directory")
    return value


def check_output_dir(training, resume) -> None:
    """Refuse to overwrite a finished run, or to restart over an unfinished one, unless told to."""
    output_dir = Path(training.output_dir)
    if training.overwrite_output_dir or resume or not output_dir.is_dir():
        return
    if (output_dir / METRICS_FILE).exists():
        raise DistilyConfigError(
            f"output_dir={str(output_dir)!r} holds a finished run; expected --overwrite_output_dir true to replace it "
            "or another output_dir"
        )
    if get_last_checkpoint(str(output_dir)) is not None:
        raise DistilyConfigError(
            f"output_dir={str(output_dir)!r} holds checkpoints of an unfinished run; expected "
            "--resume_from_checkpoint true to continue it or --overwrite_output_dir true to start over"
        )


def resolve_max_seq_length(requested: Optional[int], *models: PreTrainedModel) -> int:
    limits = [limit for limit in (max_positions(m.config) for m in models) if limit is not None]
    limit = min(limits) if limits else None
    if requested is None:
        return min(limit or DEFAULT_MAX_SEQ_LENGTH, DEFAULT_MAX_SEQ_LENGTH)
    if limit is not None and requested > limit:
        raise DistilyConfigError(
            f"max_seq_length={requested} exceeds the models' position limit {limit}; expected at most {limit}"
        )
    return requested


def parameter_count(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def _checkpoint_size(name_or_path: str, model: PreTrainedModel) -> int:
    """Bytes of a local checkpoint's weights; for a Hub model, of its weights in memory."""
    if os.path.isdir(name_or_path):
        return directory_size(name_or_path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_distillation(config: DistillConfig, command: Optional[str] = None) -> dict:
    """Distill, write the student and ``metrics.json`` into ``output_dir``, and return the metrics."""
    model_args, training = config.model, config.training
    if model_args.teacher_model_name_or_path is None:
        raise DistilyConfigError("teacher_model_name_or_path is not set; expected a Hub id or a local checkpoint")
    resume = resolve_resume(training)
    check_output_dir(training, resume)
    set_seed(training.seed)
    documents = load_training_documents(config.data)  # before the models: a bad dataset fails fast

    teacher = load_teacher(
        model_args.teacher_model_name_or_path, model_args.teacher_torch_dtype, model_args.trust_remote_code
    )
    tokenizer = load_tokenizer(model_args.teacher_model_name_or_path, "teacher", model_args.trust_remote_code)
    student = build_student(model_args, teacher)
    if model_args.student_model_name_or_path is not None:
        student_tokenizer = load_tokenizer(model_args.student_model_name_or_path, "student")
        check_same_tokenizer(tokenizer, student_tokenizer)
    vocab_size = shared_vocab_size(output_vocab_size(teacher), output_vocab_size(student), len(tokenizer))
    max_seq_length = resolve_max_seq_length(config.data.max_seq_length, teacher, student)
    data = build_datasets(config.data, tokenizer, max_seq_length, training.seed, documents)
    objective = build_objective(config.objective, teacher.config, student.config, vocab_size)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate_fn = partial(collate, pad_token_id=pad_token_id)

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        objective=objective,
        args=training,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collate_fn,
        processing_class=tokenizer,
    )
    evaluate = partial(
        heldout_metrics,
        dataset=data.eval,
        collate_fn=collate_fn,
        batch_size=training.per_device_eval_batch_size,
        vocab_size=vocab_size,
    )
    teacher_metrics = evaluate(teacher, desc="Evaluating teacher")
    before = {**trainer.evaluate(metric_key_prefix="before"), **_prefixed(evaluate(student, teacher=teacher), "before")}

    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started

    after = {**trainer.evaluate(metric_key_prefix="after"), **_prefixed(evaluate(student, teacher=teacher), "after")}
    trainer.save_model(training.output_dir)
    metrics = {
        "distily_version": distily.__version__,
        "command": command,
        "teacher": {
            **teacher_metrics,
            "parameters": parameter_count(teacher),
            "size_on_disk_bytes": _checkpoint_size(model_args.teacher_model_name_or_path, teacher),
        },
        "student": {
            "parameters": parameter_count(student),
            "size_on_disk_bytes": directory_size(training.output_dir),
            **before,
            **after,
        },
        "train": {**train_output.metrics, "wall_seconds": seconds},
        "max_seq_length": max_seq_length,
        "train_sequences": len(data.train),
        "eval_sequences": len(data.eval),
    }
    if trainer.is_world_process_zero():
        write_json_atomic(Path(training.output_dir) / METRICS_FILE, metrics)
    return metrics


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {f"{prefix}_{key}": value for key, value in metrics.items()}
