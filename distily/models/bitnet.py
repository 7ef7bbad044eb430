"""BitNet b1.58 students: ternary linear layers trained with fake quantisation.

Method (Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits", and its
"Training Tips, Code and FAQ" note): every linear projection inside the decoder blocks becomes a
BitLinear layer whose forward pass uses

    weights      W_t = clamp(round(W / s_w), -1, 1),  s_w = mean(|W|)             (absmean, per tensor)
    activations  X_q = clamp(round(X * 127 / a), -128, 127),  a = max_j |X_ij|    (absmax, per token)
    output       Y   = (X_q * a / 127) @ (W_t * s_w)^T + b     (computed as ((X_q a/127) W_t^T + b/s_w) s_w)

with a straight-through estimator: the backward pass treats both quantisers as the identity, so the
full-precision latent weights W receive the gradient. Scales are computed in fp32. Embeddings, the LM
head and the norms stay in full precision.

The arithmetic follows transformers' `AutoBitLinear` (transformers/integrations/bitnet.py): the
quantisers of its online mode and the output order of its offline mode, so a packed export loaded
by transformers computes what training computed. Options:
`input_norm` puts an RMSNorm at the input of every ternary layer (the original BitLinear), stored
under the same `rms_norm` name transformers uses; `subln` puts one only before each sub-layer's
output projection (attention output, MLP down projection), the SubLN placement of BitNet b1.58.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from distily.errors import DistilyConfigError
from distily.models.architecture import named_decoder_layers

logger = logging.getLogger(__name__)

# The key under which a converted model's options are stored in its (saved) config.
BITNET_CONFIG_KEY = "distily_bitnet"
# Scales below this are clamped, as in transformers' BitNet quantisers.
SCALE_EPS = 1e-5
ACTIVATION_MAX = 127
# Leaf names of the projection that closes a sub-layer (attention output / MLP down projection)
# in the architectures transformers ships; SubLN inserts its norm in front of these.
SUBLAYER_OUTPUT_NAMES = frozenset(
    {"o_proj", "out_proj", "c_proj", "down_proj", "dense", "fc2", "wo", "w2", "dense_4h_to_h"}
)


@dataclass(frozen=True)
class BitNetOptions:
    """How a model was converted; stored in `config.distily_bitnet` so it can be rebuilt."""

    input_norm: bool = False
    subln: bool = False
    rms_norm_eps: float = 1e-6

    @classmethod
    def from_config(cls, config) -> BitNetOptions:
        stored = getattr(config, BITNET_CONFIG_KEY, None)
        if not isinstance(stored, dict):
            raise DistilyConfigError(
                f"config has no '{BITNET_CONFIG_KEY}' entry; expected a BitNet student "
                "(trained with student_as_bitnet=true)"
            )
        return cls(**{key: stored[key] for key in ("input_norm", "subln", "rms_norm_eps") if key in stored})


def is_bitnet(config) -> bool:
    """Whether a model's config says it is a converted (BitNet) student."""
    return getattr(config, BITNET_CONFIG_KEY, None) is not None


def bitnet_format(config) -> str:
    """How a BitNet student's checkpoint holds its ternary layers: ``latent`` (a trained student's full-precision
    latent weights) or ``packed`` (an export's 2-bit weights and scales)."""
    return getattr(config, BITNET_CONFIG_KEY).get("format", "latent")


def ternarize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean quantisation of a weight matrix.

    weight: [out, in] in any float dtype.
    Returns (ternary int8 [out, in] in {-1, 0, 1}, scale fp32 [] = mean |weight| clamped to SCALE_EPS).
    """
    latent = weight.detach().float()
    scale = latent.abs().mean().clamp(min=SCALE_EPS)  # []
    ternary = (latent * (1.0 / scale)).round().clamp(-1, 1).to(torch.int8)  # [out, in]
    return ternary, scale


def dequantize_ternary(ternary: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ternary [out, in] int8, scale fp32 [] or [1] -> weight [out, in] in `dtype`, product in fp32."""
    return (ternary.float() * scale.float().reshape(())).to(dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype products and reductions run in: fp32, or the model's own dtype where it is wider (float64)."""
    return torch.promote_types(dtype, torch.float32)


def bias_over_scale(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bias [out] / scale [] (the bias the ternary matmul adds before the scale multiplies both), in the bias's dtype,
    divided in fp32 or wider."""
    return (bias.detach().to(_compute_dtype(bias.dtype)) / scale).to(bias.dtype)


def fake_quantize_activations(activations: torch.Tensor) -> torch.Tensor:
    """Absmax int8 quantisation per token, returned dequantised in the input dtype.

    activations: [..., features]; each row is scaled by 127 / max |row| (fp32), rounded, clamped.
    """
    values = activations.float()
    inv_scale = ACTIVATION_MAX / values.abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_EPS)  # [..., 1]
    quantised = (values * inv_scale).round().clamp(-ACTIVATION_MAX - 1, ACTIVATION_MAX) / inv_scale
    return quantised.to(activations.dtype)


class _TernaryLinear(torch.autograd.Function):
    """y = (X_q W_t^T + b / s_w) * s_w with a straight-through backward.

    The forward is the arithmetic of transformers' offline AutoBitLinear (which multiplies the bias
    by the weight scale too), so a packed export reproduces training-time logits bit for bit. The
    backward treats both quantisers as the identity: dL/dX = dL/dY W_q and dL/dW = dL/dY^T X_q with
    W_q = W_t * s_w.
    """

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # inputs [..., in], weight (latent) [out, in], bias [out] -> [..., out]
        ternary, scale = ternarize(weight)
        quantised_inputs = fake_quantize_activations(inputs)
        scaled_bias = None if bias is None else bias_over_scale(bias, scale).to(inputs.dtype)
        ctx.save_for_backward(quantised_inputs, ternary, scale)
        ctx.dtypes = (inputs.dtype, weight.dtype, None if bias is None else bias.dtype)
        output = F.linear(quantised_inputs, ternary.to(inputs.dtype), scaled_bias)
        return output * scale.to(inputs.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # products in fp32 (fp64 for a float64 model), cast back to each input's dtype
        quantised_inputs, ternary, scale = ctx.saved_tensors
        input_dtype, weight_dtype, bias_dtype = ctx.dtypes
        compute = _compute_dtype(input_dtype)
        grad_rows = grad_output.to(compute).reshape(-1, grad_output.shape[-1])  # [tokens, out]
        input_rows = quantised_inputs.to(compute).reshape(-1, quantised_inputs.shape[-1])  # [tokens, in]
        grad_inputs = (grad_rows @ dequantize_ternary(ternary, scale, compute)).to(input_dtype)
        grad_weight = (grad_rows.t() @ input_rows).to(weight_dtype)  # [out, in]
        grad_bias = None if bias_dtype is None else grad_rows.sum(0).to(bias_dtype)
        return grad_inputs.reshape(quantised_inputs.shape), grad_weight, grad_bias


class BitLinear(nn.Linear):
    """A linear layer with ternary weights and int8 activations in the forward pass (fake quantised).

    `weight` [out, in] holds the full-precision latent weights the optimiser updates.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, norm_eps: float | None = None,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        # RMSNorm over the input features, present when norm_eps is given (input_norm / SubLN).
        self.rms_norm = (
            None if norm_eps is None else nn.RMSNorm(in_features, eps=norm_eps, device=device, dtype=dtype)
        )

    @classmethod
    def from_module(cls, module: nn.Module, *, norm_eps: float | None = None) -> BitLinear:
        """Build from an nn.Linear (weight [out, in]) or a GPT-2 Conv1D (weight [in, out]), copying weights."""
        if isinstance(module, Conv1D):
            weight = module.weight.detach().t()  # [in, out] -> [out, in]
        else:
            weight = module.weight.detach()
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias=module.bias is not None, norm_eps=norm_eps,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if module.bias is not None:
                layer.bias.copy_(module.bias.detach())
        return layer

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ternary int8 [out, in], scale fp32 []) that the forward pass uses."""
        return ternarize(self.weight)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # inputs: [..., in] -> [..., out]
        if self.rms_norm is not None:
            inputs = self.rms_norm(inputs)
        return _TernaryLinear.apply(inputs, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rms_norm={self.rms_norm is not None}"


def block_projections(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every nn.Linear (BitLinear included) / Conv1D inside the decoder blocks."""
    prefix, blocks = named_decoder_layers(model)
    return [(f"{prefix}.{name}", module) for name, module in blocks.named_modules()
            if isinstance(module, (nn.Linear, Conv1D))]


def unconverted_matrices(model: nn.Module) -> list[str]:
    """The weights of two or more dimensions inside the decoder blocks that no projection holds (what BitNet
    conversion would leave full precision): transformers 5 keeps a mixture of experts' weights as 3-D tensors of
    an experts module and its router's as a parameter of its own module. Convolutions (a Mamba mixer's depthwise
    ``nn.Conv1d``) and embeddings are not projections and stay as they are."""
    prefix, blocks = named_decoder_layers(model)
    kept = (nn.Linear, Conv1D, nn.Conv1d, nn.Embedding)
    return [f"{prefix}.{name}.{parameter_name}" if name else f"{prefix}.{parameter_name}"
            for name, module in blocks.named_modules() if not isinstance(module, kept)
            for parameter_name, parameter in module.named_parameters(recurse=False) if parameter.dim() >= 2]


def convert_to_bitnet(model: nn.Module, *, input_norm: bool = False, subln: bool = False,
                      rms_norm_eps: float | None = None) -> nn.Module:
    """Replace every linear projection inside the decoder blocks by a BitLinear, in place.

    Latent weights start from the module's current weights (GPT-2 Conv1D weights are transposed to
    the [out, in] layout). Embeddings, LM head and norms are left alone. `rms_norm_eps` defaults to
    the model config's `rms_norm_eps` / `layer_norm_epsilon` / 1e-6. Records the options in
    `model.config.distily_bitnet`, and transformers' BitNet `quantization_config` where transformers can rebuild the
    ternary layers (no SubLN, nn.Linear projections), so that a saved student loads in plain transformers as the
    ternary model; returns the model.
    """
    if is_bitnet(model.config):
        raise DistilyConfigError(f"model config already has '{BITNET_CONFIG_KEY}'; expected an unconverted model")
    options = BitNetOptions(input_norm=input_norm, subln=subln, rms_norm_eps=_norm_eps(model.config, rms_norm_eps))
    projections = block_projections(model)
    if not projections:
        raise DistilyConfigError(f"no linear projections inside the decoder blocks of {type(model).__name__}")
    unconverted = unconverted_matrices(model)
    if unconverted:
        raise DistilyConfigError(
            f"student_as_bitnet converts nn.Linear projections, and {type(model).__name__}'s decoder blocks hold "
            f"{len(unconverted)} weight matrices outside them ({', '.join(unconverted[:3])}"
            f"{', ...' if len(unconverted) > 3 else ''}: fused mixture-of-experts weights or a custom router), which "
            "would stay full precision in a model called ternary; expected a dense student"
        )
    if subln and not any(name.rsplit(".", 1)[-1] in SUBLAYER_OUTPUT_NAMES for name, _ in projections):
        raise DistilyConfigError(
            f"subln=True but no projection named one of {sorted(SUBLAYER_OUTPUT_NAMES)} in {type(model).__name__}"
        )
    for name, module in projections:
        with_norm = input_norm or (subln and name.rsplit(".", 1)[-1] in SUBLAYER_OUTPUT_NAMES)
        model.set_submodule(name, BitLinear.from_module(module, norm_eps=options.rms_norm_eps if with_norm else None))
    setattr(model.config, BITNET_CONFIG_KEY, asdict(options))
    if not subln and all(type(module) is nn.Linear for _, module in projections):
        # transformers' from_pretrained then loads the saved latent weights as this ternary model (online
        # AutoBitLinear), not as a full-precision one; it has no SubLN placement and converts nn.Linear alone
        model.config.quantization_config = transformers_quantization_config(model, "online")
    return model


def transformers_quantization_config(model: nn.Module, mode: str) -> dict:
    """The `quantization_config` under which transformers' from_pretrained rebuilds a converted model's BitLinear
    layers as its AutoBitLinear: mode `online` over latent weights (a trained student), `offline` over packed ones
    (an export). Every other nn.Linear (usually `lm_head`) is named in `modules_to_not_convert`, because
    transformers would otherwise convert all of them."""
    options = BitNetOptions.from_config(model.config)
    converted = {name for name, _ in bitlinear_modules(model)}
    return {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": mode,
        "use_rms_norm": options.input_norm,
        "rms_norm_eps": options.rms_norm_eps,
        "modules_to_not_convert": sorted(
            name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in converted
        ),
    }


def bitlinear_modules(model: nn.Module) -> list[tuple[str, BitLinear]]:
    """(qualified name, layer) of every BitLinear in a converted model, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BitLinear)]


GGUF_TERNARY_BLOCK = 256  # values per block of llama.cpp's TQ1_0 and TQ2_0: a ternary row's length is a multiple


def warn_unless_gguf_packable(model: nn.Module) -> None:
    """Say as the run starts, not at its export, that GGUF's ternary types cannot pack this student: rows of its
    BitLinear layers whose length is no multiple of their block (the packed export takes any width)."""
    widths = sorted({layer.in_features for _, layer in bitlinear_modules(model)
                     if layer.in_features % GGUF_TERNARY_BLOCK})
    if widths:
        logger.warning(f"ternary layers with rows of {', '.join(map(str, widths))} values, not a multiple of "
                       f"{GGUF_TERNARY_BLOCK}: `distily export --format gguf` will refuse this student (--format "
                       f"packed takes it); widths of multiples of {GGUF_TERNARY_BLOCK} export to both")


def _norm_eps(config, override: float | None) -> float:
    if override is not None:
        return float(override)
    for key in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"):
        if isinstance(getattr(config, key, None), float):
            return getattr(config, key)
    return 1e-6


def load_state_from_dir(model: nn.Module, path: Path) -> None:
    """Load every *.safetensors file in `path` into `model`; a missing key is allowed only if it is tied.

    Raises DistilyConfigError on unexpected keys or on missing tensors that share no storage with a
    loaded one.
    """
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DistilyConfigError(f"no *.safetensors files in {path}; expected a saved checkpoint")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    tensors = dict(model.state_dict(keep_vars=True))
    loaded_storage = {tensors[name].data_ptr() for name in state if name in tensors}
    untied_missing = [name for name in result.missing_keys if tensors[name].data_ptr() not in loaded_storage]
    if result.unexpected_keys or untied_missing:
        raise DistilyConfigError(
            f"checkpoint {path} does not match {type(model).__name__}: unexpected {result.unexpected_keys[:3]}, "
            f"missing {untied_missing[:3]}; expected the tensors of the saved student"
        )


def load_bitnet_student(path: str | Path, dtype: torch.dtype = torch.float32,
                        trust_remote_code: bool = False) -> PreTrainedModel:
    """Rebuild a saved converted student (fake-quantised BitLinear layers, latent weights) from `path`.

    The checkpoint's config must carry `distily_bitnet` (written by convert_to_bitnet); the model is
    built from the config (an architecture of the checkpoint's own code with `trust_remote_code`), converted
    with the stored options, then loaded.
    """
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    options = BitNetOptions.from_config(config)
    if bitnet_format(config) != "latent":
        raise DistilyConfigError(f"{path} holds a {bitnet_format(config)} export; expected a trained student")
    delattr(config, BITNET_CONFIG_KEY)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    convert_to_bitnet(model, **asdict(options))
    load_state_from_dir(model, Path(path))
    return model.eval()
