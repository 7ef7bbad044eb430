"""Property tests for every logit loss, each against a plain reference formula written here."""

import math

import pytest
import torch

from distily.errors import DistilyConfigError
from distily.objectives.losses import LOSSES, check_loss, loss_params, teacher_confidence

PARAMS = {"cakld": {"beta": 0.3}, "jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2},
          "skew_reverse_kl": {"alpha": 0.2}}
LOGIT_SPACE = {"mse", "cosine"}  # losses on raw logits: independent of the temperature
DIVERGENCES = sorted(set(LOSSES) - {"soft_cross_entropy"})  # zero exactly when student == teacher


def _kl(p, q):
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def _reference(name, student_logits, teacher_logits, temperature, params):
    """The textbook formula on probabilities, in float64, independent of the library's code."""
    s, t = student_logits.double(), teacher_logits.double()
    ps, pt = torch.softmax(s / temperature, -1), torch.softmax(t / temperature, -1)
    scale = temperature**2
    if name == "forward_kl":
        return _kl(pt, ps) * scale
    if name == "reverse_kl":
        return _kl(ps, pt) * scale
    if name == "cakld":
        return (params["beta"] * _kl(ps, pt) + (1 - params["beta"]) * _kl(pt, ps)) * scale
    if name == "jsd":
        beta = params["beta"]
        m = beta * pt + (1 - beta) * ps
        return (beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)) * scale
    if name == "skew_forward_kl":
        return _kl(pt, params["alpha"] * pt + (1 - params["alpha"]) * ps) * scale
    if name == "skew_reverse_kl":
        return _kl(ps, (1 - params["alpha"]) * pt + params["alpha"] * ps) * scale
    if name == "tvd":
        return 0.5 * (pt - ps).abs().sum(-1) * scale
    if name == "soft_cross_entropy":
        return -torch.xlogy(pt, ps).sum(-1) * scale
    if name == "mse":
        return ((s - t) ** 2).mean(-1)
    if name == "cosine":
        return 1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    raise AssertionError(name)


def _logits(*shape, scale=3.0, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _loss(name, student, teacher, temperature=1.0):
    return LOSSES[name](student, teacher, temperature, **PARAMS.get(name, {}))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_value_and_gradient_match_reference(name, temperature):
    teacher = _logits(6, 11, seed=1)
    student = _logits(6, 11, seed=2).requires_grad_()
    loss = _loss(name, student, teacher, temperature)
    (grad,) = torch.autograd.grad(loss.sum(), student)

    student64 = student.detach().double().requires_grad_()
    reference = _reference(name, student64, teacher, temperature, PARAMS.get(name, {}))
    (reference_grad,) = torch.autograd.grad(reference.sum(), student64)

    assert loss.shape == (6,) and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), reference_grad, rtol=1e-4, atol=1e-6)


CLOSED_FORMS = sorted(name for name, loss in LOSSES.items() if hasattr(loss, "value_and_gradient"))


def test_every_divergence_has_a_closed_form_gradient():
    assert set(CLOSED_FORMS) == {"forward_kl", "reverse_kl", "cakld", "jsd", "skew_forward_kl", "skew_reverse_kl",
                                 "soft_cross_entropy", "tvd"}


def _check_closed_form(name, student, teacher, temperature, params):
    """The loss's closed-form value and gradient against autograd on the float64 reference formula."""
    value, grad = LOSSES[name].value_and_gradient(student, teacher, temperature, **params)
    student64 = student.double().requires_grad_()
    reference = _reference(name, student64, teacher.double(), temperature, params)
    (reference_grad,) = torch.autograd.grad(reference.sum(), student64)
    assert value.dtype == grad.dtype == torch.float32 and grad.shape == student.shape
    torch.testing.assert_close(value.double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), reference_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_form_value_and_gradient_match_reference(name, temperature, dtype):
    teacher, student = _logits(6, 11, seed=1).to(dtype), _logits(6, 11, seed=2).to(dtype)
    _check_closed_form(name, student, teacher, temperature, PARAMS.get(name, {}))


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_compute_in_fp32_under_autocast(name):
    """The chunked loss calls them under the run's mixed precision: no op of theirs may drop to bf16 there."""
    teacher, student = _logits(6, 4096, seed=5), _logits(6, 4096, seed=6)
    value, grad = LOSSES[name].value_and_gradient(student, teacher, 2.0, **PARAMS.get(name, {}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value, autocast_grad = LOSSES[name].value_and_gradient(student, teacher, 2.0, **PARAMS.get(name, {}))
    torch.testing.assert_close(autocast_value, value, rtol=1e-6, atol=0)
    torch.testing.assert_close(autocast_grad, grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("name", "params"), [
    ("cakld", {"beta": 0.0}), ("cakld", {"beta": 1.0}), ("jsd", {"beta": 0.02}), ("jsd", {"beta": 0.98}),
    ("skew_forward_kl", {"alpha": 0.0}), ("skew_reverse_kl", {"alpha": 0.0}), ("skew_reverse_kl", {"alpha": 0.9}),
])  # fmt: skip
def test_closed_form_gradient_at_the_ends_of_the_parameter_range(name, params):
    _check_closed_form(name, _logits(6, 11, seed=4), _logits(6, 11, seed=3), 2.0, params)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_non_negative(name):
    teacher = _logits(64, 50, seed=3)
    near_teacher = teacher + 1e-3 * _logits(64, 50, seed=5)
    for student in (_logits(64, 50, seed=4), near_teacher, _logits(64, 50, scale=30, seed=6)):
        assert (_loss(name, student, teacher) >= -1e-6).all()


@pytest.mark.parametrize("name", DIVERGENCES)
def test_zero_with_zero_gradient_when_student_equals_teacher(name):
    teacher = _logits(8, 40, seed=7)
    student = teacher.clone().requires_grad_()
    loss = _loss(name, student, teacher, 2.0)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    torch.testing.assert_close(loss, torch.zeros(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-6, rtol=0)
    if name in CLOSED_FORMS:
        value, closed_grad = LOSSES[name].value_and_gradient(teacher, teacher, 2.0, **PARAMS.get(name, {}))
        torch.testing.assert_close(value, torch.zeros(8), atol=1e-6, rtol=0)
        torch.testing.assert_close(closed_grad, torch.zeros_like(grad), atol=1e-6, rtol=0)


def test_soft_cross_entropy_is_forward_kl_plus_teacher_entropy():
    teacher, student = _logits(8, 40, seed=8), _logits(8, 40, seed=9)
    teacher_probs = torch.softmax(teacher.double(), -1)
    entropy = -torch.xlogy(teacher_probs, teacher_probs).sum(-1)
    torch.testing.assert_close(LOSSES["soft_cross_entropy"](student, teacher).double(),
                               LOSSES["forward_kl"](student, teacher).double() + entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(LOSSES["soft_cross_entropy"](teacher, teacher).double(), entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_rows_are_independent_so_caller_masking_is_exact(name):
    student, teacher = _logits(5, 30, seed=10), _logits(5, 30, seed=11)
    padded_student = torch.cat([student, _logits(3, 30, scale=100, seed=12)])
    padded_teacher = torch.cat([teacher, _logits(3, 30, scale=100, seed=13)])
    torch.testing.assert_close(_loss(name, padded_student, padded_teacher)[:5], _loss(name, student, teacher))


@pytest.mark.parametrize("name", sorted(set(LOSSES) - LOGIT_SPACE))
def test_temperature_divides_logits_and_scales_by_its_square(name):
    student, teacher = _logits(6, 20, seed=14), _logits(6, 20, seed=15)
    torch.testing.assert_close(_loss(name, student, teacher, 4.0), 16.0 * _loss(name, student / 4.0, teacher / 4.0))


@pytest.mark.parametrize("name", sorted(LOGIT_SPACE))
def test_logit_space_losses_ignore_temperature(name):
    student, teacher = _logits(6, 20, seed=16), _logits(6, 20, seed=17)
    torch.testing.assert_close(_loss(name, student, teacher, 4.0), _loss(name, student, teacher))


@pytest.mark.parametrize("name", ["forward_kl", "soft_cross_entropy"])
def test_high_temperature_gradient_approaches_logit_matching(name):
    """Hinton et al. (2015), Sec. 2.1: for zero-mean logits, T^2 dKL/dz_s -> (z_s - z_t) / V as T grows."""
    student, teacher = _logits(4, 25, scale=1.0, seed=18), _logits(4, 25, scale=1.0, seed=19)
    student = (student - student.mean(-1, keepdim=True)).requires_grad_()
    teacher = teacher - teacher.mean(-1, keepdim=True)
    (grad,) = torch.autograd.grad(LOSSES[name](student, teacher, 2000.0).sum(), student)
    torch.testing.assert_close(grad, (student.detach() - teacher) / 25, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("name", ["tvd", "mse", "cosine"])
def test_symmetric_losses(name):
    student, teacher = _logits(6, 20, seed=20), _logits(6, 20, seed=21)
    torch.testing.assert_close(LOSSES[name](student, teacher), LOSSES[name](teacher, student))


def test_jsd_is_symmetric_at_half_and_swaps_beta_otherwise():
    student, teacher = _logits(6, 20, seed=22), _logits(6, 20, seed=23)
    jsd = LOSSES["jsd"]
    torch.testing.assert_close(jsd(student, teacher), jsd(teacher, student))
    torch.testing.assert_close(jsd(student, teacher, beta=0.2), jsd(teacher, student, beta=0.8))
    assert (jsd(_logits(6, 20, scale=50, seed=24), teacher) <= math.log(2) + 1e-6).all()


def test_jsd_tends_to_forward_and_reverse_kl_at_the_ends():
    student, teacher = _logits(6, 20, scale=1.0, seed=25), _logits(6, 20, scale=1.0, seed=26)
    small = 1e-3  # the error is O(small) and fp32 rounding grows as small shrinks
    torch.testing.assert_close(LOSSES["jsd"](student, teacher, beta=small) / small,
                               LOSSES["forward_kl"](student, teacher), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(LOSSES["jsd"](student, teacher, beta=1 - small) / small,
                               LOSSES["reverse_kl"](student, teacher), rtol=1e-2, atol=1e-3)


def test_special_cases_reduce_to_plain_kl():
    student, teacher = _logits(6, 20, seed=27), _logits(6, 20, seed=28)
    forward, reverse = LOSSES["forward_kl"](student, teacher), LOSSES["reverse_kl"](student, teacher)
    torch.testing.assert_close(LOSSES["cakld"](student, teacher, beta=0.0), forward)
    torch.testing.assert_close(LOSSES["cakld"](student, teacher, beta=1.0), reverse)
    torch.testing.assert_close(LOSSES["skew_forward_kl"](student, teacher, alpha=0.0), forward)
    torch.testing.assert_close(LOSSES["skew_reverse_kl"](student, teacher, alpha=0.0), reverse)


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "skew_forward_kl", "tvd", "soft_cross_entropy"])
def test_teacher_minus_infinity_is_allowed_where_the_loss_is_finite(name):
    teacher = _logits(6, 20, seed=29)
    teacher[:, 5:12] = -math.inf  # tokens the teacher rules out, e.g. outside a recorded top-k
    student = _logits(6, 20, seed=30).requires_grad_()
    loss = _loss(name, student, teacher)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    reference = _reference(name, student.detach(), teacher, 1.0, PARAMS.get(name, {}))
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-6)
    if name in CLOSED_FORMS:
        value, closed_grad = LOSSES[name].value_and_gradient(student.detach(), teacher, 1.0, **PARAMS.get(name, {}))
        torch.testing.assert_close(value, loss.detach())
        torch.testing.assert_close(closed_grad, grad)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_teacher_row_that_is_not_finite_gives_nan_never_a_finite_loss(name, bad):
    """A float16 teacher whose activations overflowed gives NaN or inf logits: its rows' loss must show it (the float64
    formula's NaN, or inf), never count as 0 (the forward KLs' did, which hid the rows from the evaluation's KL)."""
    student, teacher = _logits(3, 20, seed=35), _logits(3, 20, seed=36)
    teacher[1, 7] = bad
    assert not torch.isfinite(_reference(name, student, teacher, 1.0, PARAMS.get(name, {}))[1])
    assert not torch.isfinite(_loss(name, student, teacher)[1])
    assert torch.isfinite(_loss(name, student, teacher)[[0, 2]]).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_inputs_give_fp32_losses_close_to_fp32(name):
    student, teacher = _logits(6, 64, seed=31), _logits(6, 64, seed=32)
    student, teacher = student.bfloat16().float(), teacher.bfloat16().float()  # same values in both dtypes
    loss_bf16 = _loss(name, student.bfloat16(), teacher.bfloat16())
    assert loss_bf16.dtype == torch.float32
    torch.testing.assert_close(loss_bf16, _loss(name, student, teacher))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_accumulation_invariance(name):
    """Sum over real tokens / global count: one batch of 4 == 2 accumulated batches of 2 (value and gradient)."""
    batch, seq, vocab = 4, 7, 30
    teacher = _logits(batch, seq, vocab, seed=33)
    student = _logits(batch, seq, vocab, seed=34).requires_grad_()
    lengths = torch.tensor([7, 2, 5, 1])
    mask = torch.arange(seq) < lengths[:, None]  # [B, S], uneven padding
    total_tokens = mask.sum()

    def summed(rows):
        return _loss(name, student[rows][mask[rows]], teacher[rows][mask[rows]]).sum()

    full = summed(slice(0, 4)) / total_tokens
    (full_grad,) = torch.autograd.grad(full, student)
    accumulated = summed(slice(0, 2)) / total_tokens + summed(slice(2, 4)) / total_tokens
    (accumulated_grad,) = torch.autograd.grad(accumulated, student)
    torch.testing.assert_close(accumulated, full)
    torch.testing.assert_close(accumulated_grad, full_grad)

    mean_of_means = (summed(slice(0, 2)) / mask[:2].sum() + summed(slice(2, 4)) / mask[2:].sum()) / 2
    assert not torch.allclose(mean_of_means, full)  # the per-micro-batch mean would not be invariant


def test_teacher_confidence_is_the_mean_max_probability_over_real_tokens():
    batches = [_logits(2, 3, 10, seed=35), _logits(1, 4, 10, seed=36)]
    masks = [torch.tensor([[True, True, False], [True, False, False]]), torch.tensor([[True, True, True, False]])]
    max_probs = torch.cat([torch.softmax(b.double(), -1).amax(-1)[m] for b, m in zip(batches, masks)])
    assert teacher_confidence(batches, masks) == pytest.approx(float(max_probs.mean()), rel=1e-6)
    all_probs = torch.cat([torch.softmax(b.double(), -1).amax(-1).flatten() for b in batches])
    assert teacher_confidence(iter(batches)) == pytest.approx(float(all_probs.mean()), rel=1e-6)
    with pytest.raises(DistilyConfigError, match="no tokens"):
        teacher_confidence(batches[:1], [torch.zeros(2, 3, dtype=torch.bool)])


def test_check_loss_checks_names_and_parameters(monkeypatch):
    assert loss_params("jsd") == {"beta": 0.5}
    assert loss_params("forward_kl") == {}
    with pytest.raises(DistilyConfigError, match="logits_loss='kl' is not a registered loss"):
        check_loss("kl", {})
    with pytest.raises(DistilyConfigError, match="do not fit loss 'jsd': unknown parameters \\['alpha'\\]"):
        check_loss("jsd", {"alpha": 0.1})
    with pytest.raises(DistilyConfigError, match="needs parameters \\['beta'\\]"):
        check_loss("cakld", {})
    check_loss("cakld", {"beta": 0.5})
    with pytest.raises(DistilyConfigError, match="beta=1.5"):
        LOSSES["cakld"](_logits(2, 5), _logits(2, 5), beta=1.5)
    with pytest.raises(DistilyConfigError, match="beta=0.0"):
        LOSSES["jsd"](_logits(2, 5), _logits(2, 5), beta=0.0)
    for name, params in (("cakld", {"beta": 1.5}), ("jsd", {"beta": 0.0}), ("skew_forward_kl", {"alpha": 1.0}),
                         ("skew_reverse_kl", {"alpha": -0.1})):  # the closed forms check them as the losses do
        with pytest.raises(DistilyConfigError, match=f"{next(iter(params))}={next(iter(params.values()))}"):
            LOSSES[name].value_and_gradient(_logits(2, 5), _logits(2, 5), **params)

    def l1(student_logits, teacher_logits, temperature=1.0, *, weight=1.0):
        return weight * (student_logits - teacher_logits).abs().float().sum(-1)

    monkeypatch.setitem(LOSSES, "l1", l1)
    assert loss_params("l1") == {"weight": 1.0}
    check_loss("l1", {"weight": 2.0})
    torch.testing.assert_close(LOSSES["l1"](torch.ones(1, 3), torch.zeros(1, 3), weight=2.0), torch.tensor([6.0]))


@pytest.mark.parametrize("name", ["skew_forward_kl", "skew_reverse_kl"])
def test_skew_kl_at_alpha_zero_is_the_kl_where_one_distribution_dwarfs_the_other(name):
    """alpha = 0 takes away the 1 / alpha bound on p_t / m (p_s / m): with the two 40 nats apart per unit of
    logit, the ratio passes float32's range, and the closed form must still give the KL's value and gradient."""
    student, teacher = _logits(6, 11, scale=40.0, seed=2), _logits(6, 11, scale=40.0, seed=1)
    kl = LOSSES["forward_kl" if name == "skew_forward_kl" else "reverse_kl"]
    value, grad = LOSSES[name].value_and_gradient(student, teacher, 2.0, alpha=0.0)
    expected_value, expected_grad = kl.value_and_gradient(student, teacher, 2.0)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", sorted(set(DIVERGENCES) - LOGIT_SPACE))
def test_a_column_neither_distribution_reaches_changes_nothing_at_any_temperature(name):
    """Cross-tokenizer losses run the divergences under autograd over columns some of which neither side reaches
    (the student's logit there -1e30, the teacher's log-probability -inf): with T^2 > 1 those 0 * log 0 terms
    must still give 0, in the value and the gradient, as if the column were not there."""
    student, teacher = _logits(6, 11, seed=2), _logits(6, 11, seed=1)
    padded_student = torch.cat([student, torch.full((6, 1), -1e30)], -1).requires_grad_()
    padded_teacher = torch.cat([teacher, torch.full((6, 1), -math.inf)], -1)
    narrow = student.clone().requires_grad_()
    for temperature in (1.0, 2.0):
        value = _loss(name, padded_student, padded_teacher, temperature)
        expected = _loss(name, narrow, teacher, temperature)
        (grad,) = torch.autograd.grad(value.sum(), padded_student)
        (expected_grad,) = torch.autograd.grad(expected.sum(), narrow)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(grad, torch.cat([expected_grad, torch.zeros(6, 1)], -1))
