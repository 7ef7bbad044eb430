"""Logit losses against a recorded teacher: its top-k log-probabilities and the mass of the rest.

A store keeps, per position, the teacher's k largest log-probabilities at the recording temperature T
and the log of the mass of all other tokens, the tail. The losses here compare the two models on the
k + 1 buckets this defines, the k recorded tokens and the tail as one bucket::

    P_t = (p_t(v_1), ..., p_t(v_k), 1 - sum_i p_t(v_i))
    P_s = (p_s(v_1), ..., p_s(v_k), 1 - sum_i p_s(v_i)),   p_s = softmax(student_logits / T)

and any divergence of ``LOSSES`` between P_t and P_s is taken exactly (times T^2, as the dense
losses). The tail is never dropped: renormalising the top k alone would raise every recorded
probability by 1 / (1 - tail) and train the student to put no mass outside the top k. What is lost
is only how the teacher spreads the tail over its tokens; for the forward KL the result is the
coarse-grained KL, a lower bound of the full KL that equals it when k covers the vocabulary (then
there is no tail bucket) and differs by the tail-internal term (see docs/recording.md).

Which losses have a sparse form: ``sparse_losses()``, those of ``LOSSES`` marked
``@between_distributions`` (the divergences). ``mse`` and ``cosine`` compare raw logits, which a store
does not keep. A user-registered loss that is a function of the two distributions gets a sparse form
by the same mark.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from distily.errors import DistilyConfigError
from distily.objectives.chunked import chunked_loss_footprint, chunked_rows_loss_sum
from distily.objectives.component import StepShape, loss_positions
from distily.objectives.losses import LOSSES, tempered_log_softmax
from distily.objectives.objective import LogitsComponent

SPARSE_INTERMEDIATES = 3
"""fp32 ``[tokens, vocab]`` tensors alive at once in ``bucket_logprobs`` and its gradient, for one slice of the
chunked loss, whatever the loss on the k + 1 buckets (measured at the allocator,
``tests/training/test_preflight.py``)."""


def sparse_losses() -> list[str]:
    """The registered losses with a sparse form: those marked ``@between_distributions``."""
    return [name for name, loss in LOSSES.items() if getattr(loss, "between_distributions", False)]


@dataclass
class RecordedTeacherOutput:
    """What a recorded teacher hands the objective in place of a model output.

    ``hidden_states`` follows Hugging Face's layout (index 0: embeddings, i: the output of block i, one
    entry per index up to the teacher's depth) so hidden-state components read it unchanged; layers
    that were not recorded are ``None``.
    """

    topk_logprobs: torch.Tensor  # [batch, seq, k] float16, descending, at ``temperature``
    topk_ids: torch.Tensor  # [batch, seq, k] integer token ids
    tail_logprob: torch.Tensor  # [batch, seq] float32, log of the mass outside the top k (-inf: none)
    temperature: float
    hidden_states: tuple[Optional[torch.Tensor], ...] = ()  # each [batch, seq, width] or None


def bucket_logprobs(
    student_logits: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    tail_logprob: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's log-probabilities over the k + 1 buckets, float32.

    ``student_logits`` [tokens, vocab], ``topk_logprobs`` / ``topk_ids`` [tokens, k], ``tail_logprob``
    [tokens] -> two [tokens, k + 1] tensors ([tokens, k] when k = vocab: no tail bucket). The teacher's
    buckets are normalised, which only removes the float16 rounding of the stored values (~1e-4).
    """
    has_tail = topk_ids.shape[-1] < student_logits.shape[-1]
    student_logprobs = tempered_log_softmax(student_logits, temperature)  # [tokens, vocab]
    ids = topk_ids.long()
    student = student_logprobs.gather(-1, ids)  # [tokens, k]
    if has_tail:
        student_tail = student_logprobs.scatter(-1, ids, -math.inf).logsumexp(-1)  # [tokens]
        student = torch.cat([student, student_tail[:, None]], dim=-1)  # [tokens, k + 1]
    return student, _teacher_buckets(topk_logprobs, tail_logprob, has_tail)


def _teacher_buckets(topk_logprobs: torch.Tensor, tail_logprob: torch.Tensor, has_tail: bool) -> torch.Tensor:
    """The teacher's log-probabilities over the k (+ 1 tail) buckets, normalised, float32 [tokens, k (+ 1)]."""
    teacher = topk_logprobs.float()  # [tokens, k]
    if has_tail:
        teacher = torch.cat([teacher, tail_logprob.float()[:, None]], dim=-1)  # [tokens, k + 1]
    return teacher - teacher.logsumexp(-1, keepdim=True)


def check_sparse_loss(name: str) -> None:
    if name not in sparse_losses():
        raise DistilyConfigError(
            f"logits_loss={name!r} has no sparse form for a recorded teacher (it compares raw logits, which a store "
            f"does not keep); expected one of {', '.join(sorted(sparse_losses()))}"
        )


class RecordedRows:
    """A store's targets for rows of the flattened tokens: ``(topk_logprobs [n, k], topk_ids [n, k],
    tail_logprob [n])`` (``TeacherRows``; the recorded vocabulary is the student's, so the columns change nothing)."""

    def __init__(self, outputs: RecordedTeacherOutput):
        k = outputs.topk_ids.shape[-1]
        self.topk_logprobs = outputs.topk_logprobs.reshape(-1, k)  # [N, k]
        self.topk_ids = outputs.topk_ids.reshape(-1, k)  # [N, k]
        self.tail_logprob = outputs.tail_logprob.reshape(-1)  # [N]

    def __call__(self, rows, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.topk_logprobs[rows], self.topk_ids[rows], self.tail_logprob[rows]


class BucketLoss:
    """A loss of ``LOSSES`` on the k + 1 buckets of student logits [n, vocab] and a store's targets, per token, times
    T^2: the loss ``chunked_rows_loss_sum`` runs against a recorded teacher.

    Its ``value_and_gradient`` runs autograd on the [n, k + 1] buckets only and writes out the chain to the logits
    (``closed_form_gradient``), with z = logits / T, p = softmax(z), q = the student's tail mass and g_b the loss's
    gradient with respect to bucket b's log-probability::

        dL/dz_j = g_i - p_j sum_b g_b            for j = v_i, the i-th recorded token
        dL/dz_j = p_j (g_tail / q - sum_b g_b)   for j outside the top k
    """

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def __call__(self, student_logits, targets, temperature: float, **loss_kwargs) -> torch.Tensor:
        student, teacher = bucket_logprobs(student_logits, *targets, temperature)
        return self.loss_fn(student, teacher, 1.0, **loss_kwargs) * temperature**2

    def value_and_gradient(self, student_logits, targets, temperature: float, **loss_kwargs):
        topk_logprobs, topk_ids, tail_logprob = targets  # [n, k], [n, k], [n]
        ids, has_tail = topk_ids.long(), topk_ids.shape[-1] < student_logits.shape[-1]
        logprobs = tempered_log_softmax(student_logits, temperature)  # [n, vocab]
        top = logprobs.gather(-1, ids)  # [n, k]
        rest = logprobs.scatter_(-1, ids, -math.inf)  # [n, vocab]: log p off the top k, -inf on it
        student = top
        if has_tail:
            # in log space: a confident student's tail mass (under 1e-38, or at T < 1) underflows as a sum
            log_tail = rest.logsumexp(-1, keepdim=True).clamp_min(torch.finfo(rest.dtype).min)  # [n, 1]
            student = torch.cat([top, log_tail], dim=-1)  # [n, k + 1]
        student = student.requires_grad_()
        teacher = _teacher_buckets(topk_logprobs, tail_logprob, has_tail)  # [n, k (+ 1)]
        with torch.enable_grad():  # the chunked loss runs without autograd
            value = self.loss_fn(student, teacher, 1.0, **loss_kwargs)
            value = value * temperature**2  # [n]
            (bucket_grad,) = torch.autograd.grad(value.sum(), student)  # [n, k (+ 1)]
        total = bucket_grad.sum(-1, keepdim=True)  # [n, 1]
        if has_tail:  # p_j (g_tail / q - total) as (p_j / q) (g_tail - q total): p_j / q <= 1 wherever q underflows
            rest.sub_(log_tail).exp_().mul_(bucket_grad[:, -1:] - log_tail.exp() * total)
        else:
            rest.exp_().mul_(-total)
        gradient = rest.scatter_(-1, ids, bucket_grad[:, : ids.shape[-1]] - top.exp() * total)
        return value.detach(), gradient if temperature == 1 else gradient.div_(temperature)


class SparseLogitsComponent(LogitsComponent):
    """``loss(P_s, P_t) * T^2`` over the k + 1 buckets at every loss position (``loss_positions``), ``loss`` a name
    in ``sparse_losses()``; the teacher is a ``RecordedTeacherOutput`` recorded at temperature T. Computed in token
    chunks like ``LogitsComponent``: when the trainer runs the student without its logits, its LM head is applied
    chunk by chunk inside the loss and its ``[tokens, vocab]`` logits are never materialised."""

    def __init__(self, loss: str, temperature: float = 1.0, vocab_size: Optional[int] = None, **loss_kwargs):
        check_sparse_loss(loss)
        super().__init__(loss, temperature, vocab_size, **loss_kwargs)
        self.bucket_loss = BucketLoss(self.loss_fn)

    def forward(self, student_outputs, teacher_outputs: RecordedTeacherOutput, batch):
        if teacher_outputs.temperature != self.temperature:
            raise DistilyConfigError(
                f"logits_temperature={self.temperature} differs from the store's recording temperature "
                f"{teacher_outputs.temperature}; expected {teacher_outputs.temperature} or a store recorded at "
                f"{self.temperature}"
            )
        mask = loss_positions(batch)  # [batch, seq]
        student, head = self.student_side(student_outputs, mask)
        columns = self.vocab_size or (head["lm_head_weight"].shape[0] if head else student.shape[-1])
        return chunked_rows_loss_sum(self.bucket_loss, student, RecordedRows(teacher_outputs), columns, mask=mask,
                                     temperature=self.temperature, **head, **self.loss_kwargs)

    def memory_footprint(self, step: StepShape) -> int:
        hidden = step.student.width if step.fused_student_head else None
        return chunked_loss_footprint(step.tokens, self.vocab_size or step.student_vocab, hidden,
                                      working_tensors=SPARSE_INTERMEDIATES, compute_bytes=step.compute_bytes,
                                      device_type=step.device_type, teacher_logits=False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparse=True"
