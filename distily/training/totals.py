"""The whole run's training loss and training time, over every session of a resumed run.

The Trainer's ``train_loss`` and ``train_runtime`` cover the steps of its own ``train()`` call: a run killed and
resumed from a checkpoint would report its last session alone. ``RunTotals`` keeps the training loss summed over
the steps and the training seconds up to each checkpoint in its ``trainer_state.json`` (an ``ExportableState``
callback), so that the session that finishes adds its own to those of the checkpoint it resumed from. The sum is
taken from the Trainer's logged losses (each the mean since the previous log) and a log is forced at every save
and evaluation, so that a checkpoint's sum covers every step before it.
"""

import logging
import math
import time
from typing import Optional

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger(__name__)


class RunTotals(TrainerCallback, ExportableState):
    """The training loss summed over the run's steps and its training seconds, up to the newest checkpoint."""

    def __init__(self):
        self.loss_sum = 0.0  # the training loss summed over the steps up to the last log
        self.seconds = 0.0  # training seconds of the sessions before this one, up to the checkpoint resumed from
        self.resumed_from_step = 0  # the step this session started from (0: the run's first session)
        self.earlier_known = True  # False: resumed from a checkpoint without totals (an older Distily's)
        self._earlier_loss_sum = 0.0
        self._logged_step = 0
        self._started: Optional[float] = None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"loss_sum": self.loss_sum, "seconds": self.seconds + self._session()}}

    def _session(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    def on_train_begin(self, args, state, control, **kwargs):
        stored = state.stateful_callbacks.get(type(self).__name__)
        attributes = stored.get("attributes", {}) if isinstance(stored, dict) else {}
        self.loss_sum = self._earlier_loss_sum = attributes.get("loss_sum", 0.0)
        self.seconds = attributes.get("seconds", 0.0)
        self.resumed_from_step = self._logged_step = state.global_step
        self.earlier_known = state.global_step == 0 or "loss_sum" in attributes
        if not self.earlier_known:
            logger.warning(f"the checkpoint of step {state.global_step} holds no training totals (written by an "
                           "older Distily): train_loss and wall_seconds in metrics.json cover the steps after it")
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_evaluate:  # the checkpoint's sum then covers its last steps
            control.should_log = True

    on_epoch_end = on_step_end

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and math.isfinite(logs["loss"]):  # the mean loss over the steps since the last
            # log (NaN when the guard skipped them all: they count at the next window's mean)
            self.loss_sum += logs["loss"] * (state.global_step - self._logged_step)
            self._logged_step = state.global_step

    def whole_run(self, session_loss: float, session_seconds: float, global_step: int) -> tuple[float, float]:
        """The run's mean training loss and training seconds, from those of the session that ends (the Trainer's
        ``train_loss`` over its steps, its time) and those of the checkpoint it resumed from; the session's own
        in a run's first session, or when that checkpoint holds none."""
        if self.resumed_from_step == 0 or not self.earlier_known:
            return session_loss, session_seconds
        session_steps = global_step - self.resumed_from_step
        return ((self._earlier_loss_sum + session_loss * session_steps) / global_step,
                self.seconds + session_seconds)
