"""What a mixture of experts routes a token through (``models/experts.py``), and what the run reports of it."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2MoeConfig

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.experiments.metric_keys import metric_keys
from distily.models.arguments import ModelArguments
from distily.models.experts import active_parameters
from distily.models.student import build_student
from distily.models.summary import architecture_summary
from tiny import tiny_config


def test_a_mixtures_active_parameters_are_those_a_token_passes_through():
    """metrics.json and the card gave a mixture of experts' total alone (num_parameters, as counted by hand), which a
    token's compute does not follow: a tiny Mixtral's token passes through 2 of its 8 experts, 141,888 of 289,344.
    A sweep can rank runs by it."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("mixtral"))  # 4 layers, 64 wide, 8 experts 32 wide
    width, kv_width, vocab = 64, 2 * 16, 320
    layer = 2 * width * width + 2 * width * kv_width + 2 * width + 8 * width  # attention, norms, router
    expert = 3 * width * 32  # gate, up, down
    outside = 2 * vocab * width + width  # embeddings, LM head, final norm
    assert model.num_parameters() == outside + 4 * (layer + 8 * expert) == 289_344
    assert active_parameters(model) == outside + 4 * (layer + 2 * expert) == 141_888
    assert architecture_summary(model)["active_parameters"] == 141_888
    keys = metric_keys(parse_config(teacher_model_name_or_path="gpt2", dataset_name="data.jsonl", output_dir="out"))
    assert {"student.architecture.active_parameters", "teacher.architecture.active_parameters"} <= set(keys)


def _qwen2_moe():
    return Qwen2MoeConfig(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=2, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                          num_experts_per_tok=2, shared_expert_intermediate_size=32)


def test_a_shared_expert_is_active_whole_and_a_dense_model_reports_none():
    model = AutoModelForCausalLM.from_config(_qwen2_moe())
    routed = sum(p.numel() for name, p in model.named_parameters() if ".mlp.experts." in name)
    assert active_parameters(model) == model.num_parameters() - routed * 6 // 8
    dense = AutoModelForCausalLM.from_config(tiny_config("llama"))
    assert active_parameters(dense) is None and "active_parameters" not in architecture_summary(dense)


@pytest.mark.parametrize("config, key", [(lambda: tiny_config("mixtral"), "num_local_experts"),
                                         (_qwen2_moe, "num_experts")])
def test_a_student_copied_from_the_teacher_with_fewer_experts_is_refused_naming_the_key(config, key):
    """A copied layer brings every expert and the router's row for each: fewer experts were refused on the first
    tensor whose shape differs (``mlp.gate.weight is of shape (4, 64) ...``), not naming the key that made it so.
    Fewer experts per token copy whole (the router picks among the same experts)."""
    teacher = AutoModelForCausalLM.from_config(config())
    fewer = ModelArguments(student_config_overrides={"num_hidden_layers": 2, key: 4})
    with pytest.raises(DistilyConfigError, match=rf"{key}=4 \(the teacher's is 8\).*student_init=random"):
        build_student(fewer, teacher)
    build_student(ModelArguments(student_config_overrides={"num_hidden_layers": 2, "num_experts_per_tok": 1}), teacher)
