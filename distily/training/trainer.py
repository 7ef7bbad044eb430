"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is the distillation objective.

It only orchestrates: the teacher runs under ``no_grad``, the objective computes the loss, and
everything ``TrainingArguments`` offers (optimizers, schedules, accumulation, logging, checkpoints,
``report_to``, mixed precision) is the Trainer's own.
"""

import os
import shutil
from typing import Any, Callable, Optional

import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from distily.data.framing import model_inputs
from distily.errors import DistilyConfigError
from distily.models.architecture import plain_lm_head
from distily.models.bitnet import bitlinear_modules
from distily.objectives.objective import DistillationObjective, token_counts
from distily.training.bitnet_schedule import LATENT_GROUP, BitNetSchedule, BitNetScheduler
from distily.training.guards import NonFiniteStepGuard, check_finite_weights
from distily.training.teacher_placement import place_teacher, teacher_is_sharded

CHECKPOINT_STAGING_DIR = ".checkpoint-staging"  # checkpoints are written here, then renamed into place
OBJECTIVE_STATE_FILE = "objective.safetensors"  # in each checkpoint: the objective's projectors and norms


def average_across_processes(parameters: list[nn.Parameter], world_size: int) -> None:
    """Average gradients over processes, as DDP does for the model's (every process calls this, in the same
    order; a parameter without a gradient counts as zero)."""
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        torch.distributed.all_reduce(parameter.grad)
        parameter.grad /= world_size


class _ObjectiveGradients(TrainerCallback):
    """The Trainer syncs and zeroes only the model's gradients; this does both for the objective's trainable
    parameters (projectors, norms): averaged over processes before each optimizer step, zeroed after it so
    they do not pile up from step to step."""

    def __init__(self, objective: nn.Module):
        self.objective = objective

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if args.world_size > 1:
            trainable = [parameter for parameter in self.objective.parameters() if parameter.requires_grad]
            average_across_processes(trainable, args.world_size)

    def on_step_end(self, args, state, control, **kwargs):
        self.objective.zero_grad(set_to_none=True)


def load_objective_state(objective: nn.Module, checkpoint_dir: str) -> None:
    """Restore the objective's trained state saved in a checkpoint directory (nothing to do without any)."""
    expected = objective.state_dict()
    if not expected:
        return
    path = os.path.join(checkpoint_dir, OBJECTIVE_STATE_FILE)
    if not os.path.isfile(path):
        raise DistilyConfigError(
            f"checkpoint {checkpoint_dir!r} has no {OBJECTIVE_STATE_FILE}; expected the objective's projector and "
            "norm state, written by a run with the same objective settings"
        )
    saved = load_file(path)
    misfits = sorted(set(saved) ^ set(expected)) or [
        name for name, tensor in expected.items() if saved[name].shape != tensor.shape
    ]
    if misfits:
        raise DistilyConfigError(
            f"{path!r} does not fit this objective (first misfit: {misfits[0]}); expected a checkpoint written with "
            "the same objective settings and models"
        )
    objective.load_state_dict(saved)


class DistillationTrainer(Trainer):
    nonfinite_guard: Optional[NonFiniteStepGuard] = None  # set with the optimizer
    _checkpoint_staging: Optional[str] = None  # where a checkpoint is being written, during the write

    def __init__(
        self,
        *args,
        objective: DistillationObjective,
        teacher_model: Optional[PreTrainedModel] = None,
        recorded_teacher: Optional[Callable[[dict], Any]] = None,
        evaluator: Optional[Callable[[PreTrainedModel], dict[str, float]]] = None,
        **kwargs,
    ):
        """The teacher is either ``teacher_model``, run at every step, or ``recorded_teacher``, which turns a
        batch carrying a store's fields into the teacher's outputs (``distily.training.recorded``).
        ``evaluator``, called with the student at each evaluation, adds its metrics (perplexity on the eval
        sets, agreement with the teacher) to the evaluation's."""
        if (teacher_model is None) == (recorded_teacher is None):
            raise ValueError("DistillationTrainer expects exactly one of teacher_model and recorded_teacher")
        super().__init__(*args, **kwargs)
        for callback in self.callback_handler.callbacks:  # an evaluation before training would log to ./runs
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())
        self.evaluator = evaluator
        self.model_card: Optional[ModelCard] = None  # Distily's card, set at the end of a run
        self.teacher_model = teacher_model
        self.recorded_teacher = recorded_teacher
        self.objective = objective.to(self.args.device)
        if self.objective.needs("needs_attentions"):  # only eager attention returns attention probabilities
            for network in (self.model, self.teacher_model):
                if network is not None:
                    network.set_attn_implementation("eager")
        self.objective.attach(self.model, self.teacher_model)
        if teacher_model is not None:  # after attach: hooks go on the teacher's own modules
            self.teacher_model = place_teacher(teacher_model, self.accelerator)
        self.fuse_lm_head = self.objective.fuses_student_lm_head(self.model)
        # a whole (unsharded) teacher runs without its LM head: the logit loss applies it slice by slice
        whole_teacher = teacher_model is not None and not teacher_is_sharded(self.accelerator)
        self.fuse_teacher_lm_head = whole_teacher and plain_lm_head(teacher_model)
        if any(parameter.requires_grad for parameter in self.objective.parameters()):
            self.add_callback(_ObjectiveGradients(self.objective))
        # compute_loss divides by the token count of the whole accumulated batch itself
        self.loss_is_scaled_for_ga = True

        self._component_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._component_batches = 0
        self._component_steps = 0  # optimizer steps in the train sums since the last log

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, plus one group for the objective's trainable parameters (projectors,
        norms) at the same learning rate and without weight decay: they are auxiliary, and decay would
        pull an orthogonal projector's parametrization."""
        building = self.optimizer is None
        optimizer = super().create_optimizer(model)
        trainable = [parameter for parameter in self.objective.parameters() if parameter.requires_grad]
        if building and trainable:
            optimizer.add_param_group({"params": trainable, "weight_decay": 0.0})
        held = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
        if any(id(parameter) not in held for parameter in trainable):
            raise DistilyConfigError(
                "the optimizer given to the trainer does not hold the objective's trainable parameters (projectors, "
                "norms); expected them in one of its param groups"
            )
        if building:
            self.nonfinite_guard = NonFiniteStepGuard(optimizer, self.args.max_nonfinite_steps)
            if self.args.bitnet_schedule:  # the decayed group is the latent ternary weights (get_decay_parameter_names)
                for group in optimizer.param_groups:
                    if group["weight_decay"] > 0:
                        group["name"] = LATENT_GROUP
        return optimizer

    def get_decay_parameter_names(self, model) -> list[str]:
        """With the BitNet schedule, weight decay applies to the latent ternary weights only."""
        if not self.args.bitnet_schedule:
            return super().get_decay_parameter_names(model)
        return [f"{name}.weight" for name, _ in bitlinear_modules(model)]

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

    def train(self, *args, **kwargs):
        """The Trainer's ``train``, after undoing an evaluation-only preparation of the student: without FSDP
        or DeepSpeed, an ``evaluate()`` before training prepares the student for evaluation and marks it
        prepared, and accelerate (1.15 here) then refuses to prepare it again, so training would run without
        the DDP wrapper and each process would step on its own gradients."""
        student = self.model
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled  # their evaluation prepares the student fully
        if not sharded and self.model_wrapped is student and getattr(student, "_is_accelerate_prepared", False):
            del student._is_accelerate_prepared
            if "_original_forward" in vars(student):  # mixed precision wrapped forward; it is wrapped again
                student.forward = student._original_forward
                del student._original_forward
            self.accelerator._models = [model for model in self.accelerator._models if model is not student]
        return super().train(*args, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        """The Trainer's epoch, unless the run is already at ``max_steps``: resumed from a checkpoint of its
        last step (a run killed after it), the Trainer would take one more step before its own check, and
        write a checkpoint past the end."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _get_output_dir(self, trial):
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint aside (``.checkpoint-staging/checkpoint-N``), then rename it into place, so an
        interrupted save never looks like a checkpoint; weights that are not finite are never written."""
        check_finite_weights(self.model, self.objective)
        run_dir = self._get_output_dir(trial)
        self._checkpoint_staging = os.path.join(run_dir, CHECKPOINT_STAGING_DIR)
        try:
            self._write_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            staged, final = os.path.join(run_dir, CHECKPOINT_STAGING_DIR, name), os.path.join(run_dir, name)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            staging = os.path.join(run_dir, CHECKPOINT_STAGING_DIR)
            if not os.listdir(staging):  # else it holds a half-written checkpoint of an interrupted save
                os.rmdir(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)

    def _write_checkpoint(self, model, trial):
        """Write the objective's trained state into the checkpoint directory first, then the Trainer's own
        files; ``save_model`` (the exported student) never holds it."""
        state = self.objective.state_dict()
        if state and self.args.should_save:
            checkpoint_dir = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(checkpoint_dir, exist_ok=True)
            tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
            save_file(tensors, os.path.join(checkpoint_dir, OBJECTIVE_STATE_FILE))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_objective_state(self.objective, resume_from_checkpoint)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the micro-batches of one optimizer step and count their tokens, over all processes:
        the objective's denominators, passed to ``compute_loss`` as ``num_items_in_batch``."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        self._component_steps += 1
        counts = sum(token_counts(batch) for batch in batches).to(device)  # [2]
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        return batches, counts

    def _forward_teacher(self, inputs):
        if not self.objective.needs("needs_teacher"):
            return None
        if self.recorded_teacher is not None:
            return self.recorded_teacher(inputs)
        teacher = self.teacher_model.get_decoder() if self.fuse_teacher_lm_head else self.teacher_model
        with torch.no_grad():
            return teacher(
                **model_inputs(inputs),
                output_hidden_states=self.objective.needs("needs_hidden_states"),
                output_attentions=self.objective.needs("needs_attentions"),
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        counts = num_items_in_batch if training and torch.is_tensor(num_items_in_batch) else None
        fuse_lm_head = self.fuse_lm_head  # the logit loss applies the LM head itself, chunk by chunk
        student_outputs = model(
            **model_inputs(inputs),
            output_hidden_states=fuse_lm_head or self.objective.needs("needs_hidden_states"),
            output_attentions=self.objective.needs("needs_attentions"),
            **({"logits_to_keep": 1} if fuse_lm_head else {}),
        )
        # the prepared student runs under the accelerator's mixed precision; the teacher and the loss do too
        # (the losses compute in fp32 themselves)
        with self.accelerator.autocast():
            teacher_outputs = self._forward_teacher(inputs)
            result = self.objective(student_outputs, teacher_outputs, inputs, counts)
        self._record_components(result.components, "train" if training else "eval")
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

    def _record_components(self, components: dict[str, torch.Tensor], mode: str) -> None:
        sums = self._component_sums[mode]
        for name, value in components.items():
            sums[name] = sums.get(name, 0.0) + value.float()
        if mode == "eval":
            self._component_batches += 1

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._component_sums["eval"], self._component_batches = {}, 0
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        batches = torch.tensor(float(self._component_batches), device=self.args.device)
        batches = self._sum_over_processes({"batches": batches})["batches"].clamp(min=1)
        for name, total in self._sum_over_processes(self._component_sums["eval"]).items():
            output.metrics[f"{metric_key_prefix}_loss_{name}"] = (total / batches).item()
        if self.evaluator is not None:
            for name, value in self.evaluator(self.model).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def create_model_card(self, **kwargs):
        """Write Distily's model card (``model_card``) as ``output_dir/README.md``; ``push_to_hub`` calls this
        before uploading. The Trainer's own draft is never written: it would call the student "fine-tuned"
        from the model the Trainer started with. Before the card exists, nothing is written."""
        if self.model_card is not None and self.is_world_process_zero():
            self.model_card.save(os.path.join(self.args.output_dir, "README.md"))

    def log(self, logs, start_time=None):
        """Add each objective component's mean since the last log to the training logs."""
        if "loss" in logs:
            steps = max(self._component_steps, 1)
            for name, total in self._sum_over_processes(self._component_sums["train"]).items():
                logs[f"loss_{name}"] = round(float(total) / steps, 6)
            self._component_sums["train"] = {}
            self._component_steps = 0
        super().log(logs, start_time)
