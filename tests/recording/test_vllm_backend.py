"""The vLLM back end's conversion of prompt log-probs into store rows, on vLLM-shaped stand-ins (the
package itself needs a GPU machine)."""

import math
from types import SimpleNamespace

import pytest
import torch

from distily.errors import DistilyConfigError
from distily.recording.targets import sparse_targets
from distily.recording.vllm_backend import position_targets, row_targets


def _candidates(logprobs: torch.Tensor, top_k: int, present: int) -> dict:
    """vLLM's per-position dict: the top-k tokens plus the token actually present, with ranks."""
    order = logprobs.argsort(descending=True).tolist()
    chosen = set(order[:top_k]) | {present}
    return {token: SimpleNamespace(logprob=float(logprobs[token]), rank=order.index(token) + 1) for token in chosen}


def test_a_row_converts_like_the_hf_back_end():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 30, generator=generator) * 3  # [seq, vocab]: position j predicts token j + 1
    logprobs = torch.log_softmax(logits.double(), -1)
    input_ids = [3, 17, 4, 29, 0, 11]
    k = 5
    prompt_logprobs = [None] + [_candidates(logprobs[j - 1], k, input_ids[j]) for j in range(1, 6)]
    last = _candidates(logprobs[5], k, 7)
    output = SimpleNamespace(prompt_logprobs=prompt_logprobs, outputs=[SimpleNamespace(logprobs=[last])])
    top, ids, tail, nll = row_targets(output, input_ids, k)
    expected_top, expected_ids, expected_tail = sparse_targets(logits.double(), k, 1.0)
    torch.testing.assert_close(top, expected_top.float())
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(tail, expected_tail.float(), rtol=1e-5, atol=1e-6)
    expected_nll = -sum(logprobs[j, input_ids[j + 1]].item() for j in range(5))
    assert nll.item() == pytest.approx(expected_nll)


def test_a_position_with_fewer_log_probs_than_k_is_a_clear_error():
    with pytest.raises(DistilyConfigError, match=r"vLLM returned 2 log-probs at a position; expected record_top_k=3"):
        position_targets({1: SimpleNamespace(logprob=-0.1), 2: SimpleNamespace(logprob=-3.0)}, 3)


def test_a_full_top_k_leaves_no_tail():
    candidates = {token: SimpleNamespace(logprob=math.log(0.25)) for token in range(4)}
    _, _, tail = position_targets(candidates, 4)
    assert tail == -math.inf
