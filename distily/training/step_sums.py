"""The objective's components summed over the optimizer steps the student took: per logging window (each
component's mean since the last log) and over the training session, leaving out the steps the non-finite guard
skipped. The Trainer's own loss counts a skipped step's non-finite loss as its window's running mean (0 when it is
the first of its window), which makes the logged loss and ``train_loss`` wrong; these sums give the right ones."""

import torch


def _add(sums: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        sums[name] = sums.get(name, 0.0) + value


class StepSums:
    def __init__(self):
        self._step: dict[str, torch.Tensor] = {}  # the step under way, micro-batch by micro-batch
        self.window: dict[str, torch.Tensor] = {}
        self.window_steps = self.window_skipped = 0
        self.session: dict[str, torch.Tensor] = {}
        self.session_steps = self.session_skipped = 0

    def add(self, components: dict[str, torch.Tensor]) -> None:
        """A micro-batch's components (its part of the step's per-token mean)."""
        _add(self._step, {name: value.detach().float() for name, value in components.items()})

    def close_step(self, skipped: bool) -> None:
        """The step under way is over: into the sums, or, ``skipped`` by the guard, counted apart."""
        if not self._step:
            return
        if skipped:
            self.window_skipped += 1
            self.session_skipped += 1
        else:
            _add(self.window, self._step)
            _add(self.session, self._step)
            self.window_steps += 1
            self.session_steps += 1
        self._step = {}

    def take_window(self) -> tuple[dict[str, torch.Tensor], int, int]:
        """The window's sums, the steps taken and skipped in it; the next window starts empty."""
        taken = (self.window, self.window_steps, self.window_skipped)
        self.window, self.window_steps, self.window_skipped = {}, 0, 0
        return taken
