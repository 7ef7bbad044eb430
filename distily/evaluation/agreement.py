"""How closely a model follows its teacher, token by token: forward KL(teacher || model) and top-1
agreement (the two argmax tokens are the same), over non-padding positions."""

from typing import Optional

import torch

from distily.objectives.losses import forward_kl


def agreement_sums(
    logits: torch.Tensor, teacher_logits: torch.Tensor, vocab_size: Optional[int] = None
) -> tuple[float, int, int]:
    """``(sum of KL(p_teacher || p_model), positions where the argmaxes match, positions)`` over the given positions;
    sums, so chunks and batches add up and the caller divides once.

    ``logits``, ``teacher_logits``: ``[positions, vocab]`` (vocabularies may differ by padding rows: both are cut to
    ``vocab_size``). KL in nats, computed in float32.
    """
    model_logits, reference_logits = logits[:, :vocab_size], teacher_logits[:, :vocab_size]  # [positions, vocab]
    kl = forward_kl(model_logits, reference_logits).sum()  # float32
    matches = (model_logits.argmax(-1) == reference_logits.argmax(-1)).sum()
    return kl.item(), int(matches), model_logits.shape[0]
