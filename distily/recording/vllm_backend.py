"""The vLLM recording back end (optional): prompt log-probabilities from a vLLM engine, written in the
same store format as the Hugging Face back end.

vLLM returns, for prompt position j >= 1, the top log-probabilities of token j given the tokens before
it (``prompt_logprobs``), plus the actually present token's; the prediction after the last prompt
token comes from generating one token with ``logprobs``. It caps log-probs per position at
``max_logprobs`` (20 by default), so the engine is built with ``max_logprobs=record_top_k``. Each row is
sent unpadded (its real tokens, by its attention mask) and stored with the masks, target counts and NLL the
Hugging Face back end writes (a chat row's ``loss_mask`` included); packed documents (``position_ids``) are
refused before recording. The engine holds a row and the token sampled after it (``engine_length``), in the
teacher's dtype (auto: the checkpoint's, as the hf back end loads it). It gives no full distribution: the tail mass
is 1 - sum of the top k (computed in float64; a tail below the k log-probabilities' float32 resolution, k * 2^-24,
is read at that resolution), there is no fidelity report, no hidden states, and log-probs are at temperature 1.
"""

import math
from typing import Optional

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel

from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.data.store import ATTENTION_MASK, ROW_NLL, ROW_TARGETS, TAIL_LOGPROB, TOPK_IDS, TOPK_LOGPROBS, id_dtype
from distily.errors import DistilyConfigError
from distily.models.architecture import max_positions, output_vocab_size
from distily.objectives.component import next_token_targets


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
    # k float32 log-probabilities resolve the mass left over only to about k float32 roundings: a tail below that
    # (or a sum past 1) is read at that resolution, not as 0, whose log (-inf) would make the reverse KL and its
    # gradient infinite wherever the student puts any mass outside the top k
    resolution = top_k * 2.0**-24
    return logprobs, [int(token) for token, _ in ranked], math.log(max(mass, resolution))


def row_targets(output, input_ids: list[int], top_k: int, targets: list[bool]) -> tuple[torch.Tensor, ...]:
    """A vLLM ``RequestOutput`` for one unpadded row -> (top-k log-probs [seq, k], ids [seq, k], log tail [seq],
    next-token NLL summed over ``targets`` [seq - 1], the positions whose next token is a target). Position j
    predicts token j + 1: ``prompt_logprobs[j + 1]``, and for the last position the log-probs of the one generated
    token."""
    positions = list(output.prompt_logprobs[1:]) + [output.outputs[0].logprobs[0]]
    recorded = [position_targets(candidates, top_k) for candidates in positions]
    nll = -math.fsum(positions[j][input_ids[j + 1]].logprob for j in range(len(input_ids) - 1) if targets[j])
    return (
        torch.tensor([t[0] for t in recorded], dtype=torch.float32),
        torch.tensor([t[1] for t in recorded], dtype=torch.int64),
        torch.tensor([t[2] for t in recorded], dtype=torch.float32),
        torch.tensor(nll, dtype=torch.float64),
    )


def engine_length(teacher: PreTrainedModel, max_seq_length: int) -> int:
    """The engine's ``max_model_len``: a row of ``max_seq_length`` tokens and the one token sampled after it (whose
    log-probs are the last position's), refused where that passes the teacher's positions (vLLM refuses an engine
    longer than the model's positions)."""
    positions = max_positions(teacher.config)
    if positions is not None and max_seq_length + 1 > positions:
        raise DistilyConfigError(
            f"record_backend=vllm samples one token after each row for its last position's log-probs, and "
            f"max_seq_length={max_seq_length} leaves no position for it among the teacher's {positions}; expected "
            f"max_seq_length <= {positions - 1}, or record_backend=hf"
        )
    return max_seq_length + 1


class VLLMRecorder:
    """Records rows built by ``collate`` with a vLLM engine: ``record(rows) -> (shard tensors, stats)``. ``teacher``
    (its config in the dtype the run gives, no weights needed) gives the engine's vocabulary, positions and dtype: the
    checkpoint's for teacher_torch_dtype auto, which vLLM's own auto would cast from float32 to half precision, where
    the hf back end keeps it."""

    def __init__(
        self,
        name_or_path: str,
        top_k: int,
        temperature: float,
        hidden_states_layers: list[int],
        teacher: PreTrainedModel,
        max_seq_length: int,
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
        self.top_k, self.id_dtype = top_k, id_dtype(output_vocab_size(teacher))
        self.engine = LLM(
            model=name_or_path,
            dtype=str(teacher.dtype).removeprefix("torch."),
            max_logprobs=top_k,
            max_model_len=engine_length(teacher, max_seq_length),
            trust_remote_code=trust_remote_code,
            enable_prefix_caching=False,
        )
        self.params = SamplingParams(max_tokens=1, logprobs=top_k, prompt_logprobs=top_k, detokenize=False)

    def record(self, batch: dict, held_out: bool, progress: Optional[object] = None) -> tuple[dict, dict]:
        """As ``HFRecorder.record`` for rows without document masks (``collate``d, right-padded): each row goes to the
        engine as its real tokens only, and its outputs are padded back to the shard's length (zeros, which the
        store's readers drop by ``attention_mask``)."""
        attention_mask = batch["attention_mask"]  # [rows, seq]
        rows = [ids[:length] for ids, length in zip(batch[INPUT_IDS].tolist(), attention_mask.sum(-1).tolist())]
        targets = next_token_targets(batch)  # [rows, seq - 1]: the hf back end's targets (chat: the loss mask's)
        outputs = self.engine.generate([{"prompt_token_ids": row} for row in rows], self.params, use_tqdm=False)
        recorded = [
            row_targets(output, row, self.top_k, targets[index, : len(row) - 1].tolist())
            for index, (output, row) in enumerate(zip(outputs, rows))
        ]
        if progress is not None:
            progress.update(len(rows))

        def padded(field: int) -> torch.Tensor:  # [rows, seq, ...]
            return pad_sequence([values[field] for values in recorded], batch_first=True)

        tensors = {
            INPUT_IDS: batch[INPUT_IDS].to(torch.int32),
            ATTENTION_MASK: attention_mask.to(torch.int8),
            TOPK_LOGPROBS: padded(0).half(),  # [rows, seq, k]
            TOPK_IDS: padded(1).to(self.id_dtype),  # [rows, seq, k]
            TAIL_LOGPROB: padded(2),  # [rows, seq]
            ROW_NLL: torch.stack([values[3] for values in recorded]),  # [rows]
            ROW_TARGETS: targets.sum(-1).to(torch.int32),  # [rows]
        }
        if LOSS_MASK in batch:
            tensors[LOSS_MASK] = batch[LOSS_MASK].to(torch.int8)
        stats = {
            "positions": int(attention_mask.sum()),
            "targets": int(targets.sum()),
            "nll_sum": float(tensors[ROW_NLL].sum()),
        }
        return tensors, stats
