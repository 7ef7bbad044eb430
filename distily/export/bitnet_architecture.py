"""transformers' BitNet b1.58 architecture for packed exports: model_type "bitnet", BitNetForCausalLM (the layout of
microsoft/bitnet-b1.58-2B-4T). It is Llama with an RMSNorm before each sub-layer's output projection (`attn_sub_norm`
before `o_proj`, `ffn_sub_norm` before `down_proj`), so a SubLN Llama student is that model: its sub-norms, held by
the projections after them (`rms_norm`), move to those modules, and plain transformers loads the export.
"""

from transformers import BitNetConfig, PretrainedConfig

from distily.models.bitnet import BitNetOptions

BITNET_MODEL_TYPE = "bitnet"
# the norm a SubLN Llama student's projection holds -> where BitNetForCausalLM holds it
SUB_NORM_NAMES = {"self_attn.o_proj.rms_norm.": "self_attn.attn_sub_norm.",
                  "mlp.down_proj.rms_norm.": "mlp.ffn_sub_norm."}


def is_bitnet_architecture(config: PretrainedConfig) -> bool:
    """Whether a converted student of `config` computes what BitNetForCausalLM of the same settings computes: a
    Llama with SubLN norms alone (no input_norm), of the model's own epsilon, and an MLP without biases (BitNet's has
    none)."""
    options = BitNetOptions.from_config(config)
    return (config.model_type == "llama" and options.subln and not options.input_norm
            and not getattr(config, "mlp_bias", False) and options.rms_norm_eps == config.rms_norm_eps)


def bitnet_config(config: PretrainedConfig) -> BitNetConfig:
    """The BitNetForCausalLM config of a SubLN Llama student's `config`, every other setting kept."""
    settings = {key: value for key, value in config.to_dict().items()
                if key not in ("model_type", "transformers_version")}
    return BitNetConfig(**{**settings, "architectures": ["BitNetForCausalLM"]})


def bitnet_tensor_name(name: str) -> str:
    """A SubLN Llama student's tensor name in BitNetForCausalLM (the sub-norms renamed, anything else kept)."""
    for student, bitnet in SUB_NORM_NAMES.items():
        name = name.replace(student, bitnet)
    return name


def norms_in_architecture(config: PretrainedConfig) -> bool:
    """Whether a packed export's sub-norms are modules of its architecture (BitNetForCausalLM) rather than of its
    ternary layers."""
    return config.model_type == BITNET_MODEL_TYPE
