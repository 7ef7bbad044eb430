"""Sparse logit losses against a recorded teacher: the k + 1 bucket form, checked against dense losses
and against the coarse-grained KL written out by hand."""

import math

import pytest
import torch

from distily.errors import DistilyConfigError
from distily.objectives.losses import LOSSES, between_distributions, forward_kl
from distily.objectives.sparse import (
    BucketLoss,
    SparseLogitsComponent,
    bucket_logprobs,
    check_sparse_loss,
    sparse_losses,
)
from distily.recording.targets import sparse_targets

PARAMS = {"cakld": {"beta": 0.3}, "jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2},
          "skew_reverse_kl": {"alpha": 0.2}}


def _logits(*shape, scale=3.0, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _stored(teacher_logits, k, temperature):
    """What a store keeps: float16 top-k log-probabilities, ids, float32 tail."""
    top, ids, tail = sparse_targets(teacher_logits, k, temperature)
    return top.half(), ids, tail


def _sparse_loss(name, student_logits, stored, temperature):
    student, teacher = bucket_logprobs(student_logits, *stored, temperature)
    return LOSSES[name](student, teacher, 1.0, **PARAMS.get(name, {})) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", sorted(sparse_losses()))
def test_sparse_loss_at_full_vocabulary_equals_the_dense_loss(name, temperature):
    student_logits, teacher_logits = _logits(6, 50, seed=1), _logits(6, 50, seed=2)
    stored = _stored(teacher_logits, 50, temperature)
    # the dense loss on the same float16-rounded teacher log-probabilities (as logits at temperature T)
    rounded = torch.empty_like(teacher_logits).scatter(-1, stored[1], stored[0].float()) * temperature
    dense = LOSSES[name](student_logits, rounded, temperature, **PARAMS.get(name, {}))
    sparse = _sparse_loss(name, student_logits, stored, temperature)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    # and against the unrounded teacher, within float16 rounding
    exact = LOSSES[name](student_logits, teacher_logits, temperature, **PARAMS.get(name, {}))
    torch.testing.assert_close(sparse, exact, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("k", [5, 50])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", sorted(sparse_losses()))
def test_the_bucket_loss_gradient_in_closed_form_equals_autograd(name, temperature, k):
    student_logits, teacher_logits = _logits(6, 50, seed=11), _logits(6, 50, seed=12)
    stored, loss = _stored(teacher_logits, k, temperature), BucketLoss(LOSSES[name])
    student = student_logits.clone().requires_grad_()
    expected = loss(student, stored, temperature, **PARAMS.get(name, {}))
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    with torch.no_grad():  # as the chunked loss calls it
        value, grad = loss.value_and_gradient(student_logits, stored, temperature, **PARAMS.get(name, {}))
    torch.testing.assert_close(value, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_sparse_forward_kl_is_the_kl_of_the_bucketed_distributions():
    student_logits, teacher_logits = _logits(8, 40, seed=3), _logits(8, 40, seed=4)
    k = 5
    stored = _stored(teacher_logits, k, 1.0)
    pt, ps = teacher_logits.double().softmax(-1), student_logits.double().softmax(-1)
    ids = stored[1]
    in_top = torch.zeros_like(pt, dtype=torch.bool).scatter(-1, ids, True)
    bucket_t = torch.cat([pt.gather(-1, ids), (pt * ~in_top).sum(-1, keepdim=True)], -1)
    bucket_s = torch.cat([ps.gather(-1, ids), (ps * ~in_top).sum(-1, keepdim=True)], -1)
    coarse_kl = (bucket_t * (bucket_t.log() - bucket_s.log())).sum(-1)
    sparse = _sparse_loss("forward_kl", student_logits, stored, 1.0)
    torch.testing.assert_close(sparse.double(), coarse_kl, rtol=2e-3, atol=1e-5)
    # a coarse-graining never raises a KL; renormalising the top k alone gives another (biased) value
    assert (sparse <= forward_kl(student_logits, teacher_logits) + 1e-5).all()
    top_t = bucket_t[:, :k] / bucket_t[:, :k].sum(-1, keepdim=True)
    top_s = bucket_s[:, :k] / bucket_s[:, :k].sum(-1, keepdim=True)
    renormalised = (top_t * (top_t.log() - top_s.log())).sum(-1)
    assert not torch.allclose(sparse.double(), renormalised, atol=1e-3)


def test_tail_is_one_bucket_whose_mass_the_student_must_match():
    """A student equal to the teacher on the top k and on the tail's total is at the optimum whatever it does
    inside the tail; one with the right top-k ratios but the wrong tail mass is not."""
    teacher_logits = torch.tensor([[4.0, 3.0, 2.0, 0.0, 0.0, 0.0]])
    stored = _stored(teacher_logits, 3, 1.0)
    inside_tail_differs = torch.tensor([[4.0, 3.0, 2.0, 0.5, -1.0, math.log(3 - math.exp(0.5) - math.exp(-1.0))]])
    exact = _sparse_loss("forward_kl", inside_tail_differs.requires_grad_(), stored, 1.0).sum()
    assert exact.item() == pytest.approx(0.0, abs=1e-4)
    (gradient,) = torch.autograd.grad(exact, inside_tail_differs)
    assert gradient.abs().max() < 1e-3
    no_tail_mass = torch.tensor([[4.0, 3.0, 2.0, -20.0, -20.0, -20.0]])  # renormalised top-3 is exact here
    assert _sparse_loss("forward_kl", no_tail_mass, stored, 1.0).item() > 0.1


def test_gradient_reaches_the_student_and_vanishes_at_the_teacher():
    teacher_logits = _logits(4, 30, seed=5)
    stored = _stored(teacher_logits, 8, 2.0)
    student = _logits(4, 30, seed=6).requires_grad_()
    (gradient,) = torch.autograd.grad(_sparse_loss("jsd", student, stored, 2.0).sum(), student)
    assert gradient.abs().sum() > 0 and torch.isfinite(gradient).all()
    at_teacher = teacher_logits.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(_sparse_loss("forward_kl", at_teacher, stored, 2.0).sum(), at_teacher)
    assert gradient.abs().max() < 1e-3  # float16 targets: zero up to their rounding


def test_component_masks_padding_and_checks_the_temperature():
    from distily.objectives.sparse import RecordedTeacherOutput

    teacher_logits, student_logits = _logits(2, 5, 20, seed=7), _logits(2, 5, 20, seed=8)
    top, ids, tail = _stored(teacher_logits.flatten(0, 1), 4, 1.0)
    teacher = RecordedTeacherOutput(top.view(2, 5, 4), ids.view(2, 5, 4), tail.view(2, 5), temperature=1.0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student = type("Out", (), {"logits": student_logits})()
    total = SparseLogitsComponent("forward_kl")(student, teacher, {"attention_mask": mask})
    per_token = _sparse_loss("forward_kl", student_logits.flatten(0, 1), (top, ids, tail), 1.0).view(2, 5)
    torch.testing.assert_close(total, per_token[mask.bool()].sum())
    with pytest.raises(DistilyConfigError,
                       match=r"logits_temperature=2.0 differs from the store's recording temperature 1.0"):
        SparseLogitsComponent("forward_kl", temperature=2.0)(student, teacher, {"attention_mask": mask})


def test_the_divergences_have_a_sparse_form_and_a_marked_loss_of_ones_own_gets_one(monkeypatch):
    assert sorted(sparse_losses()) == sorted(set(LOSSES) - {"mse", "cosine"})
    monkeypatch.setitem(LOSSES, "half_kl", between_distributions(lambda s, t, temperature=1.0: forward_kl(s, t) / 2))
    monkeypatch.setitem(LOSSES, "raw_l1", lambda s, t, temperature=1.0: (s - t).abs().sum(-1))
    check_sparse_loss("half_kl")
    with pytest.raises(DistilyConfigError, match="logits_loss='raw_l1' has no sparse form"):
        check_sparse_loss("raw_l1")


@pytest.mark.parametrize("name", ["mse", "cosine"])
def test_a_loss_without_a_sparse_form_is_a_clear_error(name):
    with pytest.raises(DistilyConfigError, match=rf"logits_loss='{name}' has no sparse form for a recorded teacher"):
        check_sparse_loss(name)


@pytest.mark.parametrize("name,temperature", [("forward_kl", 1.0), ("jsd", 2.0)])
def test_the_fused_lm_head_gives_the_full_logits_loss_and_gradients(name, temperature):
    """Against a store, the student's LM head applied chunk by chunk inside the loss (its logits never built) gives
    the loss and the gradients of the hidden states and of the head that the full logits give."""
    from types import SimpleNamespace

    from distily.objectives.sparse import RecordedTeacherOutput

    batch, seq, width, vocab, k = 2, 7, 8, 40, 5
    generator = torch.Generator().manual_seed(9)
    hidden = torch.randn(batch, seq, width, generator=generator, requires_grad=True)
    head = torch.nn.Linear(width, vocab, bias=True)
    top, ids, tail = _stored(_logits(batch * seq, vocab, seed=10), k, temperature)
    teacher = RecordedTeacherOutput(top.view(batch, seq, k), ids.view(batch, seq, k), tail.view(batch, seq),
                                    temperature=temperature)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 5:] = 0
    component = SparseLogitsComponent(name, temperature=temperature, **PARAMS.get(name, {}))
    component.attach(SimpleNamespace(get_output_embeddings=lambda: head), None)

    def gradients(student_outputs):
        loss = component(student_outputs, teacher, {"attention_mask": mask})
        return (loss, *torch.autograd.grad(loss, [hidden, head.weight, head.bias]))

    full = gradients(SimpleNamespace(logits=head(hidden)))
    # as the trainer runs a fused student: logits of the last position only, the final hidden states
    fused = gradients(SimpleNamespace(logits=head(hidden[:, -1:]), hidden_states=(hidden,)))
    masked = torch.tensor([True] * 5 + [False] * 2 + [True] * 7)
    per_token = _sparse_loss(name, head(hidden).flatten(0, 1)[masked], (top[masked], ids[masked], tail[masked]),
                             temperature)
    torch.testing.assert_close(full[0], per_token.sum())
    for fused_value, full_value in zip(fused, full):
        torch.testing.assert_close(fused_value, full_value, rtol=1e-5, atol=1e-6)
    assert not component.needs_student_logits


@pytest.mark.parametrize("name", sorted(sparse_losses()))
def test_a_confident_students_tail_keeps_the_closed_form_finite(name):
    """A student whose recorded top-k tokens sit 120 logits above the rest has a tail mass of about e^-120, below
    float32's smallest number as a sum of probabilities: the closed form must give autograd's value and
    gradient (the log-space tail) rather than inf or nan."""
    teacher_logits = _logits(4, 50, scale=2.0, seed=21)
    stored, loss = _stored(teacher_logits, 5, 1.0), BucketLoss(LOSSES[name])
    student_logits = torch.full((4, 50), -120.0).scatter_(1, stored[1].long(), _logits(4, 5, scale=1.0, seed=22))
    student = student_logits.clone().requires_grad_()
    expected = loss(student, stored, 1.0, **PARAMS.get(name, {}))
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    with torch.no_grad():
        value, grad = loss.value_and_gradient(student_logits, stored, 1.0, **PARAMS.get(name, {}))
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(value, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
