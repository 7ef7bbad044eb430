"""Outputs that are not finite (a teacher's, or a model's as it generates), the line that names the model as their
cause, and such a decision taken by every process together (also whether a block raised on any).

NaN and +inf are never legitimate outputs; -inf is (a logit column a model masks), so a check reads the largest
value: ``amax`` is NaN when any element is, +inf when any is and none is NaN, in one pass with no copy."""

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from distily.errors import DistilyConfigError

FLOAT16_ADVICE = "some families, such as Gemma, overflow in float16"


def nan_or_positive_inf(tensor: torch.Tensor) -> torch.Tensor:
    """Whether ``tensor`` holds NaN or +inf: a bool scalar on its device (reading it waits for the device)."""
    largest = tensor.detach().amax()
    return largest.isnan() | largest.isposinf()


def nonfinite_message(what: str, weights: torch.dtype, autocast: Optional[torch.dtype] = None,
                      role: str = "teacher") -> str:
    """The line for a model (the ``role``) whose ``what`` held NaN or +inf: the precision it ran in (its ``weights``'
    dtype, under the run's ``autocast`` dtype if any) and what to change."""
    if autocast == torch.float16:
        ran, fix = "under the run's fp16 autocast", f"bf16 instead of fp16 ({FLOAT16_ADVICE})"
    elif weights == torch.float16:
        setting = "teacher_torch_dtype" if role == "teacher" else "weights in"
        ran, fix = "with float16 weights", f"{setting} bfloat16 or float32 ({FLOAT16_ADVICE})"
    else:
        ran, fix = f"with {str(weights).removeprefix('torch.')} weights", f"a {role} whose weights are finite"
    return f"{what} hold NaN or +inf (the {role} ran {ran}); expected finite {role} outputs: {fix}"


def largest_on_any_process(value: int, process_group_device: Optional[torch.device]) -> int:
    """The largest of the processes' ``value``: every process calls this together, its collective on
    ``process_group_device`` (None: a run on one process)."""
    if process_group_device is None:
        return value
    values = torch.tensor([value], device=process_group_device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return int(values.item())


def on_any_process(true_here: bool, process_group_device: Optional[torch.device]) -> bool:
    """Whether ``true_here`` holds on any process (``largest_on_any_process``)."""
    return largest_on_any_process(int(true_here), process_group_device) > 0


@contextmanager
def raised_on_every_process(process_group_device: Optional[torch.device], what: str) -> Iterator[None]:
    """Agree, once the block has run on every process, whether it raised on any (``on_any_process``): the process
    that raised raises its error, the others one line naming ``what``, so that none is left waiting for it in the
    next collective (a write one process makes alone, on a full disk)."""
    try:
        yield
    except Exception:
        on_any_process(True, process_group_device)
        raise
    if on_any_process(False, process_group_device):
        raise DistilyConfigError(f"{what} failed on another process, whose error names the cause; expected it to "
                                 "succeed on every process")


class NonFiniteOutputs:
    """Whether a model's outputs (the ``role``'s) held NaN or +inf since the last ``take()``: a flag kept on the
    device, so a healthy run never waits on it; read where a step was skipped, to tell a teacher at fault from the
    student, or after generating."""

    def __init__(self, role: str = "teacher"):
        self.role = role
        self._flag: Optional[torch.Tensor] = None
        self._ran_in: tuple[torch.dtype, Optional[torch.dtype]] = (torch.float32, None)  # weights, autocast

    def add(self, outputs: torch.Tensor, weights: torch.dtype) -> None:
        """Note whether ``outputs`` (from weights of dtype ``weights``) hold NaN or +inf."""
        device = outputs.device.type
        flag = nan_or_positive_inf(outputs)
        self._flag = flag if self._flag is None else self._flag | flag
        self._ran_in = weights, torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None

    def take(self) -> bool:
        """Whether any outputs added since the last ``take`` or ``reset`` held NaN or +inf (waits for the device)."""
        flag = self._flag
        self.reset()
        return flag is not None and bool(flag)

    def reset(self) -> None:
        """Forget the outputs added so far, without reading them."""
        self._flag = None

    def message(self, what: str) -> str:
        return nonfinite_message(what, *self._ran_in, role=self.role)
