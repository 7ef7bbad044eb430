import pytest
import torch
from transformers import AutoModelForCausalLM

import distily.training.preflight as preflight
from distily.errors import DistilyConfigError
from tiny import tiny_config


def models():
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama"))
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2))
    return teacher, student


def test_estimate_follows_its_formula():
    teacher, student = models()
    estimate = preflight.estimate_memory(teacher, student, batch_size=4, max_seq_length=32, mixed_precision=False)
    params = sum(p.numel() for p in student.parameters())
    assert estimate.student_weights == 4 * params and estimate.gradients == 4 * params
    assert estimate.optimizer_states == 8 * params
    assert estimate.teacher_weights == 4 * sum(p.numel() for p in teacher.parameters())
    assert estimate.logits == 3 * 4 * (4 * 32) * 320
    per_layer = 4 * 32 * 64 * (34 + 5 * 4 * 32 / 64)
    assert estimate.activations == int(per_layer * 2 * 4 / 2)
    half = preflight.estimate_memory(teacher, student, 4, 32, mixed_precision=True)
    assert half.activations == estimate.activations // 2
    assert estimate.total == sum(
        (estimate.teacher_weights, estimate.student_weights, estimate.gradients, estimate.optimizer_states,
         estimate.activations, estimate.logits)
    )


def test_a_run_that_cannot_fit_is_refused(monkeypatch):
    teacher, student = models()
    estimate = preflight.estimate_memory(teacher, student, 4, 32, False)
    monkeypatch.setattr(preflight, "available_memory", lambda device: estimate.total - 1)
    with pytest.raises(DistilyConfigError, match="the run cannot fit"):
        preflight.check_memory(estimate, torch.device("cpu"))
    monkeypatch.setattr(preflight, "available_memory", lambda device: estimate.total * 2)
    assert "estimated peak memory" in preflight.check_memory(estimate, torch.device("cpu"))
