"""The chunked logit loss equals the plain one (value and gradients) for every loss, shape and dtype."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from distily.objectives import chunked
from distily.objectives.chunked import chunked_logit_loss_sum
from distily.objectives.losses import LOSSES

PARAMS = {"cakld": {"beta": 0.3}, "jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2},
          "skew_reverse_kl": {"alpha": 0.2}}

# token shape, hidden size (None: unfused, the student gives logits), student / teacher vocab,
# vocab_size, bias, mask, (LM-head chunk, loss slice) in tokens
CASES = {
    "fused-one-token": dict(tokens=(1,), hidden=8, vocab=(17, 17), vocab_size=None,
                            bias=False, mask=False, chunk=(1, 1)),
    "fused-bias-mask": dict(tokens=(37,), hidden=16, vocab=(101, 101), vocab_size=None,
                            bias=True, mask=True, chunk=(8, 3)),
    "fused-padded-vocab": dict(tokens=(3, 11), hidden=16, vocab=(104, 101), vocab_size=101,
                               bias=True, mask=True, chunk=(5, 5)),
    "unfused-mask": dict(tokens=(20,), hidden=None, vocab=(64, 64), vocab_size=None,
                         bias=False, mask=True, chunk=(7, 3)),
    "unfused-padded-vocab": dict(tokens=(2, 9), hidden=None, vocab=(64, 70), vocab_size=60,
                                 bias=False, mask=False, chunk=(4, 4)),
}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative, Frobenius norm


def _randn(*shape, scale=1.0, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _inputs(case, dtype):
    tokens, (student_vocab, teacher_vocab) = case["tokens"], case["vocab"]
    width = case["hidden"] or student_vocab
    student = _randn(*tokens, width, scale=1.0 if case["hidden"] else 3.0, seed=1).to(dtype).requires_grad_()
    weight = bias = None
    if case["hidden"]:
        weight = _randn(student_vocab, width, scale=width**-0.5 * 3, seed=2).to(dtype).requires_grad_()
        if case["bias"]:
            bias = _randn(student_vocab, seed=3).to(dtype).requires_grad_()
    teacher = _randn(*tokens, teacher_vocab, scale=3.0, seed=4).to(dtype)
    mask = None
    if case["mask"]:
        mask = _randn(*tokens, seed=5) > -0.5
        mask.view(-1)[0] = True
    return student, weight, bias, teacher, mask


def _plain_sum(loss_fn, student, weight, bias, teacher, mask, vocab_size, temperature, params):
    """The obvious implementation: full logits, truncate, select real rows, loss, sum."""
    logits = F.linear(student, weight, bias) if weight is not None else student  # [..., V_s]
    columns = vocab_size or logits.shape[-1]
    logits, teacher = logits[..., :columns], teacher[..., :columns]
    if mask is not None:
        logits, teacher = logits[mask], teacher[mask]
    return loss_fn(logits.reshape(-1, columns), teacher.reshape(-1, columns), temperature, **params).sum()


def _relative_error(value, reference):
    value, reference = value.detach().double(), reference.detach().double()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case_name", sorted(CASES))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunked_equals_plain(name, case_name, dtype):
    case = CASES[case_name]
    student, weight, bias, teacher, mask = _inputs(case, dtype)
    leaves = [t for t in (student, weight, bias) if t is not None]
    common = dict(mask=mask, vocab_size=case["vocab_size"], temperature=1.5)
    params = PARAMS.get(name, {})

    plain = _plain_sum(LOSSES[name], student, weight, bias, teacher, mask, case["vocab_size"], 1.5, params)
    plain_grads = torch.autograd.grad(plain, leaves)
    chunked = chunked_logit_loss_sum(LOSSES[name], student, teacher, lm_head_weight=weight, lm_head_bias=bias,
                                     chunk_size=case["chunk"][0], loss_chunk_size=case["chunk"][1], **common, **params)
    chunked_grads = torch.autograd.grad(chunked, leaves)

    assert chunked.dtype == torch.float32 and chunked.shape == ()
    assert _relative_error(chunked, plain) <= TOLERANCE[dtype]
    for grad, plain_grad in zip(chunked_grads, plain_grads):
        assert grad.dtype == plain_grad.dtype and grad.shape == plain_grad.shape
        assert _relative_error(grad, plain_grad) <= TOLERANCE[dtype]


def test_padded_rows_are_never_read():
    case = CASES["fused-bias-mask"]
    student, weight, bias, teacher, mask = _inputs(case, torch.float32)
    poisoned_student = student.detach().clone()
    poisoned_student[~mask] = math.nan
    poisoned_student.requires_grad_()
    poisoned_teacher = teacher.clone()
    poisoned_teacher[~mask] = math.inf

    clean = chunked_logit_loss_sum(LOSSES["forward_kl"], student, teacher, lm_head_weight=weight, mask=mask,
                                   chunk_size=4)
    poisoned = chunked_logit_loss_sum(LOSSES["forward_kl"], poisoned_student, poisoned_teacher, lm_head_weight=weight,
                                      mask=mask, chunk_size=4)
    (grad,) = torch.autograd.grad(poisoned, poisoned_student)
    torch.testing.assert_close(poisoned, clean)
    assert (grad[~mask] == 0).all() and torch.isfinite(grad).all()


class _MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every matmul dispatched under it."""

    MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default,
               torch.ops.aten.addmm.out, torch.ops.aten.addmm_.default}

    def __init__(self):
        super().__init__()
        self.dtypes, self.outs = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.MATMULS:
            self.dtypes.append({arg.dtype for arg in args if isinstance(arg, torch.Tensor) and arg.dim() == 2})
            self.outs += func in (torch.ops.aten.mm.out, torch.ops.aten.addmm.out)
        return func(*args, **(kwargs or {}))


def test_fused_lm_head_runs_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast the fused LM head's matmuls run in bf16, as the student's own LM head would; the loss
    stays fp32, the gradients keep their leaves' dtype and agree with autocast's own computation (the LM head's
    gradient added to the fp32 one in blocks of 3 rows)."""
    case = CASES["fused-bias-mask"]
    student, weight, bias, teacher, mask = _inputs(case, torch.float32)
    monkeypatch.setattr("distily.objectives.chunked.ACCUMULATE_ELEMENTS", 3 * weight.shape[1])
    leaves = (student, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _plain_sum(LOSSES["forward_kl"], student, weight, bias, teacher, mask, None, 1.0, {})
        with _MatmulDtypes() as recorded:
            chunked = chunked_logit_loss_sum(LOSSES["forward_kl"], student, teacher, lm_head_weight=weight,
                                             lm_head_bias=bias, mask=mask, chunk_size=8, loss_chunk_size=3)
    assert recorded.dtypes and all(dtypes == {torch.bfloat16} for dtypes in recorded.dtypes)
    assert chunked.dtype == torch.float32
    assert _relative_error(chunked, plain) <= TOLERANCE[torch.bfloat16]
    for grad, plain_grad in zip(torch.autograd.grad(chunked, leaves), torch.autograd.grad(plain, leaves)):
        assert grad.dtype == torch.float32
        assert _relative_error(grad, plain_grad) <= TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("name", ["mse", "cosine"])
def test_float16_gradients_are_as_close_to_float64_as_autograd_s_under_a_loss_scale(name, fused):
    """Under float16 autocast with fp16 training's loss scale (GradScaler's 2^16), the student's gradients are as close
    to float64 (on the same float16-rounded inputs) as autograd's through the plain loss. The chunked loss stores its
    gradient in float16 before the scale reaches it: mse's and cosine's, of order 1 / V, lost their digits there."""
    vocab, tokens, width, loss_scale = 151936, 16, 32, 2.0**16
    hidden, weight = _randn(tokens, width, seed=1), _randn(vocab, width, scale=width**-0.5 * 8, seed=2)
    teacher = (hidden @ weight.T + _randn(tokens, vocab, scale=0.5, seed=3)).half()

    def gradients(loss):  # of the mean over tokens of loss(hidden, weight), under float16 autocast (float64 stays)
        leaves = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            value = loss(*leaves)
        (value * loss_scale / tokens).backward()
        return [leaf.grad.double() / loss_scale for leaf in leaves]

    def reference(hidden, weight):  # float64
        logits, target = F.linear(hidden.half().double(), weight.half().double()), teacher.double()
        if name == "mse":
            return (logits - target).square().mean(-1).sum()
        return (1 - F.cosine_similarity(logits, target, dim=-1)).sum()

    def plain(hidden, weight):
        return LOSSES[name](F.linear(hidden, weight), teacher).sum()

    def distily(hidden, weight):
        if fused:
            return chunked_logit_loss_sum(LOSSES[name], hidden, teacher, lm_head_weight=weight)
        return chunked_logit_loss_sum(LOSSES[name], F.linear(hidden, weight), teacher)

    for grad, plain_grad, reference_grad in zip(gradients(distily), gradients(plain), gradients(reference)):
        assert _relative_error(grad, reference_grad) <= 1.1 * _relative_error(plain_grad, reference_grad)


class _Casts(TorchDispatchMode):
    """Counts the dtype casts (``_to_copy``) dispatched under it, by the shape of the tensor cast."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_a_fused_teacher_head_is_cast_once_under_autocast():
    """The teacher's LM head, read slice by slice, is cast to bf16 once per loss (autocast alone would cast a
    weight that takes no gradient at every slice), and the loss is the one through its full logits."""
    student = _randn(40, 16, seed=1).requires_grad_()  # [N, H]
    weight = _randn(101, 16, scale=0.75, seed=2).requires_grad_()  # [V, H]
    teacher_states, teacher_weight = _randn(40, 12, seed=3), _randn(101, 12, scale=0.75, seed=4)  # [N, H_t], [V, H_t]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _Casts() as casts:
            fused = chunked_logit_loss_sum(LOSSES["forward_kl"], student, teacher_states, lm_head_weight=weight,
                                           teacher_lm_head_weight=teacher_weight, chunk_size=8, loss_chunk_size=3)
        full = chunked_logit_loss_sum(LOSSES["forward_kl"], student, F.linear(teacher_states, teacher_weight),
                                      lm_head_weight=weight, chunk_size=8, loss_chunk_size=3)
    assert casts.shapes.count(tuple(teacher_weight.shape)) == 1  # 14 slices of 3 tokens
    torch.testing.assert_close(fused, full)


@pytest.mark.parametrize("autocast, chunks", [(False, 5), (True, 3)])
def test_the_default_chunk_is_a_buffer_size_so_half_precision_chunks_hold_twice_the_tokens(autocast, chunks,
                                                                                            monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 8 * 101)  # 8 tokens of fp32 logits at V = 101
    student, weight = _randn(40, 16, seed=1).requires_grad_(), _randn(101, 16, seed=2).requires_grad_()
    teacher = _randn(40, 101, scale=3.0, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), _MatmulDtypes() as recorded:
        chunked.chunked_logit_loss_sum(LOSSES["forward_kl"], student, teacher, lm_head_weight=weight)
    assert recorded.outs == chunks  # one logits matmul into the buffer per chunk: 40 tokens in 8s or in 16s


def test_gradient_accumulation_invariance():
    """Sum / global real-token count: one batch of 4 sequences == 2 accumulated batches of 2."""
    hidden, vocab = 16, 50
    student = _randn(4, 9, hidden, seed=6).requires_grad_()  # [B, S, H]
    weight = _randn(vocab, hidden, scale=0.5, seed=7).requires_grad_()  # [V, H]
    teacher = _randn(4, 9, vocab, scale=3.0, seed=8)  # [B, S, V]
    mask = torch.arange(9) < torch.tensor([9, 3, 6, 1])[:, None]  # [B, S]
    total_tokens = mask.sum()

    def loss(batch):
        return chunked_logit_loss_sum(LOSSES["reverse_kl"], student[batch], teacher[batch], lm_head_weight=weight,
                                      mask=mask[batch], chunk_size=5) / total_tokens

    full = loss(slice(0, 4))
    full.backward()
    full_grads = student.grad.clone(), weight.grad.clone()
    student.grad = weight.grad = None
    accumulated = 0.0
    for batch in (slice(0, 2), slice(2, 4)):
        micro = loss(batch)
        micro.backward()
        accumulated += micro.detach()
    torch.testing.assert_close(accumulated, full.detach())
    torch.testing.assert_close(student.grad, full_grads[0])
    torch.testing.assert_close(weight.grad, full_grads[1])


def test_frozen_inputs_and_no_grad():
    case = CASES["fused-bias-mask"]
    student, weight, bias, teacher, mask = _inputs(case, torch.float32)
    frozen_weight = weight.detach()
    loss = chunked_logit_loss_sum(LOSSES["jsd"], student, teacher, lm_head_weight=frozen_weight, lm_head_bias=bias,
                                  mask=mask, chunk_size=6)
    plain = _plain_sum(LOSSES["jsd"], student, frozen_weight, bias, teacher, mask, None, 1.0, {})
    grads, plain_grads = torch.autograd.grad(loss, [student, bias]), torch.autograd.grad(plain, [student, bias])
    for grad, plain_grad in zip(grads, plain_grads):
        torch.testing.assert_close(grad, plain_grad)
    with torch.no_grad():
        value = chunked_logit_loss_sum(LOSSES["jsd"], student, teacher, lm_head_weight=weight, lm_head_bias=bias,
                                       mask=mask)
    assert not value.requires_grad
    torch.testing.assert_close(value, plain.detach())


def test_default_chunk_size_and_scaled_backward():
    student, weight, _, teacher, _ = _inputs(CASES["fused-bias-mask"], torch.float32)
    (3.0 * chunked_logit_loss_sum(LOSSES["tvd"], student, teacher, lm_head_weight=weight)).backward()
    plain = _plain_sum(LOSSES["tvd"], student, weight, None, teacher, None, None, 1.0, {})
    plain_grads = torch.autograd.grad(3.0 * plain, [student, weight])
    torch.testing.assert_close(student.grad, plain_grads[0])
    torch.testing.assert_close(weight.grad, plain_grads[1])


def test_inconsistent_inputs_are_reported():
    student, weight, bias, teacher, _ = _inputs(CASES["fused-padded-vocab"], torch.float32)  # V_s 104, V_t 101
    loss_fn = LOSSES["forward_kl"]
    with pytest.raises(ValueError, match="student vocabulary 104 != teacher vocabulary 101"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_weight=weight)
    with pytest.raises(ValueError, match="vocab_size=102"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_weight=weight, vocab_size=102)
    with pytest.raises(ValueError, match="mask has shape"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_weight=weight, vocab_size=101,
                               mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="lm_head_bias was given without"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_bias=bias)
    with pytest.raises(ValueError, match="lm_head_weight has shape"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_weight=weight.T, vocab_size=16)
    with pytest.raises(ValueError, match="chunk_size=0"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_weight=weight, vocab_size=101, chunk_size=0)
    with pytest.raises(ValueError, match="teacher_lm_head_weight has shape \\(101, 5\\); expected \\[vocab, 101\\]"):
        chunked_logit_loss_sum(loss_fn, student, teacher, lm_head_weight=weight,
                               teacher_lm_head_weight=torch.ones(101, 5))
    with pytest.raises(ValueError, match="teacher_lm_head_bias was given without"):
        chunked_logit_loss_sum(loss_fn, student, teacher, teacher_lm_head_bias=bias)


@pytest.mark.parametrize("name", ["forward_kl", "jsd"])
def test_fused_teacher_lm_head_gives_the_loss_and_gradients_of_its_logits(name):
    torch.manual_seed(0)
    tokens, hidden, teacher_hidden, vocab = (3, 13), 16, 24, 101
    student = torch.randn(*tokens, hidden, requires_grad=True)
    weight = torch.randn(vocab + 3, hidden, requires_grad=True)  # padded by 3 rows, like the teacher
    teacher_states = torch.randn(*tokens, teacher_hidden)
    teacher_weight, teacher_bias = torch.randn(vocab + 5, teacher_hidden), torch.randn(vocab + 5)
    mask = torch.rand(tokens) > 0.3
    common = dict(lm_head_weight=weight, mask=mask, vocab_size=vocab, chunk_size=8, loss_chunk_size=3,
                  **PARAMS.get(name, {}))

    logits = F.linear(teacher_states, teacher_weight, teacher_bias)  # [3, 13, 106]
    expected = chunked_logit_loss_sum(LOSSES[name], student, logits, **common)
    expected_grads = torch.autograd.grad(expected, (student, weight))
    fused = chunked_logit_loss_sum(LOSSES[name], student, teacher_states, teacher_lm_head_weight=teacher_weight,
                                   teacher_lm_head_bias=teacher_bias, **common)  # fmt: skip
    torch.testing.assert_close(fused, expected)
    for actual, wanted in zip(torch.autograd.grad(fused, (student, weight)), expected_grads):
        torch.testing.assert_close(actual, wanted)


def test_fp32_hidden_states_of_a_bf16_head_run_through_it_in_bf16():
    """The trainer hands the loss a bf16 student's final hidden states in fp32 (``convert_to_fp32``); its fused head
    runs in bf16 as the student's own would, for the teacher's too: the loss and gradients are those of the head's
    own bf16 logits (a dtype mismatch in the matmul before)."""
    student = _randn(3, 7, 16, seed=1).bfloat16().float().requires_grad_()  # [B, S, H], bf16 values in fp32
    weight, bias = (_randn(101, 16, seed=2) * 0.5).bfloat16().requires_grad_(), _randn(101, seed=3).bfloat16()
    teacher_states, teacher_weight = _randn(3, 7, 12, seed=4).bfloat16().float(), _randn(101, 12, seed=5).bfloat16()
    mask = _randn(3, 7, seed=6) > -0.5
    bias.requires_grad_()
    fused = chunked_logit_loss_sum(LOSSES["forward_kl"], student, teacher_states, lm_head_weight=weight,
                                   lm_head_bias=bias, teacher_lm_head_weight=teacher_weight, mask=mask, chunk_size=4)
    teacher = F.linear(teacher_states.bfloat16(), teacher_weight)  # [B, S, V] bf16
    plain = _plain_sum(LOSSES["forward_kl"], student.bfloat16(), weight, bias, teacher, mask, None, 1.0, {})
    for grad, plain_grad in zip(torch.autograd.grad(fused, (student, weight, bias)),
                                torch.autograd.grad(plain, (student, weight, bias))):
        assert grad.dtype == plain_grad.dtype
        assert _relative_error(grad, plain_grad) <= TOLERANCE[torch.bfloat16]
    assert _relative_error(fused, plain) <= 1e-5
