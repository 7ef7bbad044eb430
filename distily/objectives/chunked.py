"""Memory-bounded logit loss: any loss of ``LOSSES``, computed in token chunks.

API::

    chunked_logit_loss_sum(
        loss_fn,                   # a LOSSES entry: (student_logits, teacher_logits, temperature, **params) -> [n]
        student,                   # [..., H] hidden states if lm_head_weight is given, else [..., V_s] logits
        teacher_logits,            # [..., V_t], treated as a constant (no gradient flows into it)
        *,
        lm_head_weight=None,       # [V_s, H]: fuse the student's LM head, its logits are never materialised
        lm_head_bias=None,         # [V_s] or None
        mask=None,                 # [...] bool, True for tokens that count; padding rows are skipped
        vocab_size=None,           # count only the first vocab_size columns (vocabularies that differ
                                   # by padding rows only); None requires V_s == V_t
        temperature=1.0,
        chunk_size=None,           # tokens per chunk; None picks about CHUNK_ELEMENTS / vocab_size
        **loss_params,             # e.g. beta=0.5 for jsd
    ) -> torch.Tensor              # scalar float32: the SUM of the per-token loss over unmasked tokens

The caller divides by the number of real tokens in the whole (accumulated) batch, which keeps the
value the same for one batch of B and k accumulated batches of B/k. Differentiable with respect to
``student``, ``lm_head_weight`` and ``lm_head_bias``.

How: a ``torch.autograd.Function`` whose forward walks the tokens in chunks; per chunk it makes the
student logits ``[chunk, V]``, runs ``loss_fn`` under autograd to get the gradient with respect to
those logits, and folds that into the gradients of the inputs (through the LM head when fused). The
backward only scales the stored gradients by the incoming scalar. Peak memory beyond the inputs is
therefore a few ``[chunk, V]`` fp32 tensors plus the input-sized gradients, independent of the
number of tokens (the unfused path must return a ``[N, V_s]`` gradient, so it saves the loss's
intermediates but not that). Gradients of bf16 inputs are accumulated in fp32 for the LM head.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from distily.errors import DistilyConfigError
from distily.objectives.losses import LossFn

CHUNK_ELEMENTS = 2**23
"""Default chunk budget in logits: 8M elements, 32 MiB per fp32 ``[chunk, V]`` tensor (166 tokens at
V = 50257). Larger chunks cost memory; much smaller ones cost time, as every chunk reads and writes
the whole ``[V, H]`` fp32 LM-head gradient (benchmarks/loss_memory.py measures the trade-off)."""


def _add_matmul(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """accumulator += left @ right, in place, with the accumulator's (fp32) precision kept."""
    if left.dtype == accumulator.dtype:
        accumulator.addmm_(left, right)
    else:
        accumulator.add_(left @ right)


class _ChunkedLogitLoss(torch.autograd.Function):
    """Summed logit loss with its gradient computed in the forward pass, chunk by chunk.

    Inputs are 2-D: ``student`` [N, H or V_s], ``teacher_logits`` [N, V_t]; ``row_chunks`` is a list of
    row selectors (slices or index tensors) covering the rows that count.
    """

    @staticmethod
    def forward(
        ctx,
        student: torch.Tensor,
        lm_head_weight: Optional[torch.Tensor],
        lm_head_bias: Optional[torch.Tensor],
        teacher_logits: torch.Tensor,
        row_chunks: list,
        vocab_size: int,
        loss_fn: LossFn,
        temperature: float,
        loss_params: dict,
        grad_enabled: bool,
    ) -> torch.Tensor:
        fused = lm_head_weight is not None
        # needs_input_grad ignores no_grad mode, so the caller's grad mode comes in as grad_enabled
        needs_student, needs_weight, needs_bias = (grad_enabled and needs for needs in ctx.needs_input_grad[:3])
        any_grad = needs_student or needs_weight or needs_bias
        weight = lm_head_weight[:vocab_size] if fused else None  # [V, H]
        bias = lm_head_bias[:vocab_size] if lm_head_bias is not None else None  # [V]

        grad_student = torch.zeros_like(student) if needs_student else None  # [N, H or V_s]
        grad_weight = torch.zeros(lm_head_weight.shape, dtype=torch.float32, device=student.device) if needs_weight else None
        grad_bias = torch.zeros(lm_head_bias.shape, dtype=torch.float32, device=student.device) if needs_bias else None
        total = torch.zeros((), dtype=torch.float32, device=student.device)

        for rows in row_chunks:
            student_rows = student[rows]  # [C, H or V_s]
            student_logits = F.linear(student_rows, weight, bias) if fused else student_rows[:, :vocab_size]  # [C, V]
            teacher_chunk = teacher_logits[rows, :vocab_size]  # [C, V]
            if not any_grad:
                total += loss_fn(student_logits, teacher_chunk, temperature, **loss_params).sum()
                continue
            student_logits = student_logits.detach().requires_grad_()
            with torch.enable_grad():
                chunk_loss = loss_fn(student_logits, teacher_chunk, temperature, **loss_params).sum()
            (grad_logits,) = torch.autograd.grad(chunk_loss, student_logits)  # [C, V]
            total += chunk_loss.detach()
            if not fused:
                grad_student[rows, :vocab_size] = grad_logits
                continue
            if needs_student:
                grad_student[rows] = grad_logits @ weight  # [C, H]
            if needs_weight:
                _add_matmul(grad_weight[:vocab_size], grad_logits.T, student_rows)  # [V, H]
            if needs_bias:
                grad_bias[:vocab_size] += grad_logits.sum(0, dtype=torch.float32)  # [V]

        if needs_weight:
            grad_weight = grad_weight.to(lm_head_weight.dtype)
        if needs_bias:
            grad_bias = grad_bias.to(lm_head_bias.dtype)
        ctx.save_for_backward(grad_student, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        scaled = [None if grad is None else grad * grad_total.to(grad.dtype) for grad in ctx.saved_tensors]
        return (*scaled, None, None, None, None, None, None, None)


def _row_chunks(mask: Optional[torch.Tensor], num_rows: int, chunk_size: int) -> list:
    """Row selectors of at most chunk_size rows each: slices without a mask, index tensors with one."""
    if mask is None:
        return [slice(start, min(start + chunk_size, num_rows)) for start in range(0, num_rows, chunk_size)]
    rows = mask.reshape(-1).to(torch.bool).nonzero().squeeze(-1)  # [n_real]
    return list(rows.split(chunk_size))


def _check_shapes(student, teacher_logits, lm_head_weight, mask, vocab_size) -> int:
    """The number of vocabulary columns that count; raises on inconsistent shapes."""
    student_vocab = lm_head_weight.shape[0] if lm_head_weight is not None else student.shape[-1]
    teacher_vocab = teacher_logits.shape[-1]
    if lm_head_weight is not None and lm_head_weight.shape[1] != student.shape[-1]:
        raise DistilyConfigError(
            f"lm_head_weight has shape {tuple(lm_head_weight.shape)}; expected [vocab, {student.shape[-1]}] "
            "to match the student hidden size"
        )
    if student.shape[:-1] != teacher_logits.shape[:-1]:
        raise DistilyConfigError(
            f"student has token shape {tuple(student.shape[:-1])} but teacher_logits has "
            f"{tuple(teacher_logits.shape[:-1])}; expected the same tokens"
        )
    if mask is not None and mask.shape != student.shape[:-1]:
        raise DistilyConfigError(f"mask has shape {tuple(mask.shape)}; expected {tuple(student.shape[:-1])}")
    if vocab_size is None:
        if student_vocab != teacher_vocab:
            raise DistilyConfigError(
                f"student vocabulary {student_vocab} != teacher vocabulary {teacher_vocab}; pass vocab_size "
                "if they differ only by padding rows"
            )
        return student_vocab
    if not 0 < vocab_size <= min(student_vocab, teacher_vocab):
        raise DistilyConfigError(
            f"vocab_size={vocab_size}; expected 1..{min(student_vocab, teacher_vocab)} "
            f"(student {student_vocab}, teacher {teacher_vocab})"
        )
    return vocab_size


def chunked_logit_loss_sum(
    loss_fn: LossFn,
    student: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    lm_head_weight: Optional[torch.Tensor] = None,
    lm_head_bias: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
    chunk_size: Optional[int] = None,
    **loss_params,
) -> torch.Tensor:
    """Sum over unmasked tokens of ``loss_fn(student_logits, teacher_logits, temperature, **loss_params)``.

    See the module docstring for the arguments. Returns a float32 scalar; divide it by the real-token
    count of the whole (accumulated) batch for a mean.
    """
    if lm_head_bias is not None and lm_head_weight is None:
        raise DistilyConfigError("lm_head_bias was given without lm_head_weight; expected both or only the weight")
    columns = _check_shapes(student, teacher_logits, lm_head_weight, mask, vocab_size)
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // columns)
    if chunk_size < 1:
        raise DistilyConfigError(f"chunk_size={chunk_size}; expected a positive number of tokens")
    student_2d = student.reshape(-1, student.shape[-1])  # [N, H or V_s]
    teacher_2d = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])  # [N, V_t]
    row_chunks = _row_chunks(mask, student_2d.shape[0], chunk_size)
    return _ChunkedLogitLoss.apply(
        student_2d, lm_head_weight, lm_head_bias, teacher_2d, row_chunks, columns, loss_fn, temperature, loss_params,
        torch.is_grad_enabled(),
    )
