"""What a run logs of its objective: each component's mean over the logging window, as the objective computed it."""

from pathlib import Path

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


def test_the_evaluations_before_and_after_training_are_logged_once_each_as_evaluations(
        teacher_dirs, run_values, monkeypatch):
    """The Trainer evaluates at the last step (an eval_strategy of steps always does), and the evaluation after
    training ran again on the same weights: every eval set, generation eval included, twice, its numbers logged twice.
    The evaluation before training was logged as before_* at step 0, which tensorboard files under train/
    (train/before_loss); it is the step-0 point of the eval/ curves, as the Trainer's eval_on_start logs it (not in
    the log history, which train() starts anew)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    evaluated_after, history, train = [], [], DistillationTrainer.train

    def training(self, *args, **kwargs):
        output = train(self, *args, **kwargs)
        history.extend(self.state.log_history)
        evaluator = self.evaluator
        self.evaluator = lambda student: evaluated_after.append(True) or evaluator(student)
        return output

    monkeypatch.setattr(DistillationTrainer, "train", training)
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=4,
                        eval_strategy="steps", eval_steps=2, report_to="tensorboard")
    metrics = run_distillation(parse_config(**values))
    student = metrics["student"]
    assert not evaluated_after
    last = next(entry for entry in reversed(history) if "eval_loss" in entry)
    assert last["step"] == 4 and student["after_loss"] == last["eval_loss"]
    assert student["after_perplexity"] == last["eval_perplexity"]
    events = [EventAccumulator(str(path)) for path in Path(values["output_dir"]).glob("runs/*/events.out.tfevents.*")]
    tags = {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for accumulator in events if accumulator.Reload() for tag in accumulator.Tags()["scalars"]}
    assert [step for step, _ in tags["eval/loss"]] == [0, 2, 4]
    assert tags["eval/loss"][0][1] == pytest.approx(student["before_loss"], rel=1e-6)
    assert tags["eval/perplexity"][-1][1] == pytest.approx(student["after_perplexity"], rel=1e-6)
    assert not [tag for tag in tags if tag.startswith(("train/before", "train/after"))]
