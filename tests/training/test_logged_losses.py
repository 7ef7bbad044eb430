"""What a run logs of its objective: each component's mean over the logging window, as the objective computed it."""

import pytest
import torch

from distily.config import parse_config
from distily.objectives.objective import DistillationObjective
from distily.training.distill import run_distillation
from distily.training.trainer import DistillationTrainer


def test_each_component_is_logged_as_computed_however_small(teacher_dirs, run_values, monkeypatch):
    """The components were logged rounded to 6 decimals (the loss, where steps were skipped, to 4): a student close to
    its teacher logged its KL with two or three digits, or none under 5e-7 (transformers 5 logs its loss unrounded).
    The student is the teacher's copy here, trained on the data's next tokens too, so its KL grows from 0."""
    computed, history = [], []  # each training micro-batch's components; the Trainer's log history
    forward, train = DistillationObjective.forward, DistillationTrainer.train

    def recording(self, *args):
        output = forward(self, *args)
        if torch.is_grad_enabled():
            computed.append({name: float(value) for name, value in output.components.items()})
        return output

    def training(self, *args, **kwargs):
        output = train(self, *args, **kwargs)
        history.extend(self.state.log_history)
        return output

    monkeypatch.setattr(DistillationObjective, "forward", recording)
    monkeypatch.setattr(DistillationTrainer, "train", training)
    values = run_values(teacher_dirs["llama"], hard_label_weight=0.5, max_steps=4, logging_steps=2,
                        per_device_train_batch_size=2, gradient_accumulation_steps=2, warmup_steps=0)
    run_distillation(parse_config(**values))
    logged = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4] and len(computed) == 8
    for window, entry in enumerate(logged):  # each window: 2 steps of 2 micro-batches, each its part of its step
        for name in ("logits", "hard_label"):
            expected = sum(step[name] for step in computed[4 * window:4 * window + 4]) / 2
            assert entry[f"loss_{name}"] == pytest.approx(expected, rel=1e-6), (name, entry)
        assert entry["loss"] == pytest.approx(entry["loss_logits"] + 0.5 * entry["loss_hard_label"], rel=1e-6)
    assert 0 < logged[0]["loss_logits"] < 1e-3  # 1.35e-4: rounded, 0.000135, off by 2e-3 of its value
