"""Record the query, key and value projections of decoder blocks with forward hooks.

Attention relations (MiniLM) need q, k and v, which no model returns. Forward hooks on the projection
modules record their outputs during the ordinary forward pass, so a model keeps whatever attention
implementation it has (SDPA, flash attention) and nothing has to fall back to eager attention.

Layouts found by module name inside each decoder block:

- separate ``q_proj``, ``k_proj``, ``v_proj`` (Llama, Mistral, Qwen2, ...);
- Phi-3's fused ``qkv_proj``: ``[q | k | v]`` of widths ``[heads, kv_heads, kv_heads] * head_dim``;
- GPT-2's fused ``c_attn`` (a ``Conv1D``): ``[q | k | v]``, each ``hidden_size`` wide.

The outputs are those of the projections: before rotary position embeddings, which are applied
inside attention, and before the per-head query and key norms of models that have them (Qwen3, Gemma 3).
"""

from functools import partial
from typing import Callable, Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers
from distily.objectives.arguments import ATTENTION_RELATION_KINDS as KINDS
from distily.objectives.model_shape import ModelShape

Split = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # projection output -> {kind: [batch, seq, width]}


def _named_module(block: nn.Module, name: str) -> nn.Module | None:
    return next((module for path, module in block.named_modules() if path.rsplit(".", 1)[-1] == name), None)


def qkv_projections(block: nn.Module, shape: ModelShape) -> list[tuple[nn.Module, Split]]:
    """The modules of one decoder block whose outputs hold q, k and v, each with how to split its output."""
    separate = [_named_module(block, name) for name in ("q_proj", "k_proj", "v_proj")]
    if all(module is not None for module in separate):
        return [(module, partial(_as_kind, kind)) for module, kind in zip(separate, KINDS)]
    fused = _named_module(block, "qkv_proj")
    if fused is not None:
        return [(fused, partial(_split, widths=[shape.query_width, shape.kv_width, shape.kv_width]))]
    fused = _named_module(block, "c_attn")
    if fused is not None:
        return [(fused, partial(_split, widths=[shape.width] * 3))]
    raise DistilyConfigError(
        f"{type(block).__name__} has no query/key/value projections distily knows; attention relations expected "
        "q_proj/k_proj/v_proj, a fused qkv_proj (Phi-3) or c_attn (GPT-2)"
    )


def _as_kind(kind: str, output: torch.Tensor) -> dict[str, torch.Tensor]:
    return {kind: output}


def _split(output: torch.Tensor, widths: list[int]) -> dict[str, torch.Tensor]:
    if output.shape[-1] != sum(widths):
        raise ValueError(
            f"a fused q/k/v projection gave width {output.shape[-1]}; expected {sum(widths)} ({widths}) from the config"
        )
    return dict(zip(KINDS, output.split(widths, dim=-1)))


class QKVRecorder:
    """Records q, k and v of chosen decoder blocks (0-based) of one model at every forward pass.

    Each forward pass replaces the previous record, so at most one pass is held; ``take`` hands a block's
    record over once. The student's record keeps its autograd graph, so a loss on it trains the student.
    """

    def __init__(self, model: PreTrainedModel, blocks: Iterable[int]):
        layers, shape = decoder_layers(model), ModelShape.from_config(model.config)
        self._records: dict[int, dict[str, torch.Tensor]] = {}
        self._handles = [
            module.register_forward_hook(partial(self._record, block, split))
            for block in sorted(set(blocks))
            for module, split in qkv_projections(layers[block], shape)
        ]

    def _record(self, block: int, split: Split, module: nn.Module, args, output: torch.Tensor) -> None:
        self._records.setdefault(block, {}).update(split(output))

    def take(self, block: int) -> dict[str, torch.Tensor]:
        """``{kind: [batch, seq, width]}`` recorded for ``block`` at the last forward pass, then forgotten."""
        record = self._records.pop(block, {})
        if set(record) != set(KINDS):
            raise RuntimeError(f"no q/k/v recorded for decoder block {block}: was the model run after attach()?")
        return record

    def remove(self) -> None:
        """Remove the hooks and drop what was recorded."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._records = [], {}
