"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is the distillation objective.

It only orchestrates: the teacher runs under ``no_grad``, the objective computes the loss, and
everything ``TrainingArguments`` offers (optimizers, schedules, accumulation, logging, checkpoints,
``report_to``, mixed precision) is the Trainer's own.
"""

import os
from typing import Callable, Optional, TypeVar

import torch
from accelerate import Accelerator
from huggingface_hub import ModelCard
from transformers import PreTrainedModel
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distily.data.framing import LOSS_MASK
from distily.errors import DistilyConfigError
from distily.models.bitnet import bitlinear_modules
from distily.objectives.objective import DistillationObjective, token_counts
from distily.teachers.placement import zero3_enabled
from distily.teachers.source import TeacherSource
from distily.training.bitnet_schedule import LATENT_GROUP, BitNetSchedule, BitNetScheduler
from distily.training.distillation_model import OBJECTIVE, STUDENT, DistillationModel
from distily.training.guards import DeepSpeedSkippedSteps, NonFiniteStepCounts, NonFiniteStepGuard
from distily.training.on_policy import OnPolicyBatches
from distily.training.step_sums import StepSums
from distily.training.totals import RunTotals
from distily.training.trainer_internals import (
    StagedCheckpoints, check_library_versions, deepspeed_set_aside, quiet_resume_arguments_warning,
    undo_evaluation_preparation,
)

T = TypeVar("T")
ZERO3_SAVES_WHOLE = "stage3_gather_16bit_weights_on_model_save"
EVAL = "eval"  # the prefix of the Trainer's own evaluations: eval/ in tensorboard


def evaluation_under(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """An evaluation's own metrics under ``prefix``: the Trainer's ``eval_`` keys renamed, those already under
    ``prefix`` kept; not the figures the Trainer's log adds to them (``epoch``, ``num_input_tokens_seen``), which
    are training's."""
    return {f"{prefix}_{key.removeprefix(f'{EVAL}_')}" if key.startswith(f"{EVAL}_") else key: value
            for key, value in metrics.items() if key.startswith((f"{EVAL}_", f"{prefix}_"))}


def check_student_saves_whole(accelerator: Accelerator) -> None:
    """Under DeepSpeed ZeRO-3 the student is written as whole tensors only where the DeepSpeed config gathers them
    on save (accelerate's ``get_state_dict``): without that the run would train, then fail to write the student."""
    if zero3_enabled(accelerator) and not accelerator.state.deepspeed_plugin.deepspeed_config[
            "zero_optimization"].get(ZERO3_SAVES_WHOLE, False):
        raise DistilyConfigError(
            f"{ZERO3_SAVES_WHOLE} is not set in the ZeRO-3 config: the run would train, then fail to save the "
            f"student (its weights partitioned over the processes); expected {ZERO3_SAVES_WHOLE}: true "
            "(zero3_save_16bit_model: true in accelerate's config)"
        )


class DistillationTrainer(StagedCheckpoints):
    nonfinite_guard: Optional[NonFiniteStepGuard] = None  # set with the optimizer

    def __init__(
        self,
        *args,
        model: PreTrainedModel,
        teacher: TeacherSource,
        objective: DistillationObjective,
        evaluator: Optional[Callable[[PreTrainedModel], dict[str, float]]] = None,
        on_policy: Optional[OnPolicyBatches] = None,
        **kwargs,
    ):
        """``model`` is the student; the Trainer's ``model`` is the student with ``objective``
        (``DistillationModel``), so the objective's projectors and norms train, sync and checkpoint with it.
        ``teacher`` gives the teacher's outputs for each batch. ``evaluator``, called with the student at each
        evaluation, adds its metrics (perplexity on the eval sets, agreement with the teacher) to the
        evaluation's. ``on_policy`` replaces some training micro-batches with the student's own completions."""
        check_library_versions()
        quiet_resume_arguments_warning()
        if objective.needs("needs_attentions"):  # only eager attention returns attention probabilities
            for network in (model, teacher.live_model):
                if network is not None:
                    network.set_attn_implementation("eager")
        objective.attach(model, teacher.live_model)
        super().__init__(*args, model=DistillationModel(model, objective), **kwargs)
        check_student_saves_whole(self.accelerator)
        self.add_callback(NonFiniteStepCounts())  # before the Trainer's state lists the callbacks it checkpoints
        if self.is_deepspeed_enabled and not self.args.fp16:
            self.add_callback(DeepSpeedSkippedSteps(lambda: self.nonfinite_guard))
        self.add_callback(RunTotals())
        for callback in self.callback_handler.callbacks:  # an evaluation before training would log to ./runs
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())
        self.evaluator = evaluator
        self.on_policy = on_policy
        self.model_card: Optional[ModelCard] = None  # Distily's card, set at the end of a run
        self.teacher = teacher
        self.teacher.prepare(self.accelerator)  # after attach: hooks go on the teacher's own modules
        # compute_loss divides by the token count of the whole accumulated batch itself
        self.loss_is_scaled_for_ga = True

        self._eval_sums: dict[str, torch.Tensor] = {}  # each component's sum over the evaluation under way
        self._train_sums = StepSums()
        self._skipped_before_step = 0  # the guard's skipped count when the step under way began

    @property
    def student(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model).student

    @property
    def objective(self) -> DistillationObjective:
        return self.accelerator.unwrap_model(self.model).objective

    def run_totals(self) -> RunTotals:
        """The whole run's training loss and time (the Trainer may have rebuilt the callback from a checkpoint)."""
        return next(callback for callback in self.callback_handler.callbacks if isinstance(callback, RunTotals))

    def student_is_sharded(self) -> bool:
        """Whether the student's parameters are sharded over several processes (FSDP, DeepSpeed ZeRO-3): then
        every process must run the student together (its layers are gathered as they run)."""
        return (self.is_fsdp_enabled or zero3_enabled(self.accelerator)) and self.args.world_size > 1

    def run_student(self, use: Callable[[PreTrainedModel], T]) -> T:
        """``use(student)`` under ``no_grad``, outside the training step (generation, evaluation). Under FSDP
        through the wrapped model's forward, which gathers the parameters that are the root's (the embeddings
        and head) while each decoder layer gathers its own as it runs; a student called directly would find its
        embeddings sharded. DeepSpeed ZeRO-3 gathers every module as it runs, called directly or not."""
        with torch.no_grad():
            if self.is_fsdp_enabled:
                return self.model_wrapped(use_student=use)
            return use(self.student)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the non-finite step guard, and the BitNet schedule's decayed group
        named."""
        building = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if building:
            # the Trainer has loaded a resumed run's state (and may have rebuilt its callbacks from it) by now
            counts = next(callback for callback in self.callback_handler.callbacks
                          if isinstance(callback, NonFiniteStepCounts))
            counts.restore(self.state.stateful_callbacks.get(NonFiniteStepCounts.__name__))
            self.nonfinite_guard = NonFiniteStepGuard(
                optimizer, self.args.max_nonfinite_steps, self.process_group_device, counts,
                self.teacher.nonfinite_outputs,
            )
            if self.args.bitnet_schedule:  # the decayed group is the latent ternary weights (get_decay_parameter_names)
                for group in optimizer.param_groups:
                    if group["weight_decay"] > 0:
                        group["name"] = LATENT_GROUP
        return optimizer

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on the student's parameters the Trainer decays (with the BitNet schedule: the latent
        ternary weights only), never on the objective's projectors and norms: they are auxiliary, and decay
        would pull an orthogonal projector's parametrization."""
        if self.args.bitnet_schedule:
            return [f"{name}.weight" for name, _ in bitlinear_modules(model)]
        return [name for name in super().get_decay_parameter_names(model) if not name.startswith(f"{OBJECTIVE}.")]

    def training_steps(self) -> int:
        """The optimizer steps ``train()`` takes in all, counted as the Trainer counts them: max_steps, or
        num_train_epochs times the steps of an epoch (the training dataloader's batches over the accumulation)."""
        return self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]

    def create_scheduler(self, num_training_steps, optimizer=None):
        if not self.args.bitnet_schedule or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        schedule = BitNetSchedule(
            total_steps=num_training_steps,
            warmup_steps=self.args.get_warmup_steps(num_training_steps),
            stage_boundary=self.args.bitnet_stage_boundary,
            weight_decay=self.args.weight_decay,
        )
        self.lr_scheduler = BitNetScheduler(optimizer or self.optimizer, schedule)
        return self.lr_scheduler

    def evaluate_before_training(self, metric_key_prefix: str) -> dict[str, float]:
        """``evaluate()`` before ``train()``, logged as the Trainer's evaluation at step 0 (the first point of the
        ``eval/`` curves, as ``eval_on_start`` logs it) and returned under ``metric_key_prefix``; under DeepSpeed as
        under data parallelism, each process running its whole copy of the model (``deepspeed_set_aside`` in
        ``trainer_internals``)."""
        with deepspeed_set_aside(self):
            return evaluation_under(self.evaluate(), metric_key_prefix)

    def evaluate_after_training(self, metric_key_prefix: str) -> dict[str, float]:
        """The student's evaluation after ``train()``, under ``metric_key_prefix``: the Trainer's own at the last step
        where it ran one there (an eval_strategy of steps always does), so that the same weights are not evaluated
        and logged twice; else ``evaluate()``, logged as the last point of the ``eval/`` curves. With
        ``load_best_model_at_end`` the weights are another step's: evaluated, and logged under the prefix."""
        if self.args.load_best_model_at_end:
            return evaluation_under(self.evaluate(metric_key_prefix=metric_key_prefix), metric_key_prefix)
        last = next((entry for entry in reversed(self.state.log_history) if f"{EVAL}_runtime" in entry), None)
        if last is None or last["step"] != self.state.global_step:
            return evaluation_under(self.evaluate(), metric_key_prefix)
        return evaluation_under(last, metric_key_prefix)

    def train(self, *args, **kwargs):
        """The Trainer's ``train``, after undoing an evaluation-only preparation of the model (without FSDP, whose
        evaluation prepares it fully; DeepSpeed's is one since ``evaluate_before_training``): see
        ``trainer_internals``."""
        if not self.is_fsdp_enabled and self.model_wrapped is self.model:
            undo_evaluation_preparation(self.accelerator, self.model)
        return super().train(*args, **kwargs)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False):
        """The student alone, loadable with ``from_pretrained`` (weights, config, tokenizer, training arguments),
        into ``output_dir`` or any directory; a checkpoint (``checkpoint-N``) gets the Trainer's whole model,
        the objective's projectors and norms with the student, to resume from. Every process calls this (the
        weights of a sharded model are gathered); the main process writes."""
        output_dir = output_dir or self.args.output_dir
        if os.path.basename(os.path.normpath(output_dir)).startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            return super().save_model(output_dir, _internal_call)
        prefix = f"{STUDENT}."
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        state = self.accelerator.get_state_dict(self.model_wrapped) if sharded else self.model.state_dict()
        if self.args.should_save:
            student_state = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
            self.student.save_pretrained(output_dir, state_dict=student_state)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the micro-batches of one optimizer step and count their tokens, over all processes:
        the objective's denominators, passed to ``compute_loss`` as ``num_items_in_batch`` (those of the
        on-policy micro-batches that replaced the drawn ones, generated under the mixed precision). None at
        ``max_steps``: a run resumed from a checkpoint of its last step (killed after it) is only finished,
        where the Trainer would take one step more before its own check and write a checkpoint past the end."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return [], None
        self._close_step()
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        if self.on_policy is not None:
            step, sharded = self.state.global_step, self.student_is_sharded()
            with self.accelerator.autocast():
                batches = self.run_student(lambda student: self.on_policy.replace(batches, step, student, sharded))
        counts = sum(token_counts(batch) for batch in batches).to(device)  # [2]
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        return batches, counts

    def _forward_teacher(self, inputs):
        return self.teacher(inputs, self.objective) if self.objective.needs("needs_teacher") else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        counts = num_items_in_batch if training and torch.is_tensor(num_items_in_batch) else None
        if not training:
            inputs = self._without_repeated_rows(inputs)
        # the teacher, the student and the loss run under the accelerator's mixed precision (the losses compute
        # in fp32 themselves)
        with self.accelerator.autocast():
            teacher_outputs = self._forward_teacher(inputs)
            result, student_outputs = model(inputs, teacher_outputs, counts)
        if training:
            self._record_train_components(result.components)
        else:
            self._record_eval_sums(result.components, token_counts(inputs))
        loss = result.loss
        if counts is not None and self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the counts are global
        return (loss, student_outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _sum_over_processes(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each value summed over processes (every process calls this, with the same names): a component's
        train value is its part of the global mean, and its eval sums cover this process's share of the batches."""
        if self.args.world_size == 1 or not values:
            return values
        totals = self.accelerator.reduce(torch.stack([values[name] for name in values]), "sum")  # [names]
        return dict(zip(values, totals))

    def _record_train_components(self, components: dict[str, torch.Tensor]) -> None:
        self._train_sums.add(components)

    def _close_step(self) -> None:
        """The step whose components were recorded is over: taken, or skipped by the non-finite guard (whose
        decision is every process's)."""
        skipped = self.nonfinite_guard is not None and self.nonfinite_guard.counts.skipped > self._skipped_before_step
        self._train_sums.close_step(skipped)
        if self.nonfinite_guard is not None:
            self._skipped_before_step = self.nonfinite_guard.counts.skipped

    def _weighted(self, means: dict[str, float]) -> float:
        return sum(self.objective.weights[name] * value for name, value in means.items())

    def session_train_loss(self, trainer_loss: float) -> float:
        """This session's mean training loss: the Trainer's, or, where the guard skipped steps, the mean over the
        steps taken (NaN if none was)."""
        self._close_step()
        sums = self._train_sums
        if sums.session_skipped == 0:
            return trainer_loss
        totals = self._sum_over_processes(sums.session)
        return self._weighted({name: float(total) / sums.session_steps for name, total in totals.items()}) \
            if sums.session_steps else float("nan")

    def _rows_counted(self, rows: int) -> int:
        """How many of this process's ``rows`` of an evaluation batch are the eval set's own: on several processes,
        accelerate fills the last batch of a set that does not divide among them with rows from its start, which
        ``gather_for_metrics`` drops from the gathered, process-major batch as here."""
        state = self.accelerator.gradient_state
        if self.args.world_size == 1 or not state.end_of_dataloader or state.remainder <= 0:
            return rows
        return max(0, min(rows, state.remainder - self.accelerator.process_index * rows))

    def _without_repeated_rows(self, inputs: dict) -> dict:
        """``inputs`` with no loss position on the rows ``_rows_counted`` leaves out."""
        rows = len(inputs["input_ids"])
        kept = self._rows_counted(rows)
        if kept == rows:
            return inputs
        loss_mask = inputs.get(LOSS_MASK, inputs["attention_mask"]).clone()  # [batch, seq]
        loss_mask[kept:] = 0
        return {**inputs, LOSS_MASK: loss_mask}

    def _record_eval_sums(self, components: dict[str, torch.Tensor], counts: torch.Tensor) -> None:
        """Each component's evaluation sum (its per-token value times the batch's count it is divided by) and the
        batch's token counts, so that the evaluation's losses are per token over the whole set, not means of
        batch means (a short last batch weighed as much as a full one)."""
        sums = self._eval_sums
        for name, value in components.items():
            normalizer = self.objective.components[name].normalizer
            sums[name] = sums.get(name, 0.0) + value.float() * counts[normalizer].clamp(min=1)
        self._eval_counts = self._eval_counts + counts.to(self._eval_counts.device)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The Trainer's evaluation, with the loss and each component's per token over the eval set (each counted
        once, on any number of processes), and the evaluator's metrics."""
        self._eval_sums = {}
        self._eval_counts = torch.zeros(2, dtype=torch.long, device=self.args.device)  # [positions, targets]
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        counts = {("counts", row): count for row, count in enumerate(self._eval_counts.float())}  # scalars to reduce
        totals = self._sum_over_processes({**self._eval_sums, **counts})
        counts = [totals.pop(key) for key in counts]
        means = {name: (total / counts[self.objective.components[name].normalizer].clamp(min=1)).item()
                 for name, total in totals.items()}
        for name, value in means.items():
            output.metrics[f"{metric_key_prefix}_loss_{name}"] = value
        if means:
            output.metrics[f"{metric_key_prefix}_loss"] = self._weighted(means)
        if self.evaluator is not None:
            for name, value in self.run_student(self.evaluator).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def create_model_card(self, **kwargs):
        """Write Distily's model card (``model_card``) as ``output_dir/README.md``; ``push_to_hub`` calls this
        before uploading. The Trainer's own draft is never written: it would call the student "fine-tuned"
        from the model the Trainer started with. Before the card exists, nothing is written."""
        if self.model_card is not None and self.is_world_process_zero():
            self.model_card.save(os.path.join(self.args.output_dir, "README.md"))

    def log(self, logs, start_time=None):
        """Add each objective component's mean since the last log to the training logs, and the on-policy figures;
        where the non-finite guard skipped steps, the loss and ``train_loss`` over the steps taken (``StepSums``)."""
        if "loss" in logs:
            self._close_step()
            window, steps, skipped = self._train_sums.take_window()
            means = {name: float(total) / max(steps, 1) for name, total in self._sum_over_processes(window).items()}
            for name, mean in means.items():
                logs[f"loss_{name}"] = mean
            if skipped:  # the Trainer counted the skipped steps' non-finite losses as its running mean
                logs["loss"] = self._weighted(means) if steps else float("nan")
            if self.on_policy is not None:
                def total(counts: torch.Tensor) -> torch.Tensor:
                    return self._sum_over_processes({"counts": counts.to(self.args.device)})["counts"].cpu()

                logs.update(self.on_policy.logs(total, self.args.world_size))
        if "train_loss" in logs:  # the session's, when training ends
            logs["train_loss"] = self.session_train_loss(logs["train_loss"])
        super().log(logs, start_time)
