"""Projectors map [..., student_width] to [..., teacher_width]; norms return both sides on a common scale."""

import pytest
import torch
from torch import nn

from distily.errors import DistilyConfigError
from distily.objectives.norms import NORMS, build_norm
from distily.objectives.projectors import PROJECTORS, build_projector

WIDTHS = [(16, 32), (32, 16), (24, 24), (8, 96)]  # (student, teacher)
LEADING_SHAPES = [(5,), (2, 7)]  # [tokens] or [batch, seq]


@pytest.mark.parametrize("student_width, teacher_width", WIDTHS)
@pytest.mark.parametrize("name", ["linear", "orthogonal", "mlp"])
@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_projector_shapes_and_gradients(name, student_width, teacher_width, leading):
    torch.manual_seed(0)
    projector = build_projector("hidden_states_projector", name, student_width, teacher_width)
    student = torch.randn(*leading, student_width, requires_grad=True)
    projected = projector(student)
    assert projected.shape == (*leading, teacher_width)
    projected.square().sum().backward()
    assert student.grad.shape == student.shape
    assert all(p.grad is not None for p in projector.parameters())


def test_identity_keeps_equal_widths_and_refuses_others():
    student = torch.randn(3, 16)
    assert torch.equal(build_projector("p", "identity", 16, 16)(student), student)
    with pytest.raises(DistilyConfigError, match="p='identity': the identity projector needs equal widths"):
        build_projector("p", "identity", 16, 32)


def test_unknown_projector_names_the_choices():
    with pytest.raises(DistilyConfigError, match="hidden_states_projector='conv' is not a registered projector"):
        build_projector("hidden_states_projector", "conv", 16, 32)


@pytest.mark.parametrize(("projector", "width"), [
    (lambda student_width, teacher_width: nn.Linear(student_width, student_width), "16"),
    (lambda student_width, teacher_width: nn.Linear(teacher_width, teacher_width), "nothing (mat1 and mat2 shapes"),
])
def test_a_registered_projector_of_other_widths_is_refused_as_it_is_built(monkeypatch, projector, width):
    """It used to be built, and the first step ended in a RuntimeError of the loss (tensor sizes 16 and 32)."""
    monkeypatch.setitem(PROJECTORS, "mine", projector)
    with pytest.raises(DistilyConfigError) as err:
        build_projector("hidden_states_projector", "mine", 16, 32)
    message = str(err.value)
    assert message.startswith(f"hidden_states_projector='mine' maps a feature of the student's width 16 to {width}")
    assert message.endswith("expected the teacher's width 32") and "\n" not in message


@pytest.mark.parametrize("student_width, teacher_width", [(16, 32), (32, 16), (24, 24)])
def test_orthogonal_projector_is_semi_orthogonal_and_stays_so_after_a_step(student_width, teacher_width):
    torch.manual_seed(0)
    projector = build_projector("p", "orthogonal", student_width, teacher_width)
    optimizer = torch.optim.SGD(projector.parameters(), lr=0.5)
    for _ in range(2):
        weight = projector.weight  # [teacher_width, student_width]
        gram = weight.T @ weight if student_width <= teacher_width else weight @ weight.T
        assert torch.allclose(gram, torch.eye(min(student_width, teacher_width)), atol=1e-4)
        projector(torch.randn(4, student_width)).sum().backward()
        optimizer.step()
    if student_width <= teacher_width:  # an isometry: norms kept
        student = torch.randn(6, student_width)
        assert torch.allclose(projector(student).norm(dim=-1), student.norm(dim=-1), rtol=1e-5)


def _standardised(x: torch.Tensor) -> bool:
    return torch.allclose(x.mean(-1), torch.zeros(x.shape[0]), atol=1e-5) and torch.allclose(
        x.var(-1, unbiased=False), torch.ones(x.shape[0]), atol=1e-3
    )


def test_norms():
    torch.manual_seed(0)
    student = torch.randn(5, 32, dtype=torch.bfloat16) * 3 + 1  # [tokens, width]
    teacher = torch.randn(5, 32) * 10 - 2  # [tokens, width]
    out = {name: build_norm("hidden_states_norm", name, 32)(student, teacher) for name in NORMS}
    for name, (s, t) in out.items():
        assert s.shape == t.shape == (5, 32) and s.dtype == t.dtype == torch.float32, name
    assert torch.equal(out["none"][0], student.float()) and torch.equal(out["none"][1], teacher)
    assert _standardised(out["layernorm"][0]) and _standardised(out["layernorm"][1])
    assert torch.equal(out["teacher_only"][0], student.float()) and _standardised(out["teacher_only"][1])
    assert _standardised(out["affine"][1])


def test_only_the_affine_norm_learns_and_only_on_the_student_side():
    counts = {name: sum(p.numel() for p in NORMS[name](32).parameters()) for name in NORMS}
    assert counts == {"none": 0, "layernorm": 0, "teacher_only": 0, "affine": 64}
    norm = NORMS["affine"](32)
    teacher = torch.randn(4, 32, requires_grad=True)
    student, normalised_teacher = norm(torch.randn(4, 32), teacher)
    (student.sum() + normalised_teacher.square().sum()).backward()
    assert norm.student_norm.weight.grad is not None and teacher.grad is not None


def test_unknown_norm_names_the_choices():
    with pytest.raises(DistilyConfigError, match="expected one of none, layernorm, teacher_only, affine"):
        build_norm("hidden_states_norm", "batchnorm", 32)
