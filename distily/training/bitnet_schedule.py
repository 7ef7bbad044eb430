"""The two-stage BitNet b1.58 optimisation schedule.

"The Era of 1-bit LLMs: Training Tips, Code and FAQ" (Ma et al. 2024) trains ternary models with
  - two learning-rate stages: a high peak that decays during the first stage, then an abrupt drop to
    a lower peak at the stage boundary (the "cool-down"), decaying to the end;
  - two weight-decay stages: decay only on the latent ternary weights during the first stage, zero
    in the second, because latent weights near a rounding boundary should be left free to settle.

Multiplier on the base learning rate at step t (T total steps, W warmup steps, B boundary step):
    t < W:        t / W
    W <= t < B:   cosine from 1 to `first_stage_end`
    B <= t:       cosine from `second_stage_peak` to `final_ratio`

Use with a plain loop or a transformers Trainer:
    optimizer, scheduler = build_bitnet_optimizer(model, lr=1e-3, schedule=BitNetSchedule(total_steps=1000))
    Trainer(..., optimizers=(optimizer, scheduler))   # scheduler.step() also switches weight decay off
or keep the Trainer's own optimizer built from `bitnet_param_groups` and add `BitNetWeightDecayCallback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import TrainerCallback

from distily.errors import DistilyConfigError
from distily.models.bitnet import bitlinear_modules
from distily.training.arguments import boundary_step

LATENT_GROUP = "bitnet_latent"


@dataclass(frozen=True)
class BitNetSchedule:
    """Shape of the two-stage schedule; ratios are multipliers on the base learning rate."""

    total_steps: int
    warmup_steps: int = 0
    stage_boundary: float = 0.5  # fraction of total_steps where the second stage starts
    first_stage_end: float = 0.7
    second_stage_peak: float = 0.4
    final_ratio: float = 0.0
    weight_decay: float = 0.1  # on latent ternary weights, first stage only

    def __post_init__(self):
        if self.total_steps < 1 or not 0 <= self.warmup_steps < self.boundary_step:
            raise DistilyConfigError(
                f"BitNet schedule with total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
                f"stage_boundary={self.stage_boundary}; expected 0 <= warmup_steps < boundary step <= total_steps"
            )

    @property
    def boundary_step(self) -> int:
        return boundary_step(self.stage_boundary, self.total_steps)

    def in_second_stage(self, step: int) -> bool:
        return step >= self.boundary_step


def bitnet_lr_lambda(schedule: BitNetSchedule) -> Callable[[int], float]:
    """The learning-rate multiplier as a function of the step, for torch.optim.lr_scheduler.LambdaLR."""

    def cosine(start: float, end: float, progress: float) -> float:
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def multiplier(step: int) -> float:
        if step < schedule.warmup_steps:
            return step / schedule.warmup_steps
        if not schedule.in_second_stage(step):
            progress = (step - schedule.warmup_steps) / (schedule.boundary_step - schedule.warmup_steps)
            return cosine(1.0, schedule.first_stage_end, progress)
        second_stage_steps = max(1, schedule.total_steps - schedule.boundary_step)
        progress = (step - schedule.boundary_step) / second_stage_steps
        return cosine(schedule.second_stage_peak, schedule.final_ratio, progress)

    return multiplier


def bitnet_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: the latent ternary weights (with weight decay) and everything else (without)."""
    latent = [layer.weight for _, layer in bitlinear_modules(model) if layer.weight.requires_grad]
    if not latent:
        raise DistilyConfigError(
            f"{type(model).__name__} has no trainable BitLinear weights; expected a converted student"
        )
    latent_ids = {id(weight) for weight in latent}
    others = [parameter for parameter in model.parameters()
              if parameter.requires_grad and id(parameter) not in latent_ids]
    return [
        {"params": latent, "weight_decay": weight_decay, "name": LATENT_GROUP},
        {"params": others, "weight_decay": 0.0, "name": "full_precision"},
    ]


def set_stage_weight_decay(optimizer: torch.optim.Optimizer, schedule: BitNetSchedule, step: int) -> None:
    """Weight decay of the latent group for `step`: schedule.weight_decay in stage one, 0 in stage two."""
    for group in optimizer.param_groups:
        if group.get("name") == LATENT_GROUP:
            group["weight_decay"] = 0.0 if schedule.in_second_stage(step) else schedule.weight_decay


class BitNetScheduler(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR over bitnet_lr_lambda whose step() also applies the weight-decay stage."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: BitNetSchedule):
        self.schedule = schedule
        super().__init__(optimizer, bitnet_lr_lambda(schedule))

    def step(self, epoch=None):
        super().step() if epoch is None else super().step(epoch)
        set_stage_weight_decay(self.optimizer, self.schedule, self.last_epoch)

    def state_dict(self) -> dict:
        """LambdaLR's state without the schedule object, so checkpoints load with weights_only=True."""
        state = super().state_dict()
        state.pop("schedule", None)
        return state


def build_bitnet_optimizer(model: nn.Module, lr: float, schedule: BitNetSchedule,
                           **adamw_kwargs) -> tuple[torch.optim.AdamW, BitNetScheduler]:
    """AdamW over bitnet_param_groups plus its BitNetScheduler."""
    optimizer = torch.optim.AdamW(bitnet_param_groups(model, schedule.weight_decay), lr=lr, **adamw_kwargs)
    return optimizer, BitNetScheduler(optimizer, schedule)


class BitNetWeightDecayCallback(TrainerCallback):
    """Switches the latent group's weight decay off at the stage boundary in a Trainer whose optimizer
    was built from bitnet_param_groups (use BitNetScheduler instead to get both stages at once)."""

    def __init__(self, schedule: BitNetSchedule):
        self.schedule = schedule

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            set_stage_weight_decay(optimizer, self.schedule, state.global_step)
