"""Students of hybrid teachers whose shapes transformers builds but cannot run are refused before training."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Zamba2Config

from distily.errors import DistilyConfigError
from distily.models.arguments import ModelArguments
from distily.models.student import build_student


def _zamba2_teacher(layers_block_type: list[str]):
    """A Zamba2 whose shared attention has adapters, with as many KV heads as heads (as Zamba2-1.2B)."""
    torch.manual_seed(0)
    config = Zamba2Config(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                          intermediate_size=128, n_mamba_heads=4, mamba_d_state=8, chunk_size=8, adapter_rank=8,
                          use_shared_attention_adapter=True, layers_block_type=layers_block_type,
                          num_hidden_layers=len(layers_block_type), max_position_embeddings=128)
    return AutoModelForCausalLM.from_config(config).eval()


def test_a_zamba2_student_with_grouped_kv_heads_and_shared_attention_adapters_is_refused_in_one_line():
    """transformers adds the adapters' keys and values of all heads to those of the KV heads: every forward of such a
    student raised a size mismatch inside transformers (at the first training step); now it is refused in one line."""
    teacher = _zamba2_teacher(["mamba", "hybrid", "mamba", "hybrid"])
    args = ModelArguments(student_config_overrides={"num_key_value_heads": 2}, student_init="random")
    with pytest.raises(DistilyConfigError, match=r"^student num_key_value_heads=2 with use_shared_attention_adapter: "
                                                 r"transformers' zamba2 adds .* all 4 heads .*; expected "
                                                 r"num_key_value_heads=4 or use_shared_attention_adapter=false$"):
        build_student(args, teacher)
    ids = torch.tensor([[5, 9, 17, 3]])
    for overrides in ({"num_key_value_heads": 2, "use_shared_attention_adapter": False}, {}):
        student = build_student(ModelArguments(student_config_overrides=overrides, student_init="random"), teacher)
        assert student(ids, use_cache=False).logits.shape == (1, 4, 128)


def test_a_zamba2_student_with_grouped_kv_heads_and_no_shared_attention_runs():
    """Without a hybrid layer the adapters never run: such a student is not refused."""
    teacher = _zamba2_teacher(["mamba", "hybrid", "mamba", "mamba"])  # a student of 2 stands for layers 0 and 3
    args = ModelArguments(student_config_overrides={"num_key_value_heads": 2, "num_hidden_layers": 2},
                          student_init="random")
    student = build_student(args, teacher)
    assert student.config.hybrid_layer_ids == []
    assert student(torch.tensor([[5, 9, 17, 3]]), use_cache=False).logits.shape == (1, 4, 128)
