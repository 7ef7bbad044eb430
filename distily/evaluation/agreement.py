"""How closely a model follows its teacher, token by token: forward KL(teacher || model) and top-1
agreement (the two argmax tokens are the same), over non-padding positions."""

from typing import Optional

import torch

from distily.objectives.losses import forward_kl


def agreement_sums(
    logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, vocab_size: Optional[int] = None
) -> tuple[float, int, int]:
    """``(sum of KL(p_teacher || p_model), positions where the argmaxes match, positions)`` over the positions
    where ``mask`` is true; sums, so batches add up and the caller divides once.

    ``logits``, ``teacher_logits``: ``[batch, seq, vocab]`` (vocabularies may differ by padding rows: both are
    cut to ``vocab_size``); ``mask``: ``[batch, seq]`` bool. KL in nats, computed in float32.
    """
    model_logits = logits[mask][:, :vocab_size]  # [tokens, vocab]
    reference_logits = teacher_logits[mask][:, :vocab_size]  # [tokens, vocab]
    kl = forward_kl(model_logits, reference_logits).sum()  # float32
    matches = (model_logits.argmax(-1) == reference_logits.argmax(-1)).sum()
    return kl.item(), int(matches), int(mask.sum())
