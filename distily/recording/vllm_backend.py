"""The vLLM recording back end (optional): prompt log-probabilities from a vLLM engine, written in the
same store format as the Hugging Face back end.

vLLM returns, for prompt position j >= 1, the top log-probabilities of token j given the tokens before
it (``prompt_logprobs``), plus the actually present token's; the prediction after the last prompt
token comes from generating one token with ``logprobs``. It caps log-probs per position at
``max_logprobs`` (20 by default), so the engine is built with ``max_logprobs=record_top_k``. It gives
no full distribution: the tail mass is 1 - sum of the top k (computed in float64; tails below ~1e-7
read as 0), there is no fidelity report, no hidden states, and log-probs are at temperature 1.
"""

import math
from typing import Optional

import torch

from distily.data.framing import INPUT_IDS
from distily.data.store import ATTENTION_MASK, ROW_NLL, ROW_TARGETS, TAIL_LOGPROB, TOPK_IDS, TOPK_LOGPROBS, id_dtype
from distily.errors import DistilyConfigError


def position_targets(candidates: dict, top_k: int) -> tuple[list[float], list[int], float]:
    """One position's ``{token_id: Logprob}`` -> (top-k log-probs descending, their ids, log tail mass)."""
    ranked = sorted(candidates.items(), key=lambda item: -item[1].logprob)[:top_k]
    if len(ranked) < top_k:
        raise DistilyConfigError(
            f"vLLM returned {len(ranked)} log-probs at a position; expected record_top_k={top_k} (is max_logprobs "
            "lower than record_top_k?)"
        )
    logprobs = [float(entry.logprob) for _, entry in ranked]
    mass = 1.0 - math.fsum(math.exp(value) for value in logprobs)
    return logprobs, [int(token) for token, _ in ranked], math.log(mass) if mass > 0 else -math.inf


def row_targets(output, input_ids: list[int], top_k: int) -> tuple[torch.Tensor, ...]:
    """A vLLM ``RequestOutput`` for one row -> (top-k log-probs [seq, k], ids [seq, k], log tail [seq], summed
    next-token NLL). Position j predicts token j + 1: ``prompt_logprobs[j + 1]``, and for the last position
    the log-probs of the one generated token."""
    positions = list(output.prompt_logprobs[1:]) + [output.outputs[0].logprobs[0]]
    targets = [position_targets(candidates, top_k) for candidates in positions]
    nll = -math.fsum(positions[j][input_ids[j + 1]].logprob for j in range(len(input_ids) - 1))
    return (
        torch.tensor([t[0] for t in targets], dtype=torch.float32),
        torch.tensor([t[1] for t in targets], dtype=torch.int64),
        torch.tensor([t[2] for t in targets], dtype=torch.float32),
        torch.tensor(nll, dtype=torch.float64),
    )


class VLLMRecorder:
    """Records rows of token ids with a vLLM engine: ``record(input_ids [rows, seq]) -> (tensors, stats)``."""

    def __init__(
        self,
        name_or_path: str,
        top_k: int,
        temperature: float,
        hidden_states_layers: list[int],
        vocab_size: int,
        max_seq_length: int,
        dtype: str,
        trust_remote_code: bool,
    ):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise DistilyConfigError(
                "record_backend='vllm' needs the vllm package; expected `pip install vllm` on a GPU machine, or "
                "record_backend=hf"
            )
        if hidden_states_layers:
            raise DistilyConfigError(
                f"record_backend='vllm' cannot record hidden states (record_hidden_states_layers="
                f"{hidden_states_layers}); expected record_backend=hf"
            )
        if temperature != 1.0:
            raise DistilyConfigError(
                f"record_backend='vllm' returns log-probs at temperature 1, not logits_temperature={temperature}; "
                "expected logits_temperature=1.0 or record_backend=hf"
            )
        self.top_k, self.id_dtype = top_k, id_dtype(vocab_size)
        self.engine = LLM(
            model=name_or_path,
            dtype=dtype,
            max_logprobs=top_k,
            max_model_len=max_seq_length + 1,
            trust_remote_code=trust_remote_code,
            enable_prefix_caching=False,
        )
        self.params = SamplingParams(max_tokens=1, logprobs=top_k, prompt_logprobs=top_k, detokenize=False)

    def record(self, batch: dict, held_out: bool, progress: Optional[object] = None) -> tuple[dict, dict]:
        """As ``HFRecorder.record``, for full rows (``packing: stream``: no padding, no document masks)."""
        input_ids = batch[INPUT_IDS]  # [rows, seq]
        rows = input_ids.tolist()
        outputs = self.engine.generate([{"prompt_token_ids": row} for row in rows], self.params, use_tqdm=False)
        targets = [row_targets(output, row, self.top_k) for output, row in zip(outputs, rows)]
        if progress is not None:
            progress.update(len(rows))
        tensors = {
            INPUT_IDS: input_ids.to(torch.int32),
            ATTENTION_MASK: torch.ones_like(input_ids, dtype=torch.int8),
            TOPK_LOGPROBS: torch.stack([t[0] for t in targets]).half(),  # [rows, seq, k]
            TOPK_IDS: torch.stack([t[1] for t in targets]).to(self.id_dtype),  # [rows, seq, k]
            TAIL_LOGPROB: torch.stack([t[2] for t in targets]),  # [rows, seq]
            ROW_NLL: torch.stack([t[3] for t in targets]),  # [rows]
            ROW_TARGETS: torch.full((len(rows),), input_ids.shape[1] - 1, dtype=torch.int32),  # [rows]
        }
        stats = {
            "positions": input_ids.numel(),
            "targets": input_ids.shape[0] * (input_ids.shape[1] - 1),
            "nll_sum": float(tensors[ROW_NLL].sum()),
        }
        return tensors, stats
