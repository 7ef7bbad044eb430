"""Training stopped by a stop signal (``distily.preemption``) once the optimizer step under way is checkpointed: a run
preempted by its scheduler resumes from that step as from any checkpoint, and is not finished (no final evaluation,
student or metrics.json)."""

from typing import Optional

import torch.distributed as dist
from transformers import TrainerCallback

from distily.errors import RunInterrupted
from distily.models.finite import largest_on_any_process
from distily.preemption import StopSignals, stopped_on


class StopAtSignal(TrainerCallback):
    """Once ``signals`` has received a stop signal (on any process: the processes agree at each step's end, as each
    may get it at another step), the step ends as the Trainer ends it (logged, evaluated when due) with a checkpoint,
    and training stops with ``RunInterrupted`` as soon as that is written, skipping what ``train()`` does at the end
    of a finished run; a signal while a step is evaluated or checkpointed stops at that step's checkpoint (written
    after the evaluation). Listed before the callbacks that act on a save (``RunTotals`` logs at it)."""

    def __init__(self, signals: StopSignals):
        self.signals = signals
        self.stopping: Optional[int] = None  # the signal's number, once the processes agreed to stop

    def _agreed_signal(self, args) -> Optional[int]:
        return largest_on_any_process(self.signals.received or 0, args.device if args.world_size > 1 else None) or None

    def on_step_end(self, args, state, control, **kwargs):
        self.stopping = self._agreed_signal(args)
        if self.stopping is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, **kwargs):
        if self.stopping is None:  # a signal during the step's evaluation: its checkpoint now (the last step's too)
            self.on_step_end(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopping is not None:  # the step was not saved (save_strategy=best, not the best): now, as it is
            control.should_save = True
            control.should_evaluate = False

    def on_save(self, args, state, control, **kwargs):
        if self.stopping is None:  # a signal while this checkpoint (of the step under way) was written: stop at it
            self.stopping = self._agreed_signal(args)
        if self.stopping is None:
            return
        if args.world_size > 1:
            dist.barrier()  # every process's part of the checkpoint is written
        raise RunInterrupted(f"{stopped_on(self.stopping)} at step {state.global_step}", self.stopping)
