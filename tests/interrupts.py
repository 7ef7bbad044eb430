"""Ctrl-C or a signal during a test's training run, at a chosen step."""

import os

from distily.training.trainer import DistillationTrainer


def ctrl_c_at_training_step(patch, step: int) -> None:
    """Through ``patch`` (pytest's monkeypatch or one of its contexts): a KeyboardInterrupt as the ``step``-th call
    of ``DistillationTrainer.training_step`` starts (counted from 1)."""
    training_step, calls = DistillationTrainer.training_step, []

    def ctrl_c(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == step:
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    patch.setattr(DistillationTrainer, "training_step", ctrl_c)


def signal_at_training_step(patch, step: int, signal_number: int) -> None:
    """Through ``patch``: ``signal_number`` sent to this process as the ``step``-th call of
    ``DistillationTrainer.training_step`` starts (counted from 1: a micro-batch), which then runs on."""
    training_step, calls = DistillationTrainer.training_step, []

    def signalled(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == step:
            os.kill(os.getpid(), signal_number)
        return training_step(self, *args, **kwargs)

    patch.setattr(DistillationTrainer, "training_step", signalled)
