"""``distily distill``: configuration in, student and metrics out."""

import logging
import time
from typing import Optional

import torch
from transformers import PreTrainedModel, set_seed

import distily
from distily.config import DistillConfig
from distily.data.framing import check_causality, check_models_keep_documents_apart
from distily.data.training_data import DistillationData
from distily.errors import RunInterrupted
from distily.evaluation.harness import check_chat_template, task_manager
from distily.evaluation.generations import with_generations
from distily.evaluation.run import benchmark, eval_set_metrics, generation_evaluator, named_eval_sets
from distily.logs import close_progress_bars
from distily.metrics import AFTER, BEFORE, RunMetrics, StudentMetrics, TrainMetrics
from distily.models.precision import bf16_is_fast
from distily.models.pruning import Calibration, pruning_summary
from distily.models.student import build_student, layers_from_teacher, load_student
from distily.models.summary import architecture_summary, parameter_count
from distily.models.vocab import check_tokenizer_fits
from distily.objectives.objective import build_objective, check_objective
from distily.outputs import directory_size
from distily.preemption import StopSignals
from distily.reporting.run import write_reports
from distily.teachers.placement import teacher_is_sharded
from distily.teachers.source import TeacherSource, stop_at_end_of_turn
from distily.teachers.sources import open_teacher, settled_config
from distily.training.checkpoints import CheckpointChecksums
from distily.training.disk_space import check_disk
from distily.training.guards import check_finite_weights
from distily.training.on_policy import on_policy_batches
from distily.training.output_lock import output_dir_lock
from distily.training.preemption import StopAtSignal
from distily.training.preflight import (
    check_memory, checkpointed_every_n_layers, estimate_memory, padded_row_length, parameter_shards,
)
from distily.training.resolved import ResolvedRun
from distily.training.run_dir import (
    RunDir,
    check_output_dir,
    check_resume,
    check_steps,
    check_teacher_weights,
    check_train_rows,
    continued_run,
    finished_run_left,
    interrupted,
    pin_chat_template_date,
    prepare_output_dir,
    resolve_resume,
    run_settings,
    save_student,
)
from distily.training.trainer import DistillationTrainer
from distily.training.trainer_internals import models_loaded_whole

logger = logging.getLogger(__name__)


def _load_student(config: DistillConfig, teacher: TeacherSource) -> tuple[PreTrainedModel, DistillationData]:
    """The student built from the teacher (checked to be causal), and the run's data, read once each tokenizer is
    checked to give no id past its model's embedding. The data depend on the student's shape (the length it takes),
    so they are read once it is built; a pruned student (student_init=pruned) is initialised after that, from the
    teacher's activations on the first training rows."""
    data = []

    def read_data(student: PreTrainedModel) -> DistillationData:
        if not data:
            check_tokenizer_fits(teacher.tokenizer, teacher.model, "teacher")
            check_tokenizer_fits(teacher.student_tokenizer, student, "student")
            data.append(teacher.datasets(student))
        return data[0]

    calibration = Calibration(lambda student: read_data(student).train, config.model.pruning_calibration_samples,
                              config.training.device)
    student = build_student(config.model, teacher.student_init_model(), teacher.student_token_map, calibration)
    check_causality(student, "student")
    teacher.student_built(student)
    template = teacher.student_chat_template()
    if template is not None:
        stop_at_end_of_turn(student, teacher.student_tokenizer, template)
    return student, read_data(student)


def _student_summary(training, shape: tuple[int, dict], layers: dict, evaluations: dict) -> StudentMetrics:
    """metrics.json's student: size (as saved in output_dir), the teacher layers it stands for (``layers``:
    ``layers_from_teacher``), the before/after evaluations, and its parameter count and architecture (``shape``,
    measured before the Trainer could shard it over the processes: a sharded parameter counts only its shard)."""
    parameters, architecture = shape
    return StudentMetrics(
        parameters=parameters,
        size_on_disk_bytes=directory_size(training.output_dir),
        evaluations=evaluations,
        architecture=architecture,
        **layers,
    )


def _benchmarked_models(trainer: DistillationTrainer, student: PreTrainedModel, teacher: TeacherSource,
                        config: DistillConfig) -> tuple[PreTrainedModel, Optional[PreTrainedModel]]:
    """The student and teacher lm-eval runs on, on the main process alone. A model sharded over the processes
    (FSDP, ZeRO-3) cannot run there: the student is then its saved copy, loaded whole on this process's device,
    and a sharded teacher is not benchmarked here (``distily eval`` runs it)."""
    if trainer.student_is_sharded():
        student = load_student(config.training.output_dir, config.model.trust_remote_code)
        student = student.to(trainer.args.device).eval()
    if teacher.live_model is not None and teacher_is_sharded(trainer.accelerator):
        logger.warning("lm_eval_tasks: the teacher is sharded over the processes, so its lm-eval results are not "
                       "measured in this run; expected `distily eval` on the teacher for them")
        return student, None
    return student, teacher.live_model


def _train_summary(training, train_output, seconds: float, trainer: DistillationTrainer) -> TrainMetrics:
    """metrics.json's train: the Trainer's figures, the whole run's mean training loss and wall time (over every
    session of a resumed run), optimizer steps and the tokens read in training (the Trainer's count over all
    processes and sessions; without padding unless include_num_input_tokens_seen says otherwise, and absent when it
    is "no")."""
    counted = training.include_num_input_tokens_seen != "no"
    totals = trainer.run_totals()
    # the session's train_loss as DistillationTrainer.log corrected it (over the steps taken, when some were skipped)
    loss, seconds = totals.whole_run(train_output.metrics["train_loss"], seconds, train_output.global_step)
    return TrainMetrics(
        trainer={**train_output.metrics, "train_loss": loss},
        wall_seconds=seconds,
        global_step=train_output.global_step,
        tokens_seen=trainer.state.num_input_tokens_seen if counted else None,
        resumed_from_step=totals.resumed_from_step or None,
    )


def run_distillation(config: DistillConfig, command: Optional[str] = None) -> dict:
    """Distill, write the student and ``metrics.json`` into ``output_dir``, and return the metrics (as
    ``RunMetrics.to_dict()``: metrics.json's content). A stop signal (SIGTERM, SIGUSR1: ``distily.preemption``) in
    training stops it with a checkpoint of the step under way; before training, at once. With
    resume_from_checkpoint=auto, a finished run in output_dir is left as it is: its metrics are returned."""
    training = config.training
    check_objective(config.objective)
    if not training.should_log:  # the main process reports for all; the others only log errors
        logging.getLogger("distily").setLevel(logging.ERROR)
    finished = finished_run_left(training)
    if finished is not None:  # a job requeued after its run finished: nothing to do, nothing written
        logger.info(finished)
        return RunDir(training.output_dir).read_metrics().to_dict()
    if training.bf16 and training.use_cpu and not bf16_is_fast(use_cpu=True):
        logger.warning(
            f"bf16=true on a CPU without native bf16 matmuls ({torch.backends.cpu.get_cpu_capability()}): they are "
            "emulated and run many times slower than fp32; expected bf16=false on this machine"
        )
    try:
        # one run writes output_dir
        with StopSignals() as signals, output_dir_lock(training.output_dir, enabled=training.should_save):
            return _distill(config, command, signals)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or a stop signal: one line saying how to go on
        close_progress_bars()  # what is logged while the line is composed starts a line too
        stop = RunInterrupted.of(interrupt)
        raise RunInterrupted(interrupted(training, command, str(stop)), stop.signal_number) from interrupt


def _distill(config: DistillConfig, command: Optional[str], signals: StopSignals) -> dict:
    config = settled_config(config)  # a store's split: the run records and reports the values its rows were drawn with
    training = config.training
    resume = resolve_resume(training)
    pin_chat_template_date(config, continued_run(training, resume))
    settings = run_settings(config)
    check_output_dir(training, resume, settings)
    if resume is not None:
        check_resume(training, resume, settings)
    tasks = task_manager(config.evaluation) if config.evaluation.lm_eval_tasks else None  # unknown tasks fail now
    set_seed(training.seed)

    shards = parameter_shards(training)  # read before models_loaded_whole sets a ZeRO-3 config aside
    with models_loaded_whole():  # checked before training; DeepSpeed ZeRO-3 partitions them after
        teacher = open_teacher(config)
        check_chat_template(teacher.tokenizer, config.evaluation)
        student, data = _load_student(config, teacher)
        shape = parameter_count(student), architecture_summary(student)
        layers = {**layers_from_teacher(config.model, teacher.model.config, student.config),
                  **pruning_summary(config.model, teacher.model.config, student.config, len(data.train))}
        vocab_size = teacher.logit_columns(student)
        check_train_rows(resume, settings, data.train)  # recorded with the settings; a resume on other rows is refused
        check_teacher_weights(resume, settings, teacher.live_model)  # and on another live teacher at its path
        resolved_objective = teacher.resolve_objective(config.objective, data.train)
        run = ResolvedRun(config, resolved_objective, data.max_seq_length, vocab_size)
        objective = build_objective(run.objective, teacher.model.config, student.config, vocab_size,
                                    teacher.logits_component)
        teacher.check_objective(objective)
        if training.memory_check:  # a recorded teacher holds no memory during training
            row_length = padded_row_length(training, teacher.longest_train_row(data), data.max_seq_length)
            estimate = estimate_memory(
                teacher.live_model, student, objective, training.per_device_train_batch_size, row_length,
                training.bf16 or training.fp16, training.optim, training.device.type,
                checkpointed_every_n_layers(training), shards,
                accumulation_steps=training.gradient_accumulation_steps,
            )
            logger.info(check_memory(estimate, training.device))
        collate_fn = teacher.collate_fn()
        framing_metrics = teacher.framing_metrics(data, collate_fn)

        with training.main_process_first(local=training.save_on_each_node, desc="tokenizing the eval sets"):
            eval_sets = named_eval_sets(config, teacher.student_tokenizer, run.max_seq_length)
        eval_set_sources, eval_overlap = eval_set_metrics(config, eval_sets, data.train, data.eval, run.max_seq_length)
        # every model that runs keeps packed documents apart, in training and in every evaluation
        check_models_keep_documents_apart((*teacher.probed_models(), ("student", student)), data.framing,
                                          eval_sets.values())
        same_tokens = teacher.student_tokenizer is teacher.tokenizer
        generations = generation_evaluator(
            config, teacher.student_tokenizer, teacher.live_model if same_tokens else None, vocab_size,
            config.data.chat_template if same_tokens else config.data.student_chat_template,
        )
        evaluate_student = with_generations(teacher.evaluator(data, eval_sets, collate_fn, vocab_size), generations)

    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=objective,
        evaluator=evaluate_student,
        on_policy=on_policy_batches(
            training, student, teacher.student_tokenizer, teacher.student_pad_token_id, run.max_seq_length,
            teacher.completion_alignment(student, run.max_seq_length), teacher.pad_token_id,
            teacher.student_chat_template(), config.model.trust_remote_code,
        ),
        args=config.trainer_arguments(),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collate_fn,
        processing_class=teacher.student_tokenizer,
        callbacks=[CheckpointChecksums(), StopAtSignal(signals)],
    )
    total_steps = training.max_steps if training.max_steps > 0 else trainer.training_steps()  # by epochs: from the data
    training.check_bitnet_schedule(total_steps)
    check_steps(training, resume, total_steps)
    logger.info(check_disk(trainer, total_steps))  # before the first write
    prepare_output_dir(training, resume, settings)  # the first write: a replaced run's finished marker goes first
    before = trainer.evaluate_before_training(BEFORE)

    started = time.perf_counter()
    with signals.deferred():  # a stop signal ends training with a checkpoint of the step under way
        train_output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    # weights that are not finite leave an unfinished run: no metrics.json
    check_finite_weights(trainer.model, written="student", process_group_device=trainer.process_group_device)

    after = trainer.evaluate_after_training(AFTER)
    save_student(trainer, training.output_dir)  # pushed once, at the end, with the model card
    metrics = RunMetrics(
        distily_version=distily.__version__,
        command=command,
        teacher=teacher.summary().with_metrics(generations.teacher_metrics() if generations else {}),
        student=_student_summary(training, shape, layers, {**before, **after}),
        train=_train_summary(training, train_output, seconds, trainer),
        max_seq_length=run.max_seq_length,
        framing=framing_metrics,
        train_sequences=len(data.train),
        eval_sequences=len(data.eval),
        eval_sets=eval_set_sources,
        eval_overlap=eval_overlap,
    )
    if trainer.is_world_process_zero():
        if tasks is not None:
            metrics = metrics.with_benchmarks(
                *benchmark(config, *_benchmarked_models(trainer, student, teacher, config), teacher.tokenizer, tasks)
            )
        write_reports(trainer, run.reported_config, metrics, objective)
        RunDir(training.output_dir).write_metrics(metrics)
    if training.push_to_hub:
        trainer.push_to_hub()  # uploads output_dir, with the model card as README.md
    return metrics.to_dict()
