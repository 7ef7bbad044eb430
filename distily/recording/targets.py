"""What is kept of the teacher's distribution at each position, and what that loses.

``sparse_targets`` keeps the k largest log-probabilities and the log of the remaining (tail) mass;
``fidelity_sums`` measures, on full distributions, the KL between the teacher and the distribution
rebuilt from what the store keeps, for several k, so k can be chosen from data.
"""

import math

import torch

from distily.errors import DistilyConfigError
from distily.objectives.losses import kl_divergence, tempered_log_softmax


def check_top_k(top_k: int, vocab: int) -> None:
    if top_k > vocab:
        raise DistilyConfigError(f"record_top_k={top_k} exceeds the teacher's {vocab} logits; expected at most {vocab}")


def sparse_targets(logits: torch.Tensor, top_k: int, temperature: float) -> tuple[torch.Tensor, ...]:
    """``logits`` [tokens, vocab] -> (top-k log p_t [tokens, k] float32, descending; their ids [tokens, k]
    int64; log tail mass [tokens] float32, -inf when k covers the vocabulary), p_t = softmax(logits / T).

    The tail is the log-sum-exp of the log-probabilities outside the top k, computed exactly in float32
    (not as 1 - sum of the top k, which cancels when the tail is small)."""
    logprobs = tempered_log_softmax(logits, temperature)  # [tokens, vocab]
    top = logprobs.topk(top_k, dim=-1)  # sorted, descending
    tail = logprobs.scatter(-1, top.indices, -math.inf).logsumexp(-1)  # [tokens]
    return top.values, top.indices, tail


def reconstructed_logprobs(top_logprobs: torch.Tensor, tail_logprob: torch.Tensor) -> torch.Tensor:
    """The k + 1 buckets the store describes, normalised: [tokens, k] + [tokens] -> [tokens, k + 1].

    The stored float16 top-k and the float32 tail sum to 1 only up to float16 rounding (about 1e-4);
    normalising the k + 1 buckets removes that rounding and nothing else (the tail is kept, unlike a
    renormalisation of the top k alone)."""
    buckets = torch.cat([top_logprobs.float(), tail_logprob.float()[:, None]], dim=-1)  # [tokens, k + 1]
    return buckets - buckets.logsumexp(-1, keepdim=True)


def fidelity_sums(logits: torch.Tensor, top_ks: list[int], temperature: float) -> dict[str, dict[str, float]]:
    """For each k: the summed KL(p_t || q_k) over ``logits`` [tokens, vocab] and the summed tail mass, with
    q_k the distribution rebuilt from a k-store: the float16 top-k as stored, and the tail mass spread
    evenly over the vocab - k other tokens (the store keeps no more about them)."""
    vocab = logits.shape[-1]
    logprobs = tempered_log_softmax(logits, temperature)  # [tokens, vocab]
    sums = {}
    for k in sorted({min(k, vocab) for k in top_ks}):
        top = logprobs.topk(k, dim=-1)
        in_top = torch.zeros_like(logprobs, dtype=torch.bool).scatter(-1, top.indices, True)  # [tokens, vocab]
        tail = logprobs.masked_fill(in_top, -math.inf).logsumexp(-1)  # [tokens]
        stored = top.values.half().float()  # what a store keeps
        if k < vocab:
            buckets = reconstructed_logprobs(stored, tail)  # [tokens, k + 1]
            q_top, q_other = buckets[:, :k], buckets[:, k] - math.log(vocab - k)  # [tokens, k], [tokens]
        else:
            q_top, q_other = stored - stored.logsumexp(-1, keepdim=True), torch.zeros_like(tail)
        kl_top = kl_divergence(top.values, q_top)  # [tokens]
        probs = logprobs.exp()  # [tokens, vocab]
        other_terms = probs * (logprobs - q_other[:, None])  # [tokens, vocab]
        kl_other = torch.where(in_top | (probs == 0), 0.0, other_terms).sum(-1)  # [tokens]
        sums[str(k)] = {
            "kl_sum": float((kl_top + kl_other).double().sum()),
            "tail_mass_sum": float(tail.exp().double().sum()),
        }
    return sums
