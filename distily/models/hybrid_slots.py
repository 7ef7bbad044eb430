"""Module lists inside a decoder layer with one entry (slot) per hybrid layer: Zamba2's shared transformer blocks hold
an adapter per hybrid layer (``hybrid_layer_ids``), the k-th hybrid layer running slot k. A student copying chosen
teacher layers has other hybrid layers: its j-th takes the slot of the teacher hybrid layer it stands for."""

import re
from typing import Optional

import torch
from transformers import PretrainedConfig

from distily.errors import DistilyConfigError

HYBRID_LAYERS = "hybrid_layer_ids"
SLOT = re.compile(r"_adapter_list\.(\d+)\.")  # Zamba2's linear_{q,k,v}_adapter_list, gate_up_proj_adapter_list


def hybrid_slots(teacher: PretrainedConfig, layers: list[int]) -> Optional[dict[int, int]]:
    """The teacher slot each student slot takes, where student layer i is a copy of teacher layer ``layers[i]``:
    the student's j-th hybrid layer stands for the teacher's k-th; None for a teacher without hybrid layers."""
    rank = {layer: k for k, layer in enumerate(getattr(teacher, HYBRID_LAYERS, None) or [])}
    if not rank:
        return None
    slots = dict(enumerate(rank[layer] for layer in layers if layer in rank))
    _check_shared_blocks(teacher, [layer for layer in layers if layer in rank], slots)
    return slots


def _check_shared_blocks(teacher: PretrainedConfig, copied: list[int], slots: dict[int, int]) -> None:
    """Hybrid layers j and j + num_mem_blocks share one transformer block's weights (in the teacher and the student
    alike): the student's that share one must copy teacher hybrid layers that share one."""
    blocks = getattr(teacher, "num_mem_blocks", 1)
    taken: dict[int, tuple[int, int]] = {}  # student block -> (teacher block, teacher layer) it copies
    for student_slot, teacher_slot in slots.items():
        block, first = taken.setdefault(student_slot % blocks, (teacher_slot % blocks, copied[student_slot]))
        if block != teacher_slot % blocks:
            raise DistilyConfigError(
                f"student hybrid layers copying teacher layers {first} and {copied[student_slot]} would share one "
                f"transformer block (num_mem_blocks={blocks}), which those layers do not; expected "
                "student_layers_from_teacher whose hybrid layers sharing a block copy teacher layers sharing one"
            )


def slotted_state(teacher_state: dict[str, torch.Tensor], student_names: list[str],
                  slots: dict[int, int]) -> dict[str, torch.Tensor]:
    """A teacher layer's tensors under the names a student layer gives them: a slot's entries from the teacher slot
    it takes (``hybrid_slots``), the teacher's other slots left out."""
    state = {name: tensor for name, tensor in teacher_state.items() if not SLOT.search(name)}
    for name in student_names:
        match = SLOT.search(name)
        if match is None:
            continue
        source = f"{name[:match.start(1)]}{slots[int(match.group(1))]}{name[match.end(1):]}"
        if source in teacher_state:
            state[name] = teacher_state[source]
    return state
