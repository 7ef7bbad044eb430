"""The Trainer's model: the student and the objective, whose trainable heads (projectors, norms) train with it.

Because the heads are parameters of the one module the Trainer holds, the optimizer, DDP/FSDP/ZeRO, gradient
clipping, zeroing and checkpoints treat them like the student's own. The forward runs the student and the
objective together, so under DDP the loss (and every head's gradient) comes out of the wrapped forward.
Only the student is ever exported (``DistillationTrainer.save_model``).
"""

from typing import Any, Callable, Optional

import torch
from accelerate.utils import convert_to_fp32
from torch import nn
from transformers import PreTrainedModel

from distily.data.framing import model_inputs
from distily.errors import DistilyConfigError
from distily.objectives.objective import DistillationObjective

STUDENT, OBJECTIVE = "student", "objective"  # the two children: prefixes of the state dict's names


def aliased_names(module: nn.Module) -> list[str]:
    """Names under which a parameter already named earlier appears again (tied embeddings and LM head)."""
    seen, aliases = set(), []
    for name, parameter in module.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            aliases.append(name)
        seen.add(id(parameter))
    return aliases


class DistillationModel(nn.Module):
    main_input_name = "input_ids"

    def __init__(self, student: PreTrainedModel, objective: DistillationObjective):
        super().__init__()
        self.student = student
        self.objective = objective
        # when no component reads the student's logits, the logit loss applies its LM head chunk by chunk
        self.fuse_lm_head = objective.fuses_student_lm_head(student)
        # a tied parameter is saved once; the Trainer re-ties it when a checkpoint lacks exactly these names
        self._keys_to_ignore_on_save = aliased_names(self)

    @property
    def config(self):
        """The student's configuration (the Trainer reads and sets ``use_cache`` on it)."""
        return self.student.config

    @property
    def _no_split_modules(self) -> Optional[list[str]]:
        """The student's decoder-layer classes, read off the model accelerate prepares by FSDP's transformer-based
        wrap policy: each student layer becomes its own unit, gathered as it runs (without them, the whole
        student would be one unit, gathered at once)."""
        return self.student._no_split_modules

    def forward(
        self,
        batch: Optional[dict[str, torch.Tensor]] = None,
        teacher_outputs: Any = None,
        counts: Optional[torch.Tensor] = None,
        *,
        use_student: Optional[Callable[[PreTrainedModel], Any]] = None,
    ) -> Any:
        """The objective on the student's outputs for ``batch`` against ``teacher_outputs``, and those outputs.

        With ``use_student``, only ``use_student(student)`` instead (generation, evaluation): under FSDP the
        student's embeddings and head are this module's, gathered for its forward, so a sharded student runs
        whole only inside it (``DistillationTrainer.run_student``)."""
        if use_student is not None:
            return use_student(self.student)
        student_outputs = self.student(
            **model_inputs(batch),
            output_hidden_states=self.fuse_lm_head or self.objective.needs("needs_hidden_states"),
            output_attentions=self.objective.needs("needs_attentions"),
            **({"logits_to_keep": 1} if self.fuse_lm_head else {}),
        )
        # the objective reads the student's outputs in fp32, as a mixed-precision student returns them
        student_outputs = convert_to_fp32(student_outputs)
        return self.objective(student_outputs, teacher_outputs, batch, counts), student_outputs

    def state_dict(self, *args, **kwargs):
        """Each tensor once, without the names of ``_keys_to_ignore_on_save``, and contiguous (an orthogonal
        projector's parametrization is a transposed view): what safetensors writes."""
        state = super().state_dict(*args, **kwargs)
        for name in self._keys_to_ignore_on_save:
            state.pop(kwargs.get("prefix", "") + name, None)
        for name, tensor in state.items():
            if not tensor.is_contiguous():
                state[name] = tensor.contiguous()
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint of this model; the objective's part must be exactly this objective's (the Trainer
        loads non-strictly, and missing projectors would silently start over)."""
        prefix = f"{OBJECTIVE}."
        expected = {prefix + name for name in self.objective.state_dict()}
        given = {name for name in state_dict if name.startswith(prefix)}
        misfits = sorted(expected ^ given)
        if misfits:
            raise DistilyConfigError(
                f"the checkpoint's objective state does not fit this objective (first misfit: {misfits[0]}); "
                "expected a checkpoint written with the same objective settings and models"
            )
        return super().load_state_dict(state_dict, strict, assign)

    def tie_weights(self) -> None:
        self.student.tie_weights()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """The student's (what the Trainer counts floating-point operations with)."""
        return self.student.num_parameters(exclude_embeddings=exclude_embeddings)

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.student.activation_checkpointing_enable(**kwargs)
