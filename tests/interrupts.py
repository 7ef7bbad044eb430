"""Ctrl-C during a test's training run, at a chosen step."""

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
