"""Before training: estimate the peak memory of a training step, print it, and refuse a run that cannot fit.

A step is estimated on ``per_device_train_batch_size`` rows of the longest training row's length (``collate`` pads
a batch to its longest row: packed text fills max_seq_length, conversations are most often far shorter), with
on-policy batches that plus ``on_policy_max_new_tokens``, at most max_seq_length (``padded_row_length``).

The estimate adds what stays alive (the weights of both models, the optimizer's states of the parameters that
get gradients, ``trained_parameters``: without a logit loss not the LM head) to the larger of the two moments a
step peaks at:

- the end of the forward pass: the student's stored activations (a pre-norm decoder block with a gated
  MLP, Llama's and Qwen's, counted tensor by tensor: the residual stream and the norms' internals in fp32,
  the rest in the compute dtype; under bf16/fp16 autocast also its half-precision copies of the weights; a
  mixture of experts' MLP values for each expert transformers runs a token through, under its grouped matmul in the
  experts' own dtype),
  the teacher's outputs (its hidden states in its weights' dtype, under autocast too) and its largest layer's
  intermediates (a live teacher only: a recorded one runs no forward pass), and the objective's working
  memory, which each component reports for the batch shape
  (``Component.memory_footprint``; the chunked logit loss computes its gradients in the forward pass, so
  they are in it; the components run in turn, each beside what the earlier ones hold, ``memory_held``);
  with an attention loss the student's eager attention, which the trainer switches both models to;
- during the backward pass: the student's gradients (those of ``trained_parameters``), and under activation
  checkpointing the activations of the one block it recomputes (a checkpointed block stores only its input in
  the forward pass).

With gradient accumulation, the gradients of a step's earlier micro-batches are alive through the later ones'
forward passes: the end of the forward pass counts them too.

Weights already on the device when the check runs (every model of a CPU run, a quantized teacher on a GPU)
are out of its free memory and in the estimate: the check adds them back to the free memory.

Measured against the allocator's peak on a grid of vocabularies (512 to 151,936), batch shapes, live and
recorded teachers, fp32 and bf16, with activation checkpointing or gradient accumulation, and on mixtures of experts
of OLMoE's, Mixtral's and Qwen3-MoE's proportions, the estimate is within 30%, 1.0 to 1.2 times the peak with
attention losses, and 0.95 to 1.15 times it with a feature loss alone
(``tests/training/test_preflight.py``). A run is refused only when even 70% of the estimate exceeds the free
memory, so a run that fits is never refused.
"""

from dataclasses import dataclass, fields
from typing import Optional

import psutil
import torch
from transformers import PreTrainedModel, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled

from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_of, named_decoder_layers, plain_lm_head
from distily.models.experts import routing
from distily.objectives.component import StepShape
from distily.objectives.model_shape import ModelShape
from distily.objectives.objective import DistillationObjective
from distily.training.arguments import fsdp_version

GIB = 2**30
UNITS = {"GiB": GIB, "MiB": 2**20}  # the estimate's figures are printed in one of these
MARGIN = 0.3
"""The estimate's accuracy: a run is refused only when (1 - MARGIN) x the estimate exceeds the free memory."""

OPTIMIZER_STATES = {"sgd": 1, "adagrad": 1, "rmsprop": 1, "adafactor": 0, "lomo": 0, "lion": 1, "ademamix": 3,
                    "grokadamw": 3}
"""States per trainable parameter of the Trainer's optimizers (``optim``) by name fragment; Adam's 2 otherwise."""


def _size(count: int, unit: str) -> str:
    """``count`` bytes in ``unit`` (of ``UNITS``), two decimals."""
    return f"{count / UNITS[unit]:.2f}"


@dataclass
class MemoryEstimate:
    teacher_weights: int
    student_weights: int  # the objective's trainable heads (projectors, norms) included
    optimizer_states: int
    gradients: int
    student_activations: int
    teacher_activations: int
    objective: int
    recomputed_block: int  # activation checkpointing: one block's activations, rebuilt during the backward pass
    accumulated_gradients: int  # gradient accumulation: the earlier micro-batches', alive through a forward pass
    loaded: int  # the weights above that are already on the device: the free memory it reads leaves them out

    @property
    def total(self) -> int:
        forward_end = self.student_activations + self.teacher_activations + self.objective + self.accumulated_gradients
        backward = self.gradients + self.recomputed_block
        return self.teacher_weights + self.student_weights + self.optimizer_states + max(forward_end, backward)

    @property
    def unit(self) -> str:
        """The unit its figures are printed in: MiB below a GiB, where GiB would read 0.00."""
        return "GiB" if self.total >= GIB else "MiB"

    def describe(self) -> str:
        parts = ", ".join(f"{f.name.replace('_', ' ')} {_size(getattr(self, f.name), self.unit)}"
                          for f in fields(self) if f.name != "loaded")
        return f"estimated peak memory {_size(self.total, self.unit)} {self.unit} ({parts} {self.unit})"


def _bytes(parameters) -> int:
    """Bytes of the tensors that hold memory: none on the meta device."""
    return sum(p.numel() * p.element_size() for p in parameters if not p.is_meta)


def trained_parameters(student: PreTrainedModel, objective: DistillationObjective) -> list[torch.nn.Parameter]:
    """The trainable parameters that get gradients (the Trainer's AdamW keeps no states for the others): the
    objective's, and the student's up to the deepest output the objective reads
    (``DistillationObjective.deepest_student_output``). Without a logit loss that leaves out the LM head (unless it
    is tied to the input embeddings) and the blocks after the deepest one a feature loss reads; a block whose
    attention alone is read counts whole, as does the final norm."""
    unread = tuple(f"{name}." for name in _unread_modules(student, objective))
    reached = {id(p): p for name, p in student.named_parameters(remove_duplicate=False)
               if p.requires_grad and not name.startswith(unread)}
    return [*reached.values(), *(p for p in objective.parameters() if p.requires_grad)]


def _unread_modules(student: PreTrainedModel, objective: DistillationObjective) -> list[str]:
    """Names of the student's modules no loss reads through: the LM head and the blocks after the deepest read."""
    depth = ModelShape.from_config(student.config).depth
    deepest = objective.deepest_student_output(depth)
    if deepest > depth:
        return []
    head = student.get_output_embeddings()
    blocks, _ = named_decoder_layers(student)
    return [next(name for name, module in student.named_modules() if module is head),
            *(f"{blocks}.{index}" for index in range(deepest, depth))]


def optimizer_state_bytes(optim: str, trainable: list[torch.nn.Parameter]) -> int:
    """The states ``optim`` (a ``TrainingArguments.optim`` name) keeps for ``trainable`` parameters: two of the
    parameter's dtype for Adam and its kin (Lion one, AdEMAMix and GrokAdamW three), one byte each for 8-bit ones,
    half a byte for 4-bit ones."""
    optim = str(getattr(optim, "value", optim))  # TrainingArguments holds an OptimizerNames
    per_parameter = next((count for name, count in OPTIMIZER_STATES.items() if name in optim), 2)
    if "8bit" in optim:
        return per_parameter * sum(p.numel() for p in trainable)
    if "4bit" in optim:
        return per_parameter * sum(p.numel() for p in trainable) // 2
    return per_parameter * sum(p.numel() * p.element_size() for p in trainable)


def _intermediate_size(config) -> int:
    """The MLP width; the widest where each layer has its own (Gemma 3n's list)."""
    config = config.get_text_config()
    size = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
    return max(size) if isinstance(size, list) else size


def _grouped_experts(model: PreTrainedModel) -> bool:
    """Whether a mixture's experts run in transformers' grouped matmul, which is no autocast op: their activations are
    in their weights' dtype, and autocast makes no half-precision copy of those."""
    return model.get_experts_implementation().get("") == "grouped_mm"


def _expert_bytes(model: PreTrainedModel, compute_bytes: int) -> int:
    """Bytes per value of a mixture's expert activations (``_grouped_experts``)."""
    return next(model.parameters()).element_size() if _grouped_experts(model) else compute_bytes


def _mlp_bytes(config, width: int, per_width: int, per_expert_input: int, compute_bytes: int,
               expert_bytes: int) -> int:
    """Bytes an MLP holds per token: ``per_width`` values per channel of its intermediate size; a mixture of experts'
    for each expert transformers runs a token through, with ``per_expert_input`` times the width (the experts run on
    copies of the tokens grouped by expert), in ``expert_bytes`` (``_expert_bytes``), and its shared experts'; the
    larger where some layers are dense."""
    routed = routing(config)
    experts = routed.computed_per_token * (per_width * routed.expert_width + per_expert_input * width)
    mixture = experts * expert_bytes + per_width * routed.shared_width * compute_bytes
    return max(per_width * _intermediate_size(config) * compute_bytes, mixture)


def _autocast_copied(student: PreTrainedModel) -> int:
    """Bytes of the half-precision copies autocast makes of the decoder weights its matmuls read: not of the experts'
    stacked 3-D weights where the grouped matmul reads them (``_grouped_experts``)."""
    grouped = _grouped_experts(student)
    return 2 * _bytes(p for p in decoder_of(student).parameters() if not (grouped and p.ndim == 3)) // 4


def block_activations(student: PreTrainedModel, step: StepShape) -> int:
    """Bytes one student block's forward pass stores for the backward pass."""
    shape = step.student
    # per token: block input, residual after attention, each norm's normalised value and output (fp32); q and k
    # after rotary embeddings, v, the attention output and its projection's input; the MLP's gate, up, activation
    # and product (compute dtype); under autocast also the norms' outputs cast for the projections
    full = 6 * shape.width * 4
    computed = 3 * shape.query_width + 2 * shape.kv_width + (2 * shape.width if step.compute_bytes < 4 else 0)
    mlp = _mlp_bytes(student.config, shape.width, 4, 2, step.compute_bytes, _expert_bytes(student, step.compute_bytes))
    per_token = full + computed * step.compute_bytes + mlp
    if step.eager_attention:
        per_token += eager_attention_extra(shape, step)
    return step.tokens * per_token


def eager_attention_extra(shape: ModelShape, step: StepShape) -> int:
    """Bytes per token that one eager attention stores beyond SDPA's (measured at the allocator): the fp32 softmax
    output, under autocast also its half-precision copy for the matmul with v, and with grouped-query attention the
    keys and values repeated to every query head."""
    half_copy = step.compute_bytes if step.compute_bytes < 4 else 0
    repeated = 2 * shape.query_width * step.compute_bytes if shape.kv_heads < shape.heads else 0
    return shape.heads * step.seq_length * (4 + half_copy) + repeated


def checkpointed_every_n_layers(training: TrainingArguments) -> Optional[int]:
    """Which student blocks the Trainer checkpoints (``activation_checkpointing``, or its old name
    ``gradient_checkpointing``, with ``activation_checkpointing_kwargs``' ``every_n_layers``): every n-th, None for
    none."""
    if not training.activation_checkpointing:
        return None
    return (training.activation_checkpointing_kwargs or {}).get("every_n_layers", 1)


def parameter_shards(training: TrainingArguments) -> tuple[int, int]:
    """How many ways the run splits (the student's weights, gradients and optimizer states, the teacher's weights)
    over its processes, as the Trainer's accelerator will (``teachers.placement.teacher_is_sharded``): DeepSpeed
    ZeRO-3 and FSDP2 both, FSDP1 the student's alone; data parallelism and ZeRO-1/2 neither (ZeRO-1/2's split
    optimizer states are counted whole: an over-estimate). FSDP is the run's ``fsdp`` (transformers' default
    version 2) or ``accelerate launch``'s config (accelerate's default version 1)."""
    world = training.world_size
    if world == 1:
        return 1, 1
    if is_deepspeed_zero3_enabled():
        return world, world
    version = fsdp_version(training)
    if version is None:
        return 1, 1
    return world, world if version == 2 else 1


def padded_row_length(training: TrainingArguments, longest_row: int, max_seq_length: int) -> int:
    """The most tokens in a row of a training batch, which is padded to its longest row: the longest training row,
    or with on-policy batches (``lmbda`` > 0) that plus the completion the student writes after a prompt of it, at
    most ``max_seq_length``."""
    completion = training.on_policy_max_new_tokens if training.lmbda > 0 else 0
    return min(max_seq_length, longest_row + completion)


def checkpointed_blocks(depth: int, checkpoint_every_n_layers: Optional[int]) -> int:
    """How many of ``depth`` blocks activation checkpointing of every n-th block recomputes (None: none)."""
    return -(-depth // checkpoint_every_n_layers) if checkpoint_every_n_layers else 0


def student_activations(student: PreTrainedModel, step: StepShape, checkpoint_every_n_layers: Optional[int],
                        head_in_loss: bool) -> int:
    """Bytes the student's forward pass stores for the backward pass, with its logits unless they are fused; a
    checkpointed block (every ``checkpoint_every_n_layers``-th, the Trainer's ``every_n_layers``) stores its input.
    ``head_in_loss``: a logit loss applies the student's LM head itself (fused), and counts autocast's copy of it."""
    shape, half = step.student, step.compute_bytes < 4
    width = shape.width
    checkpointed = checkpointed_blocks(shape.depth, checkpoint_every_n_layers)
    blocks = (shape.depth - checkpointed) * block_activations(student, step) + checkpointed * step.tokens * width * 4
    final = 3 * step.tokens * width * 4  # embeddings and the final norm
    logits = 0 if step.fused_student_head else step.tokens * step.student_vocab * step.compute_bytes
    # autocast keeps a half-precision copy of every weight a matmul reads, for the step
    copies = _autocast_copied(student) if half else 0
    if half and not head_in_loss:  # the student applies its head: to every token, or to the last (fused)
        copies += 2 * _bytes(student.get_output_embeddings().parameters()) // 4
    return blocks + final + logits + copies


def teacher_activations(teacher: PreTrainedModel, step: StepShape, objective: DistillationObjective) -> int:
    """Bytes of a live teacher's forward pass (no gradients): the outputs the objective reads, and its largest
    block's intermediates while they are computed."""
    shape, weight_bytes = step.teacher, next(teacher.parameters()).element_size()
    bytes_per_value = step.compute_bytes if step.compute_bytes < 4 else weight_bytes  # the blocks' matmul outputs
    # the final hidden state (the loss applies the LM head), every one for a hidden-state loss: the residual stream,
    # in the weights' dtype under autocast too
    held = step.tokens * shape.width * weight_bytes
    if objective.needs("needs_hidden_states"):
        held *= shape.depth + 1
    if not plain_lm_head(teacher):  # its logits
        held += step.tokens * teacher.get_output_embeddings().weight.shape[0] * step.compute_bytes
    # the attention probabilities are in q's dtype: the weights', even under autocast (rotary embeddings promote q)
    if objective.needs("needs_attentions"):
        held += shape.depth * step.batch_size * shape.heads * step.seq_length**2 * weight_bytes
    block = (2 * shape.width + shape.query_width + 2 * shape.kv_width) * bytes_per_value
    block += _mlp_bytes(teacher.config, shape.width, 3, 3, bytes_per_value, _expert_bytes(teacher, bytes_per_value))
    return held + step.tokens * block


def estimate_memory(
    teacher: Optional[PreTrainedModel],
    student: PreTrainedModel,
    objective: DistillationObjective,
    batch_size: int,
    seq_length: int,
    mixed_precision: bool,
    optim: str = "adamw_torch_fused",
    device_type: str = "cpu",
    checkpoint_every_n_layers: Optional[int] = None,
    shards: tuple[int, int] = (1, 1),
    accumulation_steps: int = 1,
) -> MemoryEstimate:
    """The peak memory of a training step on ``batch_size`` x ``seq_length`` tokens on a ``device_type``
    device, with activation checkpointing of every ``checkpoint_every_n_layers``-th student block (None: none),
    on one process of a run that splits the student's weights, gradients and optimizer states ``shards[0]`` ways
    and the teacher's weights ``shards[1]`` ways (``parameter_shards``; the layer being gathered as it runs is left
    to the margin), over ``accumulation_steps`` micro-batches a step. A teacher on the meta device (a recorded
    teacher: only its shape is known) or None holds no memory and runs no forward pass."""
    live_teacher = teacher is not None and not next(teacher.parameters()).is_meta
    student_shape = ModelShape.from_config(student.config)
    step = StepShape(
        batch_size=batch_size,
        seq_length=seq_length,
        student=student_shape,
        teacher=ModelShape.from_config(teacher.config) if teacher is not None else student_shape,
        student_vocab=student.get_output_embeddings().weight.shape[0],
        compute_bytes=2 if mixed_precision else 4,
        fused_student_head=objective.fuses_student_lm_head(student),
        device_type=device_type,
        # the trainer switches the models to eager attention for a component that reads attention probabilities
        eager_attention=objective.needs("needs_attentions")
        or student.config.get_text_config()._attn_implementation == "eager",
    )
    parameters = [*student.parameters(), *objective.parameters()]
    trainable = trained_parameters(student, objective)
    logit_loss = objective.deepest_student_output(student_shape.depth) > student_shape.depth
    teacher_parameters = list(teacher.parameters()) if live_teacher else []
    student_shards, teacher_shards = shards
    gradients = _bytes(trainable) // student_shards
    return MemoryEstimate(
        teacher_weights=_bytes(teacher_parameters) // teacher_shards,
        student_weights=(_bytes(parameters) + sum(b.numel() * b.element_size() for b in student.buffers()))
        // student_shards,
        optimizer_states=optimizer_state_bytes(optim, trainable) // student_shards,
        gradients=gradients,
        student_activations=student_activations(student, step, checkpoint_every_n_layers,
                                                head_in_loss=step.fused_student_head and logit_loss),
        teacher_activations=teacher_activations(teacher, step, objective) if live_teacher else 0,
        objective=objective.memory_footprint(step),
        recomputed_block=block_activations(student, step) if checkpoint_every_n_layers else 0,
        accumulated_gradients=gradients if accumulation_steps > 1 else 0,
        loaded=_bytes(p for p in (*teacher_parameters, *parameters) if p.device.type == device_type),
    )


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the accelerator's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_memory(estimate: MemoryEstimate, device: torch.device) -> str:
    """The estimate as a line to print; a one-line error when even its low end, (1 - MARGIN) x the estimate,
    exceeds what ``device`` has free besides the weights already loaded on it."""
    free = available_memory(device) + estimate.loaded
    line = (f"{estimate.describe()}; {_size(free, 'GiB')} GiB free on {device} (with the "
            f"{_size(estimate.loaded, estimate.unit)} {estimate.unit} of weights already there)")
    if estimate.total * (1 - MARGIN) > free:
        raise DistilyConfigError(
            f"{line}: the run cannot fit; expected a smaller per_device_train_batch_size or max_seq_length, a "
            "smaller teacher dtype, or memory_check=false to try anyway"
        )
    return line
