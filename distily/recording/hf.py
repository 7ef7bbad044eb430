"""The Hugging Face recording back end: batched teacher forward passes, no gradients, any device."""

import math
from typing import Optional

import torch
from transformers import PreTrainedModel

from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS, model_inputs
from distily.data.store import (
    ATTENTION_MASK,
    ROW_NLL,
    ROW_TARGETS,
    TAIL_LOGPROB,
    TOPK_IDS,
    TOPK_LOGPROBS,
    hidden_states_key,
    id_dtype,
)
from distily.objectives.component import loss_positions, next_token_targets
from distily.errors import DistilyConfigError
from distily.evaluation.perplexity import next_token_nll
from distily.models.architecture import active_stream, block_output, output_vocab_size
from distily.models.finite import nan_or_positive_inf, nonfinite_message
from distily.recording.targets import check_top_k, fidelity_sums, sparse_targets


def hidden_states_dtype(teacher: PreTrainedModel) -> torch.dtype:
    """Recorded hidden states are half precision: bfloat16 for a bfloat16 teacher, else float16."""
    return torch.bfloat16 if teacher.dtype == torch.bfloat16 else torch.float16


def check_finite_logits(logits: torch.Tensor, row: int, teacher_dtype: torch.dtype) -> None:
    """Refuse a row whose teacher ``logits`` [seq, vocab] hold NaN or +inf (an overflowing teacher), before its shard
    is written: its stored top-k and loss would be NaN, and a run from the store would skip every step."""
    if nan_or_positive_inf(logits):
        raise DistilyConfigError(nonfinite_message(f"the teacher's logits of row {row}", teacher_dtype))


def check_storable(hidden: torch.Tensor, dtype: torch.dtype, layer: int, teacher_dtype: torch.dtype) -> None:
    """Refuse hidden states that ``dtype`` cannot hold: a float32 teacher's activations past float16's 65504 would be
    stored as inf, and a run trained from the store would skip every step on a NaN loss; or that hold NaN."""
    largest = hidden.detach().abs().max().item()  # NaN when any is
    if math.isnan(largest):
        raise DistilyConfigError(nonfinite_message(f"the teacher's hidden states of layer {layer}", teacher_dtype))
    if largest > torch.finfo(dtype).max:
        raise DistilyConfigError(
            f"hidden states of layer {layer} reach {largest:.4g}, beyond {str(dtype).removeprefix('torch.')}'s "
            f"{torch.finfo(dtype).max:.4g}, in which they are recorded; expected teacher_torch_dtype=bfloat16 (its "
            "hidden states are recorded in bfloat16, whose range is float32's), or a store without these layers"
        )


class HFRecorder:
    """Records a batch of rows built by ``collate``: ``record(rows) -> (shard tensors, stats)``.

    Logits are turned into sparse targets one sequence at a time, so the float32 working set is one
    ``[seq, vocab]`` tensor whatever the batch size."""

    def __init__(
        self,
        teacher: PreTrainedModel,
        top_k: int,
        temperature: float,
        hidden_states_layers: list[int],
        batch_size: int,
        fidelity_ks: list[int],
    ):
        depth = teacher.config.num_hidden_layers
        for layer in hidden_states_layers:
            if layer > depth:
                raise DistilyConfigError(
                    f"record_hidden_states_layers index {layer} is out of range; expected 0..{depth} (0: embeddings)"
                )
        vocab = output_vocab_size(teacher)
        check_top_k(top_k, vocab)
        self.teacher, self.top_k, self.temperature = teacher, top_k, temperature
        self.layers, self.batch_size, self.fidelity_ks = list(hidden_states_layers), batch_size, list(fidelity_ks)
        self.id_dtype, self.hidden_dtype = id_dtype(vocab), hidden_states_dtype(teacher)

    @torch.inference_mode()
    def record(
        self, rows: dict[str, torch.Tensor], held_out: bool, progress: Optional[object] = None
    ) -> tuple[dict, dict]:
        """Shard tensors for ``rows`` (``input_ids`` [rows, seq], its masks and positions) and the sums the
        manifest reports (the teacher's NLL; on held-out rows also the fidelity sums, over the positions the losses
        read: ``loss_positions``, for chat data with ``loss_on: assistant`` the assistant's)."""
        device = self.teacher.device
        per_row: dict[str, list[torch.Tensor]] = {}  # one entry per sequence, stacked at the end
        per_batch: dict[str, list[torch.Tensor]] = {}  # one [batch, ...] entry per batch, concatenated
        targets = next_token_targets(rows)  # [rows, seq - 1]
        read = loss_positions(rows)  # [rows, seq]
        stats: dict = {"positions": int(rows["attention_mask"].sum()), "targets": int(targets.sum())}
        fidelity: dict = {}
        for start in range(0, rows[INPUT_IDS].shape[0], self.batch_size):
            batch = {key: value[start : start + self.batch_size].to(device) for key, value in rows.items()}
            outputs = self.teacher(**model_inputs(batch), output_hidden_states=bool(self.layers))
            for row in range(batch[INPUT_IDS].shape[0]):
                logits = outputs.logits[row]  # [seq, vocab]
                check_finite_logits(logits, start + row, self.teacher.dtype)
                top_logprobs, top_ids, tail = sparse_targets(logits, self.top_k, self.temperature)
                per_row.setdefault(TOPK_LOGPROBS, []).append(top_logprobs.half().cpu())  # [seq, k]
                per_row.setdefault(TOPK_IDS, []).append(top_ids.cpu().to(self.id_dtype))  # [seq, k]
                per_row.setdefault(TAIL_LOGPROB, []).append(tail.cpu())  # [seq]
                row_targets = targets[start + row].to(device)  # [seq - 1]
                nll = next_token_nll(logits[:-1][row_targets], batch[INPUT_IDS][row, 1:][row_targets])
                per_row.setdefault(ROW_NLL, []).append(nll.cpu())  # []
                per_row.setdefault(ROW_TARGETS, []).append(row_targets.sum().to(torch.int32).cpu())  # []
                if held_out:
                    row_read = read[start + row].to(device)  # [seq]
                    for k, sums in fidelity_sums(logits[row_read], self.fidelity_ks, self.temperature).items():
                        fidelity[k] = {name: fidelity.get(k, {}).get(name, 0.0) + value for name, value in sums.items()}
            for layer in self.layers:
                hidden = block_output(outputs.hidden_states[layer], active_stream(self.teacher.config))  # [b, s, w]
                check_storable(hidden, self.hidden_dtype, layer, self.teacher.dtype)
                per_batch.setdefault(hidden_states_key(layer), []).append(hidden.to(self.hidden_dtype).cpu())
            if progress is not None:
                progress.update(batch[INPUT_IDS].shape[0])
        tensors = {INPUT_IDS: rows[INPUT_IDS].to(torch.int32), ATTENTION_MASK: rows["attention_mask"].to(torch.int8)}
        if POSITION_IDS in rows:
            tensors[POSITION_IDS] = rows[POSITION_IDS].to(torch.int32)
        if LOSS_MASK in rows:
            tensors[LOSS_MASK] = rows[LOSS_MASK].to(torch.int8)
        tensors.update({key: torch.stack(values) for key, values in per_row.items()})
        tensors.update({key: torch.cat(values) for key, values in per_batch.items()})
        stats["nll_sum"] = float(tensors[ROW_NLL].sum())
        if held_out:
            stats["fidelity"], stats["loss_positions"] = fidelity, int(read.sum())
        return tensors, stats
