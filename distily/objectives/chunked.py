"""Memory-bounded logit loss: any loss of ``LOSSES``, computed in token chunks.

API::

    chunked_logit_loss_sum(
        loss_fn,                   # a LOSSES entry: (student_logits, teacher_logits, temperature, **params) -> [n]
        student,                   # [..., H] hidden states if lm_head_weight is given, else [..., V_s] logits
        teacher,                   # [..., V_t] logits, or [..., H_t] hidden states if teacher_lm_head_weight is
                                   # given; a constant (no gradient flows into it)
        *,
        lm_head_weight=None,       # [V_s, H]: fuse the student's LM head, its logits are never materialised
        lm_head_bias=None,         # [V_s] or None
        teacher_lm_head_weight=None,  # [V_t, H_t]: fuse the teacher's LM head too (slice by slice)
        teacher_lm_head_bias=None,    # [V_t] or None
        mask=None,                 # [...] bool, True for tokens that count; other rows are never read
        vocab_size=None,           # count only the first vocab_size columns (vocabularies that differ
                                   # by padding rows only); None requires V_s == V_t
        across_vocabularies=False, # True: V_s and V_t are different vocabularies, the loss reads all columns
                                   # of each (the cross-tokenizer losses)
        row_params=None,           # {name: [..., ...] tensor}: per-token loss parameters, each sliced with
                                   # the tokens it goes with (a target id per token, say)
        temperature=1.0,
        chunk_size=None,           # tokens per LM-head chunk; None: a 128 MiB buffer (CHUNK_ELEMENTS fp32 logits)
        loss_chunk_size=None,      # tokens per loss evaluation; None: about loss_slice_elements(device) / vocab_size
        **loss_params,             # e.g. beta=0.5 for jsd
    ) -> torch.Tensor              # scalar float32: the SUM of the per-token loss over unmasked tokens

``chunked_rows_loss_sum(loss_fn, student, teacher_rows, columns, ...)`` is the same with the teacher's side
given row by row (``TeacherRows``): the sparse loss against a recorded teacher's top-k uses it.

The caller divides by the number of real tokens in the whole (accumulated) batch, which keeps the
value the same for one batch of B and k accumulated batches of B/k. Differentiable with respect to
``student``, ``lm_head_weight`` and ``lm_head_bias``.

How: a ``torch.autograd.Function`` computes the gradient in its forward pass; the backward only
scales it by the incoming scalar. With the LM head fused, the forward walks the real tokens in
chunks of ``chunk_size``: one matmul writes the chunk's student logits into a ``[chunk, V]`` buffer
that is reused for every chunk; the loss runs on slices of ``loss_chunk_size`` tokens (small blocks the allocator
recycles; its ``value_and_gradient`` where it has a closed form, ``losses.closed_form_gradient``, else under
autograd), and each slice's gradient overwrites its logits in the buffer; two
matmuls then fold the buffer into the gradients of the hidden states and of the LM head (accumulated
in fp32). Without the LM head, the loss slices run directly on the student logits and their
gradients go into the ``[N, V_s]`` gradient the caller needs anyway.

In float16, whose range ends near 6e-8, each slice's gradient is stored times a power of two that brings its largest
value near 1, divided out in float32 (``_storage_scale``): fp16 training's loss scale reaches it only in the backward.

Memory beyond the inputs is therefore the buffer, the loss's intermediates for one slice and the
input-sized gradients: it does not grow with the number of tokens but through the ``[N, H]``
gradient of the hidden states. With the teacher's LM head fused as well, each chunk's teacher logits
are computed when the chunk needs them, so the teacher's ``[N, V_t]`` logits are never held either.
"""

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from distily.objectives.losses import UNKNOWN_WORKING_TENSORS, LossFn

CHUNK_ELEMENTS = 2**25
"""Default LM-head chunk: a 128 MiB buffer of logits, 32M in fp32 (667 tokens at V = 50257), twice as many in
bf16/fp16. Every chunk reads and writes the whole ``[V, H]`` fp32 LM-head gradient, so much smaller chunks cost
time (at V = 151,936 in bf16 on a 2-core CPU, 441-token chunks took 8.3 s a loss where 220-token ones took 12.0)."""

LOSS_CHUNK_ELEMENTS = 2**23
"""Default loss slice on an accelerator, and the evaluation's slices everywhere: 8M logits, at most 32 MiB per fp32
intermediate (166 tokens at V = 50257), few enough slices that launching the loss's kernels costs little."""

CPU_LOSS_CHUNK_ELEMENTS = 2**20
"""Default loss slice on CPU: 1M logits, 4 MiB per fp32 intermediate (20 tokens at V = 50257), so that the loss's
dozen passes over a slice run from the caches. Larger blocks also cost page faults: glibc maps those over 32 MiB
fresh on every allocation. Measured on a 2-core Xeon at 2048 tokens (benchmarks/loss_slices.py, docs/losses.md)."""


def loss_slice_elements(device_type: str) -> int:
    """Logits per loss slice by default on a device of this type (``"cpu"``, ``"cuda"``, ...)."""
    return CPU_LOSS_CHUNK_ELEMENTS if device_type == "cpu" else LOSS_CHUNK_ELEMENTS


ACCUMULATE_ELEMENTS = 2**21
"""A half-precision chunk's LM-head gradient is added to the fp32 one in blocks of this many values (8 MiB in fp32,
4096 rows at H = 512): the product of a whole [V, H] and its widened copy were fresh mappings, page-faulted on every
chunk (0.34 s a chunk at V = 151,936, H = 512, 441 tokens, on a 2-core CPU), where blocks recycle heap memory
(0.17 s) and never hold the [V, H] half-precision product."""


def _head_dtype(device: torch.device, weight: torch.Tensor) -> torch.dtype:
    """The dtype an LM head's matmul runs in on ``device``: autocast's, else the head's own (the trainer hands the
    loss a bf16 student's hidden states in fp32, where its own head ran in bf16). The fused pass writes its matmuls
    into buffers (``out=``, in place), which autocast never casts, so it casts the LM head itself, as autocast would
    the student's own; the loss still runs in fp32 and the gradients accumulate in fp32."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else weight.dtype


def _head_inputs(states: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """(states [N, H], weight [V, H], bias [V] or None) cast to the head's matmul dtype (``_head_dtype``)."""
    dtype = _head_dtype(states.device, weight)
    return states.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _storage_scale(grad: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A power of two (0-dim float32) that brings a loss slice's largest |gradient| into [0.5, 1) before it is stored
    in ``dtype``; None unless ``dtype`` is float16. float16 flushes values under 6e-8 to zero and keeps few digits
    below 6e-5, where a loss over a vocabulary puts much of its gradient (mse's and cosine's are of order 1 / V): the
    loss scale of fp16 training would lift them, but it reaches this gradient only in the backward pass, after it is
    stored. A power of two scales exactly; the scale is divided out in float32."""
    if dtype != torch.float16:
        return None
    low, high = grad.aminmax()  # no [n, V] copy, as abs() would make
    largest = torch.maximum(-low, high).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.exp2(-torch.floor(torch.log2(largest)) - 1)


class LogitRows:
    """A model's logits for any rows of its flattened tokens: read from ``[N, V]`` logits, or computed from
    ``[N, H]`` final hidden states through the LM head ``weight`` [V, H] (+ ``bias``) when the rows are asked for.

    Under autocast the head is cast once, here: autocast casts a weight that takes no gradient at every call,
    which for a [151936, 512] teacher head read slice by slice was 38% of a bf16 loss's time on CPU."""

    def __init__(self, states: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]):
        if weight is not None:
            states, weight, bias = _head_inputs(states, weight, bias)
        self.states, self.weight, self.bias = states, weight, bias

    def __call__(self, rows, vocab_size: int) -> torch.Tensor:  # [n, vocab_size]
        if self.weight is None:
            return self.states[rows, :vocab_size]
        bias = self.bias[:vocab_size] if self.bias is not None else None
        return F.linear(self.states[rows], self.weight[:vocab_size], bias)


TeacherRows = Callable[[Any, int], Any]
"""The teacher's side of the loss for rows (a slice or an index tensor) of the flattened tokens, cut to
``vocab_size`` columns: its logits (``LogitRows``), or whatever else the loss takes as its second argument
(a store's top-k targets, ``sparse.py``): a tensor or a tuple of tensors, the rows on their first dimension.
It is asked once per LM-head chunk: a fused teacher head then runs one matmul per chunk, where one per loss
slice ran at a third of the matmul throughput (a [55, 512] x [512, 151936] bf16 product on a 2-core CPU)."""


def _token_rows(side, start: int, stop: int):
    """Rows start:stop of a teacher's side (``TeacherRows``)."""
    return tuple(part[start:stop] for part in side) if isinstance(side, tuple) else side[start:stop]


class _LossSlices:
    """Runs the loss, with its gradient when asked, on slices of the tokens that count.

    ``teacher_rows`` gives the teacher's side of any rows; ``row_index`` [n] lists the rows that count
    (None: all ``num_tokens``); ``vocab_size`` columns count; a slice has at most ``loss_chunk_size`` tokens.
    """

    def __init__(
        self, loss_fn, temperature, loss_params, teacher_rows: TeacherRows, num_tokens, row_index, vocab_size,
        loss_chunk_size, with_grad, row_params=None,
    ):  # fmt: skip
        self.loss_fn, self.temperature, self.loss_params = loss_fn, temperature, loss_params
        self.row_params = row_params or {}  # name -> [N, ...]
        self.teacher_rows, self.row_index, self.vocab_size = teacher_rows, row_index, vocab_size
        self.loss_chunk_size, self.with_grad = loss_chunk_size, with_grad
        self.num_rows = num_tokens if row_index is None else row_index.numel()

    def rows(self, start: int, stop: int):
        """Rows start:stop of the tokens that count, as a slice or an index tensor."""
        return slice(start, stop) if self.row_index is None else self.row_index[start:stop]

    def spans(self, start: int, stop: int):
        """(start, stop) of each slice of the tokens start:stop, with the teacher's side of that slice."""
        teacher = self.teacher_rows(self.rows(start, stop), self.vocab_size)  # [C, V] logits, or the loss's targets
        for piece in range(start, stop, self.loss_chunk_size):
            piece_stop = min(piece + self.loss_chunk_size, stop)
            yield piece, piece_stop, _token_rows(teacher, piece - start, piece_stop - start)

    def loss_and_grad(self, student_logits: torch.Tensor, teacher, start: int, stop: int):
        """(summed loss, its gradient w.r.t. student_logits [n, V] or None) for the tokens start:stop, whose
        teacher's side is ``teacher``."""
        rows = self.rows(start, stop)
        params = {**self.loss_params, **{name: value[rows] for name, value in self.row_params.items()}}
        if not self.with_grad:
            return self.loss_fn(student_logits, teacher, self.temperature, **params).sum(), None
        value_and_gradient = getattr(self.loss_fn, "value_and_gradient", None)  # losses.closed_form_gradient
        if value_and_gradient is not None:
            value, grad = value_and_gradient(student_logits, teacher, self.temperature, **params)
            return value.sum(), grad
        student_logits = student_logits.detach().float().requires_grad_()  # a float32 gradient, as closed forms give
        with torch.enable_grad():
            loss = self.loss_fn(student_logits, teacher, self.temperature, **params).sum()
        (grad,) = torch.autograd.grad(loss, student_logits)
        return loss.detach(), grad


def _logits_pass(slices: _LossSlices, student_logits, chunk_size, grad_student, row_scale) -> torch.Tensor:
    """Summed loss of student logits [N, V_s]; their gradient goes into grad_student [N, V_s] (or None), each row
    times its ``row_scale`` [N] (float32; None: unscaled, see ``_storage_scale``)."""
    total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
    for start in range(0, slices.num_rows, chunk_size):
        for piece_start, piece_stop, teacher in slices.spans(start, min(start + chunk_size, slices.num_rows)):
            rows = slices.rows(piece_start, piece_stop)
            loss, grad = slices.loss_and_grad(student_logits[rows, : slices.vocab_size], teacher, piece_start,
                                              piece_stop)
            total += loss
            if grad_student is not None:
                scale = _storage_scale(grad, grad_student.dtype)
                if scale is not None:
                    row_scale[rows] = scale
                    grad.mul_(scale)
                grad_student[rows, : slices.vocab_size] = grad.to(grad_student.dtype)
    return total


def _add_matmul(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                divisor: Optional[torch.Tensor] = None) -> None:
    """accumulator [M, K] += left [M, C] @ right [C, K] (/ ``divisor``, a 0-dim float32 tensor), in place, keeping the
    accumulator's (fp32) precision.

    With half-precision inputs the product is widened before it is added, block by block of ACCUMULATE_ELEMENTS."""
    if left.dtype == accumulator.dtype and divisor is None:
        accumulator.addmm_(left, right)
        return
    block = max(1, ACCUMULATE_ELEMENTS // accumulator.shape[1])
    for start in range(0, accumulator.shape[0], block):
        product = left[start : start + block] @ right
        accumulator[start : start + block].add_(product if divisor is None else product.float().div_(divisor))


def _fused_pass(
    slices: _LossSlices, hidden, weight, bias, chunk_size, grad_hidden, grad_weight, grad_bias
) -> torch.Tensor:
    """Summed loss of hidden [N, H] through the LM head weight [V, H] (+ bias [V]), chunk by chunk.

    The gradients go into grad_hidden [N, H], grad_weight [V, H] and grad_bias [V] (fp32), each or None.
    """
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    buffer = torch.empty(min(chunk_size, slices.num_rows), weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    for start in range(0, slices.num_rows, chunk_size):
        stop = min(start + chunk_size, slices.num_rows)
        rows = slices.rows(start, stop)
        hidden_rows = hidden[rows]  # [C, H]
        logits = buffer[: stop - start]  # [C, V]: the chunk's logits, then their gradients
        if bias is None:
            torch.mm(hidden_rows, weight.T, out=logits)
        else:
            torch.addmm(bias, hidden_rows, weight.T, out=logits)
        row_scale = torch.ones(stop - start, device=hidden.device) if buffer.dtype == torch.float16 else None  # [C]
        for piece_start, piece_stop, teacher in slices.spans(start, stop):
            piece_logits = logits[piece_start - start : piece_stop - start]  # [n, V]
            loss, grad = slices.loss_and_grad(piece_logits, teacher, piece_start, piece_stop)
            total += loss
            if grad is not None:
                scale = _storage_scale(grad, buffer.dtype)
                if scale is not None:
                    row_scale[piece_start - start : piece_stop - start] = scale
                    grad.mul_(scale)
                piece_logits.copy_(grad)
        _fold_chunk(logits, row_scale, rows, hidden_rows, weight, grad_hidden, grad_weight, grad_bias)
    return total


def _fold_chunk(logits, row_scale, rows, hidden_rows, weight, grad_hidden, grad_weight, grad_bias) -> None:
    """Add a chunk's logit gradients [C, V] (each row times its ``row_scale`` [C], or None: unscaled) into the
    gradients of its hidden states [C, H] (rows ``rows`` of grad_hidden), of the LM head [V, H] and of its bias [V].
    Scaled rows are brought to the chunk's smallest scale (powers of two: exact) before the head's sum over them."""
    if grad_hidden is not None:
        product = logits @ weight  # [C, H]
        if row_scale is not None:
            product = product.float().div_(row_scale[:, None])
        grad_hidden[rows] = product.to(grad_hidden.dtype)
    divisor = None
    if row_scale is not None and (grad_weight is not None or grad_bias is not None):
        divisor = row_scale.min()
        logits.mul_((divisor / row_scale)[:, None])
    if grad_weight is not None:
        _add_matmul(grad_weight, logits.T, hidden_rows, divisor)  # [V, H]
    if grad_bias is not None:
        column_sums = logits.sum(0, dtype=torch.float32)  # [V]
        grad_bias += column_sums if divisor is None else column_sums.div_(divisor)


class _ChunkedLogitLoss(torch.autograd.Function):
    """Summed logit loss with its gradient computed in the forward pass.

    ``student`` [N, H or V_s] is 2-D; see ``TeacherRows`` and ``_LossSlices`` for the rest.
    """

    @staticmethod
    def forward(
        ctx,
        student: torch.Tensor,
        lm_head_weight: Optional[torch.Tensor],
        lm_head_bias: Optional[torch.Tensor],
        teacher_rows: TeacherRows,
        row_index: Optional[torch.Tensor],
        vocab_size: int,
        sizes: tuple[int, int],
        loss_fn: LossFn,
        temperature: float,
        loss_params: dict,
        grad_enabled: bool,
        row_params: Optional[dict] = None,
    ) -> torch.Tensor:
        chunk_size, loss_chunk_size = sizes
        # needs_input_grad ignores no_grad mode, so the caller's grad mode comes in as grad_enabled
        needs_student, needs_weight, needs_bias = (grad_enabled and needs for needs in ctx.needs_input_grad[:3])
        with_grad = needs_student or needs_weight or needs_bias
        slices = _LossSlices(loss_fn, temperature, loss_params, teacher_rows, student.shape[0], row_index, vocab_size,
                             loss_chunk_size, with_grad, row_params)
        grad_student = torch.zeros_like(student) if needs_student else None  # [N, H or V_s]
        grad_weight = grad_bias = row_scale = None
        if lm_head_weight is None:
            if needs_student and student.dtype == torch.float16:  # see _storage_scale
                row_scale = torch.ones(student.shape[0], device=student.device)  # [N]
            total = _logits_pass(slices, student, chunk_size, grad_student, row_scale)
        else:
            if needs_weight:
                grad_weight = torch.zeros(lm_head_weight.shape, dtype=torch.float32, device=student.device)  # [V_s, H]
            if needs_bias:
                grad_bias = torch.zeros(lm_head_bias.shape, dtype=torch.float32, device=student.device)  # [V_s]
            bias = lm_head_bias[:vocab_size] if lm_head_bias is not None else None  # [V]
            hidden, weight, bias = _head_inputs(student, lm_head_weight[:vocab_size], bias)  # [N, H], [V, H], [V]
            total = _fused_pass(slices, hidden, weight, bias, chunk_size, grad_student,
                                grad_weight[:vocab_size] if needs_weight else None,
                                grad_bias[:vocab_size] if needs_bias else None)
            grad_weight = grad_weight.to(lm_head_weight.dtype) if needs_weight else None
            grad_bias = grad_bias.to(lm_head_bias.dtype) if needs_bias else None
        ctx.save_for_backward(grad_student, grad_weight, grad_bias, row_scale)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_student, grad_weight, grad_bias, row_scale = ctx.saved_tensors
        scaled = (_times(grad_student, grad_total, row_scale), _times(grad_weight, grad_total),
                  _times(grad_bias, grad_total))
        return (*scaled, *[None] * 9)


def _times(grad: Optional[torch.Tensor], grad_total: torch.Tensor, row_scale: Optional[torch.Tensor] = None):
    """A stored gradient times the incoming scalar; with ``row_scale`` [N] (float16 rows, ``_storage_scale``) each row
    divided by its scale, in float32 and rounded once."""
    if grad is None:
        return None
    if row_scale is None:
        return grad * grad_total.to(grad.dtype)
    return torch.mul(grad, (grad_total / row_scale)[:, None], out=torch.empty_like(grad))


def _check_head(name: str, weight: Optional[torch.Tensor], hidden: torch.Tensor, whose: str) -> int:
    """Columns of ``hidden`` [..., H or V] as logits: the head's rows if ``weight`` [V, H] is given."""
    if weight is None:
        return hidden.shape[-1]
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{name} has shape {tuple(weight.shape)}; expected [vocab, {hidden.shape[-1]}] to match the {whose} "
            "hidden size"
        )
    return weight.shape[0]


def _check_shapes(student, teacher, lm_head_weight, teacher_lm_head_weight, mask, vocab_size,
                  across_vocabularies=False) -> int:
    """The number of vocabulary columns that count (the student's, across vocabularies); raises on inconsistent
    shapes."""
    student_vocab = _check_head("lm_head_weight", lm_head_weight, student, "student")
    teacher_vocab = _check_head("teacher_lm_head_weight", teacher_lm_head_weight, teacher, "teacher")
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(
            f"student has token shape {tuple(student.shape[:-1])} but the teacher has "
            f"{tuple(teacher.shape[:-1])}; expected the same tokens"
        )
    if mask is not None and mask.shape != student.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(student.shape[:-1])}")
    if across_vocabularies:
        return student_vocab
    if vocab_size is None:
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"student vocabulary {student_vocab} != teacher vocabulary {teacher_vocab}; pass vocab_size "
                "if they differ only by padding rows"
            )
        return student_vocab
    if not 0 < vocab_size <= min(student_vocab, teacher_vocab):
        raise ValueError(
            f"vocab_size={vocab_size}; expected 1..{min(student_vocab, teacher_vocab)} "
            f"(student {student_vocab}, teacher {teacher_vocab})"
        )
    return vocab_size


def _chunk_sizes(chunk_size: Optional[int], loss_chunk_size: Optional[int], columns: int, buffer_bytes: int,
                 device_type: str) -> tuple[int, int]:
    """(tokens per LM-head chunk of ``buffer_bytes`` per logit, tokens per loss slice on ``device_type``), the
    slice no larger than the chunk."""
    chunk_size = max(1, CHUNK_ELEMENTS * 4 // (buffer_bytes * columns)) if chunk_size is None else chunk_size
    if loss_chunk_size is None:
        loss_chunk_size = max(1, loss_slice_elements(device_type) // columns)
    for name, value in (("chunk_size", chunk_size), ("loss_chunk_size", loss_chunk_size)):
        if value < 1:
            raise ValueError(f"{name}={value}; expected a positive number of tokens")
    return chunk_size, min(loss_chunk_size, chunk_size)


def chunked_loss_footprint(
    tokens: int,
    columns: int,
    hidden: Optional[int] = None,
    *,
    working_tensors: int = UNKNOWN_WORKING_TENSORS,
    compute_bytes: int = 4,
    teacher_logits: bool = True,
    device_type: str = "cpu",
) -> int:
    """Peak bytes ``chunked_logit_loss_sum`` allocates beyond its inputs for ``tokens`` rows that count and
    ``columns`` vocabulary columns at its default chunk sizes, the gradients it returns included.

    ``hidden``: the student's width when its LM head is fused (None: the student's logits are given, and their
    ``[N, V]`` gradient is what the loss returns); ``compute_bytes``: bytes per value of the matmuls (2 under
    bf16/fp16 autocast, which also makes half-precision copies of the hidden states and the LM head);
    ``working_tensors``: the loss's (``losses.py``), for one slice of the tokens at a time; ``teacher_logits``: the
    teacher's side is its logits, a chunk's computed by its fused LM head or gathered at once (False: a store's
    top-k, a few values per token); ``device_type``: where the loss runs (the default slice size depends on it)."""
    buffer_bytes = compute_bytes if hidden is not None else 4
    sizes = _chunk_sizes(None, None, columns, buffer_bytes, device_type)
    chunk, piece = (min(size, tokens) for size in sizes)
    slices = working_tensors * piece * columns * 4  # a slice's teacher logits among them
    if teacher_logits:  # the rest of its chunk's
        slices += (chunk - piece) * columns * compute_bytes
    held = chunked_loss_held(tokens, columns, hidden, compute_bytes=compute_bytes)
    buffer = 0 if hidden is None else chunk * columns * compute_bytes  # the [chunk, V] buffer
    return held + buffer + slices


def chunked_loss_held(tokens: int, columns: int, hidden: Optional[int] = None, *, compute_bytes: int = 4) -> int:
    """Bytes of ``chunked_loss_footprint`` (same arguments) that outlive the call: the gradients the loss computes
    in its forward pass for the backward pass, and autocast's copies of the hidden states and the LM head."""
    if hidden is None:
        return tokens * columns * compute_bytes  # [N, V]
    gradients = (tokens + 2 * columns) * hidden * 4  # [N, H] and [V, H] fp32, and the latter's scaled copy
    casts = (tokens + columns) * hidden * compute_bytes if compute_bytes < 4 else 0  # autocast's copies
    return gradients + casts


def chunked_logit_loss_sum(
    loss_fn: LossFn,
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    lm_head_weight: Optional[torch.Tensor] = None,
    lm_head_bias: Optional[torch.Tensor] = None,
    teacher_lm_head_weight: Optional[torch.Tensor] = None,
    teacher_lm_head_bias: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
    chunk_size: Optional[int] = None,
    loss_chunk_size: Optional[int] = None,
    across_vocabularies: bool = False,
    row_params: Optional[dict[str, torch.Tensor]] = None,
    **loss_params,
) -> torch.Tensor:
    """Sum over unmasked tokens of ``loss_fn(student_logits, teacher_logits, temperature, **loss_params)``.

    See the module docstring for the arguments. Returns a float32 scalar; divide it by the real-token
    count of the whole (accumulated) batch for a mean.
    """
    heads = (("", lm_head_weight, lm_head_bias), ("teacher_", teacher_lm_head_weight, teacher_lm_head_bias))
    for prefix, weight, bias in heads:
        if bias is not None and weight is None:
            raise ValueError(
                f"{prefix}lm_head_bias was given without {prefix}lm_head_weight; expected both or only the weight"
            )
    columns = _check_shapes(student, teacher, lm_head_weight, teacher_lm_head_weight, mask, vocab_size,
                            across_vocabularies)
    teacher_2d = teacher.detach().reshape(-1, teacher.shape[-1])  # [N, V_t or H_t]
    detached = [None if t is None else t.detach() for t in (teacher_lm_head_weight, teacher_lm_head_bias)]
    return chunked_rows_loss_sum(
        loss_fn, student, LogitRows(teacher_2d, *detached), columns, lm_head_weight=lm_head_weight,
        lm_head_bias=lm_head_bias, mask=mask, temperature=temperature, chunk_size=chunk_size,
        loss_chunk_size=loss_chunk_size, across_vocabularies=across_vocabularies, row_params=row_params, **loss_params,
    )


@torch.compiler.disable  # data-dependent chunks in an autograd.Function: runs eagerly inside a compiled model
def chunked_rows_loss_sum(
    loss_fn: LossFn,
    student: torch.Tensor,
    teacher_rows: TeacherRows,
    vocab_columns: int,
    *,
    lm_head_weight: Optional[torch.Tensor] = None,
    lm_head_bias: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    chunk_size: Optional[int] = None,
    loss_chunk_size: Optional[int] = None,
    across_vocabularies: bool = False,
    row_params: Optional[dict[str, torch.Tensor]] = None,
    **loss_params,
) -> torch.Tensor:
    """``chunked_logit_loss_sum`` with the teacher's side given row by row: ``loss_fn(student_logits
    [n, vocab_columns], teacher_rows(rows, vocab_columns), temperature, **loss_params) -> [n]``, rows of the
    flattened ``[...]`` tokens.
    ``vocab_columns``: the vocabulary columns that count (at most the student's; across vocabularies the student's
    all, and the teacher's side is read whole); shapes are the caller's to check."""
    buffer_dtype = _head_dtype(student.device, lm_head_weight) if lm_head_weight is not None else torch.float32
    sizes = _chunk_sizes(chunk_size, loss_chunk_size, vocab_columns, buffer_dtype.itemsize, student.device.type)
    rows_of = {name: value.reshape(student.shape[:-1].numel(), *value.shape[student.dim() - 1:])
               for name, value in (row_params or {}).items()}  # [N, ...]
    student_2d = student.reshape(-1, student.shape[-1])  # [N, H or V_s]
    row_index = None if mask is None else mask.reshape(-1).to(torch.bool).nonzero().squeeze(-1)  # [n_real]
    return _ChunkedLogitLoss.apply(
        student_2d, lm_head_weight, lm_head_bias, teacher_rows, row_index,
        None if across_vocabularies else vocab_columns, sizes, loss_fn, temperature, loss_params,
        torch.is_grad_enabled(), rows_of,
    )
