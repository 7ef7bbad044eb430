"""What a mixture-of-experts config says about the work a token does: how many experts it is routed to, and how wide
they are. Dense configs route nowhere."""

from dataclasses import dataclass
from typing import Optional

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

EXPERTS = "experts"  # the module holding a layer's routed experts in transformers' mixtures (shared ones are apart)
# how many routed experts a layer has: Mixtral, gpt-oss, Llama 4; Qwen-MoE, OLMoE, Jamba; DeepSeek; Ernie 4.5
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
LLAMA4_TEXT = "llama4_text"  # runs every expert on every token (the unrouted ones on zeros), beside a shared expert


@dataclass(frozen=True)
class Routing:
    experts_per_token: int  # routed experts each token passes through (0: a dense model)
    expert_width: int  # one routed expert's intermediate size
    shared_width: int  # the shared experts' intermediate size, which every token passes through too
    computed_per_token: int  # routed experts transformers runs each token through: those it is routed to, or all


def routing(config: PretrainedConfig) -> Routing:
    """The routing of ``config``'s mixture-of-experts layers: ``num_experts_per_tok`` experts each of
    ``moe_intermediate_size`` (Qwen-MoE, DeepSeek) or, without it, of ``intermediate_size`` (Mixtral, OLMoE, gpt-oss),
    and shared experts of ``shared_expert_intermediate_size`` (Qwen-MoE) or ``n_shared_experts`` routed experts' widths
    (DeepSeek, GLM-4-MoE); Llama 4's of ``intermediate_size``, a shared one too, computed on every token."""
    config = config.get_text_config()
    per_token = getattr(config, "num_experts_per_tok", None) or 0
    if not per_token:
        return Routing(0, 0, 0, 0)
    if config.model_type == LLAMA4_TEXT:
        return Routing(per_token, config.intermediate_size, config.intermediate_size, config.num_local_experts)
    width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    shared = getattr(config, "shared_expert_intermediate_size", None) or (
        (getattr(config, "n_shared_experts", None) or 0) * width)
    return Routing(per_token, width, shared, per_token)


def _unrouted_share(experts: nn.Module, per_token: int) -> int:
    """Parameters of a layer's routed experts that a token does not pass through: all but ``per_token`` experts'
    slices of their stacked tensors (``[experts, ...]``, as every transformers mixture keeps them)."""
    return sum(tensor.numel() - tensor.numel() // tensor.shape[0] * per_token
               for tensor in experts.parameters(recurse=False))


def active_parameters(model: PreTrainedModel) -> Optional[int]:
    """The parameters a token passes through (``num_parameters`` less the routed experts it is not sent to); None for
    a dense model, which a token passes through whole."""
    per_token = routing(model.config).experts_per_token
    if not per_token:
        return None
    unrouted = sum(_unrouted_share(module, per_token) for name, module in model.named_modules()
                   if name.rsplit(".", 1)[-1] == EXPERTS)
    return model.num_parameters() - unrouted
