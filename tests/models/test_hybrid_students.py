"""Students of hybrid teachers: shapes transformers builds but cannot run are refused before training; Zamba2's
copied hybrid layers take the adapters of the teacher hybrid layers they stand for."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Zamba2Config

from tiny import assert_stands_for_teacher_layers
from distily.errors import DistilyConfigError
from distily.models.arguments import ModelArguments
from distily.models.student import build_student


def _zamba2_teacher(layers_block_type: list[str], num_mem_blocks: int = 1):
    """A Zamba2 whose shared attention has adapters, with as many KV heads as heads (as Zamba2-1.2B)."""
    torch.manual_seed(0)
    config = Zamba2Config(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                          intermediate_size=128, n_mamba_heads=4, mamba_d_state=8, chunk_size=8, adapter_rank=8,
                          use_shared_attention_adapter=True, layers_block_type=layers_block_type,
                          num_hidden_layers=len(layers_block_type), max_position_embeddings=128,
                          num_mem_blocks=num_mem_blocks, initializer_range=0.2)
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


MAMBA, HYBRID = "mamba", "hybrid"


@pytest.mark.parametrize("num_mem_blocks, layer_types, layers", [
    (1, [MAMBA, HYBRID, MAMBA, HYBRID], [0, 3]), (1, [MAMBA, HYBRID, MAMBA, HYBRID], [3, 0, 2]),
    (1, [MAMBA, HYBRID, MAMBA, HYBRID], [3, 1]), (2, [MAMBA, HYBRID, MAMBA, HYBRID, HYBRID, HYBRID], [3, 4]),
    (2, [MAMBA, HYBRID, MAMBA, HYBRID, HYBRID, HYBRID], [1, 3, 4]),
])  # fmt: skip
def test_each_copied_zamba2_layer_computes_what_its_teacher_layer_does(num_mem_blocks, layer_types, layers, tmp_path):
    """Zamba2's shared transformer blocks hold an adapter per hybrid layer, the k-th hybrid layer running the k-th:
    a student with fewer hybrid layers than the teacher (its default student among them) was refused (an adapter
    missing in the student), and one with its hybrid layers in another order ran the teacher's other adapters
    ([3, 1]: both layers off by more than 8). Student layer i, given its teacher layer's input in the student's own
    forward, gives that layer's output exactly, and the saved student loads in plain transformers."""
    teacher = _zamba2_teacher(layer_types, num_mem_blocks)
    args = ModelArguments(student_config_overrides={"num_hidden_layers": len(layers)},
                          student_layers_from_teacher=layers)
    student = build_student(args, teacher).eval()
    assert_stands_for_teacher_layers(teacher, student, layers, torch.tensor([[5, 9, 17, 3, 44, 100, 7]]), tmp_path,
                                     use_cache=False)


def test_zamba2_hybrid_layers_sharing_a_block_must_copy_teacher_layers_sharing_one():
    """With num_mem_blocks=2, student hybrid layers 0 and 2 share one block's weights: copying teacher layers 1
    (block 0) and 5 (block 1) into them would give one block two teachers' weights."""
    teacher = _zamba2_teacher([MAMBA, HYBRID, MAMBA, HYBRID, HYBRID, HYBRID], num_mem_blocks=2)
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 3}, student_layers_from_teacher=[1, 4, 5])
    with pytest.raises(DistilyConfigError, match=r"^student hybrid layers copying teacher layers 1 and 5 would share "
                                                 r"one transformer block \(num_mem_blocks=2\), which those layers do "
                                                 "not; expected student_layers_from_teacher"):
        build_student(args, teacher)
