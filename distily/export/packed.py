"""Packed ternary checkpoints: 2-bit weights plus one fp32 scale per projection.

Layout (transformers' BitNet integration, `quant_method: bitnet`, `linear_class: autobitlinear`,
`quantization_mode: offline`): a projection with weight [out, in] stores
    `weight`        uint8 [out / 4, in]; row r holds rows r, r + out/4, r + 2 out/4, r + 3 out/4 of
                    the ternary matrix as 2-bit codes (value + 1) at bit offsets 0, 2, 4, 6
    `weight_scale`  fp32 [1], the absmean scale s
    `bias`          bias / s, because transformers' AutoBitLinear multiplies (x W_t^T + bias) by s
    `rms_norm.weight`  when the layer has an input RMSNorm
Every other tensor is stored as trained. Transformers loads such a checkpoint when every ternary layer is an
nn.Linear and the norms are all-or-nothing (`use_rms_norm`), and a SubLN Llama written as its BitNetForCausalLM
(bitnet_architecture); GPT-2's Conv1D layers and other SubLN students are written without `quantization_config` and
load with `load_packed_student`, so a plain transformers load fails on the weight shapes instead of computing
something else.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from distily.errors import DistilyConfigError
from distily.export.bitnet_architecture import (
    bitnet_config,
    bitnet_tensor_name,
    is_bitnet_architecture,
    norms_in_architecture,
)
from distily.export.report import REPORT_FILE, ExportReport
from distily.outputs import PreviousOutput, atomic_output
from distily.models.bitnet import (
    BITNET_CONFIG_KEY,
    BitLinear,
    BitNetOptions,
    SUBLAYER_OUTPUT_NAMES,
    bias_over_scale,
    bitlinear_modules,
    bitnet_format,
    block_projections,
    fake_quantize_activations,
    load_state_from_dir,
    transformers_quantization_config,
)

VALUES_PER_BYTE = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")
PACKED_FILES = frozenset({"model.safetensors", "config.json", REPORT_FILE, *TOKENIZER_FILES})
# Largest |packed logits - fake-quantised logits| / max |fake-quantised logits| accepted on export.
# Both compute the same float operations (exact in fp32); the margin covers other dtypes and kernels.
LOGITS_TOLERANCE = 1e-5


def pack_ternary(ternary: torch.Tensor) -> torch.Tensor:
    """ternary int8 [out, in] in {-1, 0, 1} -> uint8 [out / 4, in] (transformers' bit layout)."""
    out_features, in_features = ternary.shape
    if out_features % VALUES_PER_BYTE:
        raise DistilyConfigError(f"cannot pack a ternary weight with {out_features} rows; expected a multiple of 4")
    codes = (ternary + 1).to(torch.uint8).reshape(VALUES_PER_BYTE, out_features // VALUES_PER_BYTE, in_features)
    packed = torch.zeros_like(codes[0])  # [out / 4, in]
    for slot in range(VALUES_PER_BYTE):
        packed |= codes[slot] << (2 * slot)
    return packed


def unpack_ternary(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out / 4, in] -> ternary int8 [out, in]; the inverse of pack_ternary."""
    shifts = torch.arange(0, 2 * VALUES_PER_BYTE, 2, dtype=torch.uint8, device=packed.device).view(-1, 1, 1)
    codes = (packed.unsqueeze(0) >> shifts) & 3  # [4, out / 4, in]
    return codes.reshape(-1, packed.shape[1]).to(torch.int8) - 1


class PackedBitLinear(nn.Module):
    """Inference layer over a packed ternary weight; computes what transformers' offline AutoBitLinear does:
    y = (act_quant(norm(x)) @ W_t^T + bias_stored) * s."""

    def __init__(self, in_features: int, out_features: int, bias: bool, norm_eps: float | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features // VALUES_PER_BYTE, in_features, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(1, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self.rms_norm = None if norm_eps is None else nn.RMSNorm(in_features, eps=norm_eps, dtype=dtype)

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> PackedBitLinear:
        eps = None if layer.rms_norm is None else layer.rms_norm.eps
        packed = cls(layer.in_features, layer.out_features, layer.bias is not None, eps, layer.weight.dtype)
        ternary, scale = layer.ternary_weight()
        packed.weight.copy_(pack_ternary(ternary))
        packed.weight_scale.copy_(scale.reshape(1))
        if layer.bias is not None:
            packed.bias.copy_(bias_over_scale(layer.bias, scale))
        if layer.rms_norm is not None:
            packed.rms_norm.load_state_dict(layer.rms_norm.state_dict())
        return packed

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # inputs: [..., in] -> [..., out]
        if self.rms_norm is not None:
            inputs = self.rms_norm(inputs)
        inputs = fake_quantize_activations(inputs)
        ternary = unpack_ternary(self.weight).to(inputs.dtype)  # [out, in]
        return F.linear(inputs, ternary, self.bias) * self.weight_scale.to(inputs.dtype)


def to_packed(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of a converted (fake-quantised) student with every BitLinear replaced by a PackedBitLinear."""
    layers = bitlinear_modules(model)
    if not layers:
        raise DistilyConfigError(
            f"{type(model).__name__} has no BitLinear layers; expected a convert_to_bitnet student"
        )
    packed = copy.deepcopy(model)
    for name, layer in layers:
        packed.set_submodule(name, PackedBitLinear.from_bitlinear(layer))
    return packed


def packed_quantization_config(model: PreTrainedModel) -> dict | None:
    """The `quantization_config` transformers needs to load a packed export of `model`, or None when it cannot rebuild
    these layers: the latent student's own (convert_to_bitnet writes it where transformers rebuilds its layers) in
    offline mode, or a SubLN Llama's, written as BitNetForCausalLM."""
    if is_bitnet_architecture(model.config):
        return transformers_quantization_config(model, "offline")
    latent = getattr(model.config, "quantization_config", None)
    return None if latent is None else {**latent, "quantization_mode": "offline"}


def why_not_packed_export(path: Path) -> str | None:
    """Why the non-empty directory `path` is not a packed export written by write_packed_checkpoint; None if it is."""
    written = PACKED_FILES | set(tokenizer_code_files(path))
    unexpected = sorted(entry.name for entry in path.iterdir() if entry.name not in written or not entry.is_file())
    if unexpected:
        return (
            f"it holds '{unexpected[0]}'{f' and {len(unexpected) - 1} more' if len(unexpected) > 1 else ''}, "
            "which a packed export does not write"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "it has no readable config.json"
    if not isinstance(config, dict) or (config.get(BITNET_CONFIG_KEY) or {}).get("format") != "packed":
        return f"its config.json lacks {BITNET_CONFIG_KEY}.format='packed'"
    return None


PACKED_EXPORT = PreviousOutput("packed export", why_not_packed_export)


def tokenizer_code_files(directory: Path) -> list[str]:
    """The files of a tokenizer's custom code in `directory`: the modules its tokenizer_config.json's auto_map names
    (e.g. "tokenization_custom.CustomTokenizerFast" -> tokenization_custom.py; "repo--module.Class" from any repo)."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    auto_map = (config.get("auto_map") if isinstance(config, dict) else None) or {}
    classes = auto_map.get("AutoTokenizer") or []
    classes = [classes] if isinstance(classes, str) else classes
    return sorted({name.split("--")[-1].rsplit(".", 1)[0] + ".py" for name in classes if name})


def write_packed_checkpoint(model: PreTrainedModel, output_dir: str | Path, tokenizer_dir: str | Path | None = None,
                            verify_input_ids: torch.Tensor | None = None, *, overwrite: bool = False,
                            protected: Mapping[Path, str] | None = None) -> Path:
    """Write `model` (a converted student) as a packed checkpoint directory; returns its path.

    Tokenizer files found in `tokenizer_dir` are copied alongside, with the custom code its config names
    (tokenizer_code_files). With `verify_input_ids` [batch, seq] the written checkpoint is checked by
    verify_packed before it is moved into place; REPORT_FILE records the checks that ran and those that did
    not. The directory appears atomically: it is written beside `output_dir` and renamed into place. An
    existing `output_dir` is refused unless `overwrite` and it is a previous packed export
    (distily.outputs.check_output; `protected` paths are never replaced).
    """
    packed = to_packed(model)
    state = _untied_state_dict(packed)
    config = copy.deepcopy(model.config)
    if is_bitnet_architecture(config):
        config, state = bitnet_config(config), {bitnet_tensor_name(name): tensor for name, tensor in state.items()}
    quantization_config = packed_quantization_config(model)
    if quantization_config is not None:
        config.quantization_config = quantization_config
    getattr(config, BITNET_CONFIG_KEY)["format"] = "packed"
    report = ExportReport("packed")
    output = Path(output_dir)
    with atomic_output(
        output, directory=True, overwrite=overwrite, previous=PACKED_EXPORT, protected=protected
    ) as staging:
        staging.mkdir()
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(staging)
        if tokenizer_dir is not None:
            tokenizer_dir = Path(tokenizer_dir)
            for name in (*TOKENIZER_FILES, *tokenizer_code_files(tokenizer_dir)):
                if (tokenizer_dir / name).is_file():
                    shutil.copy2(tokenizer_dir / name, staging / name)
        if verify_input_ids is not None:
            error = verify_packed(model, staging, verify_input_ids)
            report.verified += ["packed linear weights at most 1/7 of fp16",
                                f"reloaded logits within {LOGITS_TOLERANCE:g} of the student's (measured {error:.1e})"]
        else:
            report.not_verified.append("not verified against the student's logits: no verify_input_ids given")
        (staging / REPORT_FILE).write_text(report.to_json(), encoding="utf-8")
    return output


def load_packed_student(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Rebuild a packed checkpoint written by write_packed_checkpoint as a model of PackedBitLinear layers."""
    config = AutoConfig.from_pretrained(path)
    options = BitNetOptions.from_config(config)
    if bitnet_format(config) != "packed":
        raise DistilyConfigError(
            f"{path} is not a packed checkpoint; expected config.{BITNET_CONFIG_KEY}.format='packed'"
        )
    config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, module in block_projections(model):
        out_features, in_features = module.weight.shape if isinstance(module, nn.Linear) else module.weight.shape[::-1]
        with_norm = options.input_norm or (options.subln and name.rsplit(".", 1)[-1] in SUBLAYER_OUTPUT_NAMES)
        norm_eps = options.rms_norm_eps if with_norm and not norms_in_architecture(config) else None
        model.set_submodule(name, PackedBitLinear(in_features, out_features, module.bias is not None, norm_eps, dtype))
    load_state_from_dir(model, Path(path))
    return model.eval()


def linear_weight_bytes(path: str | Path) -> tuple[int, int]:
    """(bytes of the packed ternary weights + scales, bytes the same weights take in fp16) in a checkpoint."""
    packed_bytes = fp16_bytes = 0
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as tensors:
        for key in tensors.keys():
            if key.endswith(".weight_scale"):
                packed_bytes += tensors.get_slice(key).get_shape()[0] * 4
            elif tensors.get_slice(key).get_dtype() == "U8":
                rows, columns = tensors.get_slice(key).get_shape()
                packed_bytes += rows * columns
                fp16_bytes += rows * VALUES_PER_BYTE * columns * 2
    return packed_bytes, fp16_bytes


def verify_packed(model: PreTrainedModel, path: str | Path, input_ids: torch.Tensor) -> float:
    """Reload the packed checkpoint and compare its logits with the fake-quantised model's on input_ids [batch, seq].

    Returns max |Δlogits| / max |logits|; raises DistilyConfigError above LOGITS_TOLERANCE or when the
    packed linear weights exceed 1/7 of their fp16 size.
    """
    packed_bytes, fp16_bytes = linear_weight_bytes(path)
    if packed_bytes * 7 > fp16_bytes:
        raise DistilyConfigError(
            f"packed linear weights take {packed_bytes} bytes; expected at most {fp16_bytes / 7:.0f}"
        )
    parameter = next(model.parameters())
    reloaded = load_packed_student(path, dtype=parameter.dtype).to(parameter.device)
    input_ids = input_ids.to(parameter.device)
    was_training = model.training
    model.eval()  # no dropout in the comparison
    with torch.no_grad():
        reference = model(input_ids).logits.float()  # [batch, seq, vocab]
        logits = reloaded(input_ids).logits.float()
    model.train(was_training)
    error = ((logits - reference).abs().max() / reference.abs().max().clamp(min=1e-12)).item()
    if error > LOGITS_TOLERANCE:
        raise DistilyConfigError(
            f"packed logits differ from the fake-quantised ones by {error:.2e}; expected <= {LOGITS_TOLERANCE}"
        )
    return error


def _untied_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept once (under its first name), contiguous, on CPU."""
    seen, tensors = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors
