"""Before training: estimate the peak memory a run needs, print it, and refuse a run that cannot fit.

The estimate is deliberately simple and errs high: weights and gradients from the parameter counts,
AdamW's two fp32 moments per trainable parameter, the student's stored activations per layer after
Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models"
(``s*b*h*(34 + 5*a*s/h)`` bytes per layer at 2 bytes per value, scaled for the compute dtype), and the
``[tokens, vocab]`` logits of both models in fp32 for the loss (student logits, their gradient, and
the teacher's).
"""

from dataclasses import dataclass, fields

import psutil
import torch
from transformers import PreTrainedModel

from distily.errors import DistilyConfigError

GIB = 2**30


@dataclass
class MemoryEstimate:
    teacher_weights: int
    student_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        parts = ", ".join(f"{f.name.replace('_', ' ')} {getattr(self, f.name) / GIB:.2f}" for f in fields(self))
        return f"estimated peak memory {self.total / GIB:.2f} GiB ({parts} GiB)"


def _bytes(model: PreTrainedModel, trainable_only: bool = False) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only)


def estimate_memory(
    teacher: PreTrainedModel | None,
    student: PreTrainedModel,
    batch_size: int,
    max_seq_length: int,
    mixed_precision: bool,
) -> MemoryEstimate:
    config = student.config
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    tokens = batch_size * max_seq_length
    bytes_per_value = 2 if mixed_precision else 4
    per_layer = tokens * config.hidden_size * (
        34 + 5 * config.num_attention_heads * max_seq_length / config.hidden_size
    )  # bytes at 2 bytes per value
    vocab = student.get_output_embeddings().weight.shape[0]
    return MemoryEstimate(
        teacher_weights=_bytes(teacher) if teacher is not None else 0,
        student_weights=_bytes(student),
        gradients=_bytes(student, trainable_only=True),
        optimizer_states=8 * trainable,
        activations=int(per_layer * config.num_hidden_layers * bytes_per_value / 2),
        logits=3 * 4 * tokens * vocab,
    )


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the accelerator's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_memory(estimate: MemoryEstimate, device: torch.device) -> str:
    """The estimate as a line to print; a one-line error when it exceeds what ``device`` has free."""
    free = available_memory(device)
    line = f"{estimate.describe()}; {free / GIB:.2f} GiB free on {device}"
    if estimate.total > free:
        raise DistilyConfigError(
            f"{line}: the run cannot fit; expected a smaller per_device_train_batch_size or max_seq_length, a "
            "smaller teacher dtype, or memory_check=false to try anyway"
        )
    return line
