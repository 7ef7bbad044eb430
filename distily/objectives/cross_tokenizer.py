"""Logit losses between a student and a teacher with different vocabularies, at aligned positions.

At a student position ``i`` aligned with teacher position ``j`` (both models have read the same text, see
``distily.data.alignment``), the student predicts its next token over its vocabulary ``V_s`` and the teacher its
next token over ``V_t``. Notation: ``p_s = softmax(z_s / T)``, ``p_t = softmax(z_t / T)`` there, each over its
tokenizer's ids: the rows of an LM head padded past them (to a multiple of 64, say) are no token, and are left out
of every loss below (as in the ULD paper, each distribution is over its own vocabulary).

- ``mapped``: the tokens both vocabularies share (the same bytes, ``distily.data.vocabulary``) form a common
  support; the student's next token ``x`` joins it with the teacher's probability of its text by the chain rule
  over the teacher tokens it spans (teacher forced: ``p_t(x) = prod_k p_t(t_k | t_<k)``, the product of the
  teacher's own next-token probabilities across the chunk, when ``x`` ends where a teacher token ends). Both
  distributions are renormalised on the support and compared by ``logits_loss`` (any loss between
  distributions, forward KL by default; times T^2 as in ``losses.py``).
- ``uld``: Universal Logit Distillation (Boizard et al., 2024, arXiv 2402.12030): both probability vectors sorted
  in decreasing order, the shorter padded with zeros, ``sum_k |sort(p_s)_k - sort(p_t)_k|`` (the closed form of
  their Wasserstein-1 distance with unit costs), times T^2. Needs no shared token.
- ``mapped_uld``: ``mapped`` on the shared support plus ``uld`` on the rest (the tokens no shared token covers, on
  each side, at their full-softmax probabilities), as TRL's GOLD combines them.

With one tokenizer on both sides every token is shared and every position aligned, and ``mapped`` is
``logits_loss`` itself (tests/objectives/test_cross_tokenizer.py checks it to 1e-5).
"""

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from distily.arguments import registered
from distily.data.alignment import ALIGNED, TEACHER_INPUT_IDS, TEACHER_ATTENTION_MASK
from distily.data.vocabulary import VocabularyMap
from distily.errors import DistilyConfigError
from distily.objectives.chunked import CHUNK_ELEMENTS, chunked_logit_loss_sum, chunked_loss_footprint
from distily.objectives.component import Component, StepShape, loss_positions
from distily.objectives.losses import LOSSES, tempered_log_softmax

EXCLUDED_LOGIT = -1e30
"""A student column left out of the support: finite (the losses need finite student logits), and far enough below
any real logit that its probability is 0 in float32 at any temperature above 1e-8."""


class SupportColumns:
    """The shared tokens of a ``VocabularyMap`` as index tensors on one device."""

    def __init__(self, vocabulary: VocabularyMap, device=None):
        self.student_ids = vocabulary.student_ids.to(device)  # [M]
        self.teacher_ids = vocabulary.teacher_ids.to(device)  # [M]
        self.shared_index = vocabulary.shared_index.to(device)  # [V_s]: index among the shared, -1 none
        self.student_unmatched = vocabulary.unmatched(vocabulary.student_ids, vocabulary.student_size).to(device)
        self.teacher_unmatched = vocabulary.unmatched(vocabulary.teacher_ids, vocabulary.teacher_size).to(device)


def support_logits(student_logits, teacher_logits, temperature, columns: SupportColumns, target_ids, target_logprob):
    """(student logits, teacher ``T * log p_t``) on the support: the shared tokens, then the student's next token
    ``x`` with the teacher's chain-rule log-probability ``target_logprob`` (-inf where it has none). A shared
    column holding ``x`` is left out where the extra column carries it. Shapes: [n, V_s], [n, V_t], [n], [n] ->
    [n, M + 1] each; a log_softmax of ``teacher / T`` renormalises it on the support."""
    has_target = torch.isfinite(target_logprob)  # [n]
    slot = columns.shared_index[target_ids]  # [n]
    duplicate = torch.zeros(target_ids.shape[0], columns.student_ids.numel() + 1, dtype=torch.bool,
                            device=target_ids.device)  # [n, M + 1]
    rows = (has_target & (slot >= 0)).nonzero().squeeze(-1)
    duplicate[rows, slot[rows]] = True
    student = torch.cat([student_logits.float()[:, columns.student_ids],
                         student_logits.float().gather(1, target_ids[:, None])], 1)  # [n, M + 1]
    teacher = torch.cat([tempered_log_softmax(teacher_logits, temperature)[:, columns.teacher_ids],
                         target_logprob.float()[:, None]], 1)  # [n, M + 1]
    duplicate[:, -1] = ~has_target
    return student.masked_fill(duplicate, EXCLUDED_LOGIT), teacher.masked_fill(duplicate, -torch.inf) * temperature


def sorted_l1(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``sum_k |sort(p_s)_k - sort(p_t)_k|``, both sorted decreasing, the narrower padded with zeros: [n, V_s],
    [n, V_t] -> [n]."""
    width = max(student_probs.shape[-1], teacher_probs.shape[-1])
    student = F.pad(student_probs, (0, width - student_probs.shape[-1])).sort(-1, descending=True).values
    teacher = F.pad(teacher_probs, (0, width - teacher_probs.shape[-1])).sort(-1, descending=True).values
    return (student - teacher).abs().sum(-1)


def uld(student_logits, teacher_logits, temperature=1.0, **_):
    """ULD: ``sorted_l1(p_s, p_t) * T^2`` over the whole vocabularies."""
    probs = [tempered_log_softmax(logits, temperature).exp() for logits in (student_logits, teacher_logits)]
    return sorted_l1(*probs) * temperature**2


def mapped(student_logits, teacher_logits, temperature=1.0, *, divergence, columns, target_ids, target_logprob):
    """``divergence`` between both distributions renormalised on the shared support and the next token."""
    student, teacher = support_logits(student_logits, teacher_logits, temperature, columns, target_ids,
                                      target_logprob)
    return divergence(student, teacher, temperature)


def mapped_uld(student_logits, teacher_logits, temperature=1.0, *, divergence, columns, target_ids, target_logprob):
    """``mapped`` plus ULD between the probabilities of the tokens outside the support, on each side."""
    student_probs = tempered_log_softmax(student_logits, temperature).exp() * columns.student_unmatched
    has_target = torch.isfinite(target_logprob)
    student_probs = student_probs.scatter(1, target_ids[:, None], torch.where(
        has_target[:, None], 0.0, student_probs.gather(1, target_ids[:, None])))  # x is in the support
    teacher_probs = tempered_log_softmax(teacher_logits, temperature).exp() * columns.teacher_unmatched
    rest = sorted_l1(student_probs, teacher_probs) * temperature**2
    return mapped(student_logits, teacher_logits, temperature, divergence=divergence, columns=columns,
                  target_ids=target_ids, target_logprob=target_logprob) + rest


CROSS_TOKENIZER_LOSSES = {"mapped": mapped, "uld": uld, "mapped_uld": mapped_uld}
NEEDS_SHARED_TOKENS = ("mapped", "mapped_uld")


def check_cross_tokenizer_loss(name: str, logits_loss: str) -> None:
    registered(name, CROSS_TOKENIZER_LOSSES, "cross_tokenizer_loss", "cross-tokenizer loss")
    if name in NEEDS_SHARED_TOKENS and not getattr(LOSSES.get(logits_loss), "between_distributions", False):
        raise DistilyConfigError(
            f"logits_loss={logits_loss!r} compares raw logits; cross_tokenizer_loss={name} needs a loss between "
            "distributions (forward_kl, reverse_kl, jsd, ...)"
        )


@torch.no_grad()
def teacher_token_logprobs(teacher, weight, bias, teacher_ids, temperature: float) -> torch.Tensor:
    """``log p_t(ids[m + 1] | ids[:m + 1])`` at temperature T for every teacher position (0 at the last):
    [batch, seq, V_t] logits (or [batch, seq, H_t] hidden states through ``weight``/``bias``) -> [batch, seq],
    computed a chunk of positions at a time."""
    flat = teacher.reshape(-1, teacher.shape[-1])  # [N, V_t or H_t]
    following = F.pad(teacher_ids[:, 1:], (0, 1)).reshape(-1)  # [N]
    columns = flat.shape[-1] if weight is None else weight.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // columns)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start : start + chunk]
        logits = rows if weight is None else F.linear(rows, weight, bias)
        logprobs = tempered_log_softmax(logits, temperature)  # [chunk, V_t]
        out[start : start + chunk] = logprobs.gather(1, following[start : start + chunk, None])[:, 0]
    out = out.reshape(teacher_ids.shape)
    out[:, -1] = 0.0
    return out


def chain_logprobs(token_logprobs: torch.Tensor, aligned: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The teacher's log-probability of each student position's next token, by the chain rule over the teacher
    tokens between the teacher positions aligned with it and with the next position (teacher forced): ``[batch,
    teacher seq]`` per-token log-probabilities, ``[batch, student seq]`` alignment (-1 none) and bool targets
    (the next student token is a target) -> [batch, student seq], -inf where the next token does not end where a
    teacher token ends."""
    before = F.pad(token_logprobs.double().cumsum(-1), (1, 0))  # [batch, teacher seq + 1]: sum of the first m
    here, following = aligned, F.pad(aligned[:, 1:], (0, 1), value=-1)  # [batch, student seq]
    has_target = torch.cat([targets, torch.zeros_like(targets[:, :1])], 1)  # [batch, student seq]
    valid = (here >= 0) & (following >= 0) & has_target
    sums = before.gather(1, following.clamp_min(0)) - before.gather(1, here.clamp_min(0))
    return torch.where(valid, sums, -torch.inf).float()


def head_rows(head: torch.nn.Module, size: int, prefix: str = "") -> dict[str, Optional[torch.Tensor]]:
    """An LM head's first ``size`` rows (its weight [size, H] and bias [size] or None), as ``chunked_logit_loss_sum``
    takes a fused head (``prefix``: ``teacher_`` for the teacher's)."""
    bias = None if head.bias is None else head.bias[:size]
    return {f"{prefix}lm_head_weight": head.weight[:size], f"{prefix}lm_head_bias": bias}


class CrossTokenizerLogitsComponent(Component):
    """A ``CROSS_TOKENIZER_LOSSES`` loss at every aligned loss position of the student (``loss_positions``:
    non-padding, and the assistant's in chat data), in token chunks as the
    same-vocabulary ``LogitsComponent`` (the LM heads fused where the models run without them). It is summed
    over aligned positions and divided, like every logit loss, by the student's loss positions."""

    def __init__(self, loss: str, temperature: float = 1.0, vocab_size: Optional[int] = None, *,
                 cross_tokenizer_loss: str, vocabulary: VocabularyMap, **loss_kwargs):
        super().__init__()
        check_cross_tokenizer_loss(cross_tokenizer_loss, loss)
        self.loss_name, self.cross_loss_name = loss, cross_tokenizer_loss
        self.loss_fn = CROSS_TOKENIZER_LOSSES[cross_tokenizer_loss]
        self.divergence = partial(LOSSES[loss], **loss_kwargs)
        self.temperature, self.vocabulary = temperature, vocabulary
        self._columns: dict[torch.device, SupportColumns] = {}
        self._lm_heads: dict[str, torch.nn.Module] = {}

    def attach(self, student, teacher):
        self._lm_heads = {"student": student.get_output_embeddings()}
        if teacher is not None:
            self._lm_heads["teacher"] = teacher.get_output_embeddings()

    def columns(self, device) -> SupportColumns:
        if device not in self._columns:
            self._columns[device] = SupportColumns(self.vocabulary, device)
        return self._columns[device]

    def forward(self, student_outputs, teacher_outputs, batch):
        """The loss over each model's vocabulary (``VocabularyMap``'s sizes: its LM head's padding rows left out)."""
        aligned = batch[ALIGNED]  # [batch, student seq]
        rows = loss_positions(batch) & (aligned >= 0)  # [batch, student seq]
        student_size, teacher_size = self.vocabulary.student_size, self.vocabulary.teacher_size
        teacher = getattr(teacher_outputs, "logits", None)  # [batch, teacher seq, V_t]
        teacher_head = {}
        if teacher is None:  # the teacher's decoder ran alone: [batch, teacher seq, H_t]
            teacher = teacher_outputs.last_hidden_state
            teacher_head = head_rows(self._lm_heads["teacher"], teacher_size, "teacher_")
        else:
            teacher = teacher[..., :teacher_size]
        teacher_ids = batch[TEACHER_INPUT_IDS].masked_fill(batch[TEACHER_ATTENTION_MASK] == 0, 0)
        token_logprobs = teacher_token_logprobs(teacher, teacher_head.get("teacher_lm_head_weight"),
                                                teacher_head.get("teacher_lm_head_bias"), teacher_ids,
                                                self.temperature)  # [batch, teacher seq]
        targets = batch["labels"][:, 1:] != -100  # [batch, student seq - 1]
        target_logprob = chain_logprobs(token_logprobs, aligned, targets)[rows]  # [n]
        target_ids = F.pad(batch["input_ids"][:, 1:], (0, 1))[rows]  # [n]
        teacher_rows = teacher[rows.nonzero()[:, 0], aligned[rows]]  # [n, V_t or H_t]
        student_head = {}
        if student_outputs.logits.shape[1] == rows.shape[1]:
            student = student_outputs.logits[rows][:, :student_size]  # [n, V_s]
        else:
            student = student_outputs.hidden_states[-1][rows]  # [n, H]
            student_head = head_rows(self._lm_heads["student"], student_size)
        return chunked_logit_loss_sum(
            self.loss_fn, student, teacher_rows, temperature=self.temperature, across_vocabularies=True,
            row_params={"target_ids": target_ids, "target_logprob": target_logprob},
            divergence=self.divergence, columns=self.columns(student.device), **student_head, **teacher_head,
        )

    def memory_footprint(self, step: StepShape) -> int:
        hidden = step.student.width if step.fused_student_head else None
        columns = self.vocabulary.student_size + self.vocabulary.teacher_size
        return chunked_loss_footprint(step.tokens, columns, hidden, working_tensors=12,
                                      compute_bytes=step.compute_bytes, device_type=step.device_type)

    def extra_repr(self) -> str:
        return (f"cross_tokenizer_loss={self.cross_loss_name}, loss={self.loss_name}, "
                f"temperature={self.temperature}, shared_tokens={len(self.vocabulary)}")
