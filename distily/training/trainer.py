"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is the distillation objective.

It only orchestrates: the teacher runs under ``no_grad``, the objective computes the loss, and
everything ``TrainingArguments`` offers (optimizers, schedules, accumulation, logging, checkpoints,
``report_to``, mixed precision) is the Trainer's own.
"""

import torch
from transformers import PreTrainedModel, Trainer

from distily.objectives.objective import DistillationObjective, token_counts


class DistillationTrainer(Trainer):
    def __init__(self, *args, teacher_model: PreTrainedModel, objective: DistillationObjective, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model.to(self.args.device)
        self.objective = objective.to(self.args.device)
        # compute_loss divides by the token count of the whole accumulated batch itself
        self.loss_is_scaled_for_ga = True
        self._component_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._component_batches = 0
        self._last_component_log_step = 0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the micro-batches of one optimizer step and count their tokens, over all processes:
        the objective's denominators, passed to ``compute_loss`` as ``num_items_in_batch``."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        counts = sum(token_counts(batch["attention_mask"]) for batch in batches).to(device)  # [2]
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        return batches, counts

    def _forward_teacher(self, inputs):
        if not self.objective.needs("needs_teacher"):
            return None
        with torch.no_grad():
            return self.teacher_model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                output_hidden_states=self.objective.needs("needs_hidden_states"),
                output_attentions=self.objective.needs("needs_attentions"),
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        counts = num_items_in_batch if training and torch.is_tensor(num_items_in_batch) else None
        student_outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            output_hidden_states=self.objective.needs("needs_hidden_states"),
            output_attentions=self.objective.needs("needs_attentions"),
        )
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
        for name, total in self._component_sums["eval"].items():
            output.metrics[f"{metric_key_prefix}_loss_{name}"] = (total / max(self._component_batches, 1)).item()
        return output

    def log(self, logs, start_time=None):
        """Add each objective component's mean since the last log to the training logs."""
        if "loss" in logs:
            steps = max(self.state.global_step - self._last_component_log_step, 1)
            for name, total in self._component_sums["train"].items():
                logs[f"loss_{name}"] = round(float(total) / steps, 6)
            self._component_sums["train"] = {}
            self._last_component_log_step = self.state.global_step
        super().log(logs, start_time)
