"""``distily distill``: configuration in, student and metrics out."""

import itertools
import logging
import os
import time
from functools import partial
from typing import Optional

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, set_seed

import distily
from distily.config import DistillConfig
from distily.data.store import collate_recorded
from distily.data.framing import check_causality, check_document_isolation, model_inputs
from distily.data.text import build_datasets, check_token_ids, collate, load_training_documents
from distily.errors import DistilyConfigError, RunInterrupted
from distily.evaluation.arguments import HELDOUT_SET
from distily.evaluation.framing_check import check_framing
from distily.evaluation.harness import task_manager
from distily.evaluation.heldout import Evaluator
from distily.evaluation.run import benchmark, eval_set_metrics, named_eval_sets
from distily.models.architecture import output_vocab_size, resolve_max_seq_length, token_id_limit
from distily.models.precision import bf16_is_fast
from distily.models.student import build_student
from distily.models.summary import architecture_summary
from distily.models.teacher import load_teacher, load_tokenizer
from distily.models.vocab import check_same_tokenizer, check_tokenizer_fits, shared_vocab_size
from distily.objectives.losses import teacher_confidence
from distily.objectives.objective import build_objective
from distily.outputs import directory_size
from distily.reporting.run import write_reports
from distily.training.checkpoints import CheckpointChecksums
from distily.training.preflight import check_memory, estimate_memory
from distily.training.recorded import RecordedTeacher
from distily.training.run_dir import (
    RunDir,
    check_output_dir,
    check_resume,
    interrupted,
    output_dir_lock,
    prepare_output_dir,
    resolve_resume,
    run_settings,
    save_student,
)
from distily.training.trainer import DistillationTrainer

logger = logging.getLogger(__name__)

def parameter_count(model: PreTrainedModel) -> int:
    """Each parameter once (tied embeddings and LM head are one), 4-bit ones as the weights they stand for."""
    return model.num_parameters()


def _checkpoint_size(name_or_path: Optional[str], model: PreTrainedModel) -> int:
    """Bytes of a local checkpoint's weights; for a Hub model (or a recorded one not named), of its weights."""
    if name_or_path is not None and os.path.isdir(name_or_path):
        return directory_size(name_or_path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


CALIBRATION_BATCHES = 20


@torch.no_grad()
def calibrate_cakld_beta(teacher: PreTrainedModel, dataset, collate_fn, batch_size: int = 8) -> float:
    """CAKLD's beta: the teacher's mean confidence over the first training batches (as BitDistiller does,
    Du et al., 2024), estimated once before training."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
    device = next(teacher.parameters()).device
    batches = list(itertools.islice(loader, CALIBRATION_BATCHES))
    return teacher_confidence(
        (teacher(**model_inputs(b, device)).logits for b in batches),
        (b["attention_mask"].bool().to(device) for b in batches),
    )


def _load_models(config: DistillConfig, recorded: Optional[RecordedTeacher]):
    """(teacher, student, tokenizer): the teacher (quantized last, after the student copied its full-precision
    weights), the student built from it, and the shared tokenizer (checked against a student checkpoint's, and
    to give no id past either model's embedding); both models checked to be causal."""
    model_args = config.model
    if recorded is None:
        teacher = load_teacher(
            model_args.teacher_model_name_or_path, model_args.teacher_torch_dtype, model_args.trust_remote_code
        )
        check_causality(teacher, "teacher")  # before the student copies anything from it
        tokenizer = load_tokenizer(model_args.teacher_model_name_or_path, "teacher", model_args.trust_remote_code)
    else:
        teacher, tokenizer = recorded.teacher_for_student(model_args), recorded.tokenizer
    student = build_student(model_args, teacher)
    check_causality(student, "student")
    if recorded is None and model_args.teacher_quantization != "none":  # the student copied full-precision weights
        teacher = load_teacher(
            model_args.teacher_model_name_or_path,
            model_args.teacher_torch_dtype,
            model_args.trust_remote_code,
            model_args.teacher_quantization,
        )
    if model_args.student_model_name_or_path is not None:
        student_tokenizer = load_tokenizer(model_args.student_model_name_or_path, "student")
        check_same_tokenizer(tokenizer, student_tokenizer)
    for role, model in (("teacher", teacher), ("student", student)):
        check_tokenizer_fits(tokenizer, model, role)
    return teacher, student, tokenizer


def _training_data(config: DistillConfig, recorded, documents, teacher, student, tokenizer):
    """(train/eval datasets, max_seq_length): tokenized and packed text, or the store's sequences."""
    training = config.training
    if recorded is None:
        check_token_ids(documents, token_id_limit(teacher, student), config.data)  # pre-tokenized rows
        max_seq_length = resolve_max_seq_length(config.data.max_seq_length, teacher, student)
        # one process writes the tokenization cache, the others read it (one per node without a shared filesystem)
        with training.main_process_first(local=training.save_on_each_node, desc="tokenizing"):
            return build_datasets(config.data, tokenizer, max_seq_length, training.seed, documents), max_seq_length
    teacher.to("meta")  # its weights (if loaded to initialise the student) are not needed any more
    teacher.tie_weights()  # the move gave tied weights (embedding and LM head) a tensor each
    recorded.check_student(student)
    return recorded.datasets(config.data.max_samples, config.data.max_eval_samples), recorded.max_seq_length


def _evaluators(config, recorded, data, eval_sets, collate_fn, teacher, vocab_size, pad_token_id):
    """(the student's evaluator, a function giving the teacher's own metrics)."""
    batch_size = config.training.per_device_eval_batch_size
    if recorded is None:  # held-out split and named sets, against the teacher; its own metrics once
        evaluate_student = Evaluator({HELDOUT_SET: data.eval, **eval_sets}, collate_fn, batch_size, teacher, vocab_size)
        return evaluate_student, evaluate_student.teacher_metrics
    # held-out split against the store; named sets on the student alone (the teacher is not loaded)
    named = Evaluator(eval_sets, partial(collate, pad_token_id=pad_token_id), batch_size)
    heldout = partial(recorded.student_metrics, dataset=data.eval, collate_fn=collate_fn, batch_size=batch_size)

    def evaluate_student(model):
        return {**heldout(model), **named(model)}

    return evaluate_student, partial(recorded.teacher_metrics, data.eval)


def _objective(config: DistillConfig, recorded, teacher, student, train_data, vocab_size: int):
    """The objective, with CAKLD's beta calibrated on the teacher when not given, checked against a store."""
    objective_args = config.objective
    if objective_args.logits_loss == "cakld" and "beta" not in objective_args.logits_loss_kwargs:
        if recorded is not None:
            raise DistilyConfigError(
                "logits_loss=cakld from a store needs a fixed beta; expected logits_loss_kwargs beta"
            )
        objective_args.logits_loss_kwargs["beta"] = calibrate_cakld_beta(teacher, train_data, collate)
        logger.info(f"CAKLD beta (teacher's mean confidence) = {objective_args.logits_loss_kwargs['beta']:.4f}")
    objective = build_objective(
        objective_args, teacher.config, student.config, vocab_size, recorded_teacher=recorded is not None
    )
    if recorded is not None:
        recorded.check_objective(objective)
    return objective


def _teacher_summary(model_args, teacher: PreTrainedModel, own_metrics: dict) -> dict:
    """metrics.json's teacher: its own held-out metrics, size, precision and architecture; its memory only when
    it ran (a recorded teacher is not loaded)."""
    loaded = own_metrics.get("source") != "recorded"
    return {
        **own_metrics,
        "parameters": parameter_count(teacher),
        "size_on_disk_bytes": _checkpoint_size(model_args.teacher_model_name_or_path, teacher),
        "quantization": model_args.teacher_quantization,
        **({"memory_bytes": teacher.get_memory_footprint()} if loaded else {}),
        "architecture": architecture_summary(teacher),
    }


def _student_summary(training, student: PreTrainedModel, evaluations: dict) -> dict:
    """metrics.json's student: size (as saved in output_dir), the before/after evaluations, architecture."""
    return {
        "parameters": parameter_count(student),
        "size_on_disk_bytes": directory_size(training.output_dir),
        **evaluations,
        "architecture": architecture_summary(student),
    }


def _train_summary(training, train_output, seconds: float, state) -> dict:
    """metrics.json's train: the Trainer's figures, wall time, optimizer steps and the tokens read in training
    (the Trainer's count over all processes and sessions; without padding unless include_num_input_tokens_seen
    says otherwise, and absent when it is "no")."""
    counted = training.include_num_input_tokens_seen != "no"
    return {
        **train_output.metrics,
        "wall_seconds": seconds,
        "global_step": train_output.global_step,
        **({"tokens_seen": state.num_input_tokens_seen} if counted else {}),
    }


def run_distillation(config: DistillConfig, command: Optional[str] = None) -> dict:
    """Distill, write the student and ``metrics.json`` into ``output_dir``, and return the metrics."""
    model_args, training = config.model, config.training
    if not training.should_log:  # the main process reports for all; the others only log errors
        logging.getLogger("distily").setLevel(logging.ERROR)
    if training.bf16 and training.use_cpu and not bf16_is_fast(use_cpu=True):
        logger.warning(
            f"bf16=true on a CPU without native bf16 matmuls ({torch.backends.cpu.get_cpu_capability()}): they are "
            "emulated and run many times slower than fp32; expected bf16=false on this machine"
        )
    try:
        with output_dir_lock(training.output_dir, enabled=training.should_save):  # one run writes output_dir
            return _distill(config, command)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line saying how to go on
        raise RunInterrupted(interrupted(training, command)) from interrupt


def _distill(config: DistillConfig, command: Optional[str]) -> dict:
    model_args, training = config.model, config.training
    from_store = config.record.teacher_source == "recorded"
    resume = resolve_resume(training)
    check_output_dir(training, resume)
    settings = run_settings(config)  # before anything changes the config (CAKLD's calibrated beta)
    if resume is not None:
        check_resume(training, resume, settings)
    tasks = task_manager(config.evaluation) if config.evaluation.lm_eval_tasks else None  # unknown tasks fail now
    set_seed(training.seed)
    # before the models: a bad dataset fails fast (a recorded run trains on the store's, checked against any given)
    documents = load_training_documents(config.data) if config.data.dataset_name or not from_store else None
    recorded = RecordedTeacher(config, documents) if from_store else None

    teacher, student, tokenizer = _load_models(config, recorded)
    vocab_size = shared_vocab_size(output_vocab_size(teacher), output_vocab_size(student), len(tokenizer))
    data, max_seq_length = _training_data(config, recorded, documents, teacher, student, tokenizer)
    if data.framing.document_masks:  # every model must keep packed documents apart
        for role, model in (("teacher", teacher if recorded is None else None), ("student", student)):
            if model is not None:
                check_document_isolation(model, role)
    objective = _objective(config, recorded, teacher, student, data.train, vocab_size)
    if training.memory_check:  # a recorded teacher is on the meta device: it holds no memory during training
        estimate = estimate_memory(
            teacher, student, objective, training.per_device_train_batch_size, max_seq_length,
            training.bf16 or training.fp16, training.optim,
        )
        logger.info(check_memory(estimate, training.device))
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate_fn = partial(collate if recorded is None else collate_recorded, pad_token_id=pad_token_id)
    framing_metrics = {"packing": data.framing.packing}
    if recorded is None and data.eval_documents is not None:
        framing_metrics = check_framing(
            teacher, data.eval_documents, tokenizer, data.framing, config.data.dataset_text_column, collate_fn,
            training.per_device_eval_batch_size,
        ) or framing_metrics

    with training.main_process_first(local=training.save_on_each_node, desc="tokenizing the eval sets"):
        eval_sets = named_eval_sets(config, tokenizer, max_seq_length)
    eval_set_checks = eval_set_metrics(config, eval_sets, data.train, data.eval, max_seq_length)
    evaluate_student, teacher_metrics = _evaluators(
        config, recorded, data, eval_sets, collate_fn, teacher, vocab_size, pad_token_id
    )

    prepare_output_dir(training, resume, settings)  # the first write: a replaced run's finished marker goes first
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher if recorded is None else None,
        recorded_teacher=recorded,
        objective=objective,
        evaluator=evaluate_student,
        args=config.trainer_arguments(),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collate_fn,
        processing_class=tokenizer,
        callbacks=[CheckpointChecksums()],
    )
    before = trainer.evaluate(metric_key_prefix="before")

    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started

    after = trainer.evaluate(metric_key_prefix="after")
    save_student(trainer, training.output_dir)  # pushed once, at the end, with the model card
    metrics = {
        "distily_version": distily.__version__,
        "command": command,
        "teacher": _teacher_summary(model_args, teacher, teacher_metrics()),
        "student": _student_summary(training, student, {**before, **after}),
        "train": _train_summary(training, train_output, seconds, trainer.state),
        "max_seq_length": max_seq_length,
        "framing": framing_metrics,
        "train_sequences": len(data.train),
        "eval_sequences": len(data.eval),
        **eval_set_checks,
    }
    if trainer.is_world_process_zero():
        if tasks is not None:
            benchmark(metrics, config, student, teacher if recorded is None else None, tokenizer, tasks)
        write_reports(trainer, config, metrics, objective)
        RunDir(training.output_dir).write_metrics(metrics)
    if training.push_to_hub:
        trainer.push_to_hub()  # uploads output_dir, with the model card as README.md
    return metrics
