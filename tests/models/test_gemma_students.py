"""Students of Gemma 4 and Gemma 3n text teachers, whose layers differ by position: Gemma 4's full-attention layers
with another head_dim (per_layer_config), Gemma 3n's MLP width and activation sparsity per layer, per-layer inputs
packed in one table (PLE), the last layers reusing earlier layers' keys and values (num_kv_shared_layers)."""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import (
    FULL, SLIDING, assert_stands_for_teacher_layers, layer_outputs, make_bos_tokenizer, make_sentencepiece_tokenizer,
    plain_loss, sequences_of, tiny_gemma3n_config, tiny_gemma4_config,
)
from distily.config import parse_config
from distily.data.training_data import build_datasets
from distily.data.vocabulary import map_vocabularies
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers
from distily.models.arguments import ModelArguments
from distily.models.packed_layers import PER_LAYER_TOKEN_TABLE, layer_slices
from distily.models.student import build_student, evenly_spaced_layers, student_config_and_teacher_layers
from distily.training.distill import run_distillation

VARIANTS = {  # the tiny teachers' layers: sliding, sliding, full, full
    "dense": {},
    "kv_shared": dict(num_kv_shared_layers=1, use_double_wide_mlp=True),  # layer 3 reuses layer 2's keys and values
    "kv_shared_full_first": dict(num_kv_shared_layers=1, layer_types=[FULL, SLIDING, FULL, FULL]),
    "k_eq_v": dict(attention_k_eq_v=True, num_global_key_value_heads=1),  # full layers: values are keys, 1 KV head
    "moe": dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32),
    "gemma3n": {},
    "gemma3n_kv_shared": dict(num_kv_shared_layers=1),
    "gemma3n_altup_4": dict(altup_num_inputs=4),  # 3 AltUp projections: as many as a 3-layer student's blocks
}


def gemma_teacher(variant: str, **settings):
    torch.manual_seed(0)
    tiny_config = tiny_gemma3n_config if variant.startswith("gemma3n") else tiny_gemma4_config
    return AutoModelForCausalLM.from_config(tiny_config(**VARIANTS[variant], **settings)).eval()


def student_of(teacher, layers=None, init="teacher", **overrides):
    depth = len(layers) if layers else 2
    args = ModelArguments(student_config_overrides={"num_hidden_layers": depth, **overrides}, student_init=init,
                          student_layers_from_teacher=layers)
    return build_student(args, teacher).eval()


@pytest.mark.parametrize("variant, layers", [
    ("dense", [0, 3]), ("dense", [1, 2]), ("k_eq_v", [0, 3]), ("k_eq_v", [1, 2]), ("moe", [0, 3]), ("moe", [1, 2]),
    ("kv_shared", [1, 2]), ("kv_shared", [2, 3]), ("kv_shared", [0, 2, 3]), ("gemma3n", [0, 3]), ("gemma3n", [1, 2]),
    ("gemma3n_kv_shared", [1, 2]), ("gemma3n_kv_shared", [0, 2, 3]), ("gemma3n_altup_4", [0, 2, 3]),
])  # fmt: skip
def test_each_copied_gemma_layer_computes_what_its_teacher_layer_does(variant, layers, tmp_path):
    """Gemma 4's full-attention layers take head_dim (and with attention_k_eq_v the KV heads) from per_layer_config,
    keyed by layer index: kept from the teacher, every shallower student was refused by transformers (index 3 out of
    range). Gemma 3n's intermediate_size and activation_sparsity_pattern are per-layer lists: kept, transformers
    refused them too. Both pack their per-layer inputs in one table of num_hidden_layers slices: copied whole where
    shapes matched, else left random, so a copied layer read another layer's input. Student layer i, given its
    teacher layer's input in the student's own forward (its own PLE, mask, RoPE and shared keys and values), gives
    that layer's output, and the saved student loads in plain transformers."""
    teacher = gemma_teacher(variant)
    student = student_of(teacher, layers)
    assert student.config.layer_types == [teacher.config.layer_types[index] for index in layers]
    assert_stands_for_teacher_layers(teacher, student, layers, torch.randint(0, 320, (1, 12)), tmp_path)


@pytest.mark.parametrize("variant", ["dense", "gemma3n"])
def test_a_gemma_student_with_its_own_tokenizer_takes_the_per_layer_token_table_by_token(variant):
    """Across tokenizers, the per-layer token table (embed_tokens_per_layer) was copied by name and shape, so by id:
    each student token took another token's per-layer inputs (every row equal by id, none by token), while the
    embeddings were mapped by token. Its rows now go by token too, of the copied layers' slices."""
    teacher = gemma_teacher(variant)
    shared = map_vocabularies(make_sentencepiece_tokenizer(vocab_size=320), make_bos_tokenizer())
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=[0, 3])
    student = build_student(args, teacher, lambda: shared)
    name = f"model.{PER_LAYER_TOKEN_TABLE}.weight"
    rows = student.state_dict()[name]
    teacher_rows = layer_slices(name, teacher.state_dict()[name], teacher.config, [0, 3])
    assert 0 < len(shared) < rows.shape[0]
    torch.testing.assert_close(rows[shared.student_ids], teacher_rows[shared.teacher_ids], atol=0, rtol=0)
    torch.testing.assert_close(student.get_input_embeddings().weight[shared.student_ids],
                               teacher.get_input_embeddings().weight[shared.teacher_ids], atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["dense", "k_eq_v", "moe", "gemma3n"])
def test_a_random_gemma_students_layers_have_the_modules_of_the_teacher_layers_they_stand_for(variant):
    teacher = gemma_teacher(variant)
    student = student_of(teacher, init="random")
    for student_layer, index in zip(decoder_layers(student), evenly_spaced_layers(4, 2)):
        teacher_shapes = {name: value.shape for name, value in decoder_layers(teacher)[index].state_dict().items()}
        assert {name: value.shape for name, value in student_layer.state_dict().items()} == teacher_shapes
    assert student(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 320)


@pytest.mark.parametrize("variant, init, layers, message", [
    ("dense", "teacher", [0, 1], r"student layer 1 stands for teacher layer 1 \(layer_types 'sliding_attention'\), "
                                 r"but Gemma4TextConfig makes it 'full_attention'"),
    ("kv_shared", "teacher", [0, 3], r"student layer 1 copies teacher layer 3, which reuses the keys and values of "
                                     r"teacher layer 2; in the student it would reuse no layer's; expected student "
                                     r"layers that include teacher layers \[2\]"),
    ("kv_shared", "teacher", [1, 3], r"student layer 1 copies teacher layer 3, which reuses the keys and values of "
                                     "teacher layer 2; in the student it would reuse no layer's"),
    ("kv_shared_full_first", "teacher", [0, 3], r"student layer 1 copies teacher layer 3, which reuses the keys and "
                                                r"values of teacher layer 2; in the student it would reuse those of "
                                                r"its layer 0 \(teacher layer 0\)"),
    ("kv_shared", "teacher", [3, 2], r"layers \[3, 2\] would be KV-sharing, KV-computing, which Gemma4TextConfig's "
                                     "num_kv_shared_layers cannot express"),
    ("gemma3n_kv_shared", "teacher", [0, 3], r"student layer 1 copies teacher layer 3, which reuses the keys and "
                                             "values of teacher layer 2; in the student it would reuse no layer's"),
])  # fmt: skip
def test_a_gemma_student_its_config_cannot_represent_is_refused(variant, init, layers, message):
    """Gemma 4 makes its last layer full_attention whatever its layer_types say (a copied sliding-window layer there
    would run global attention with the global RoPE); a layer reusing keys and values needs the copy of the layer its
    teacher layer took them from (transformers refused a student with none in a ValueError when building it)."""
    with pytest.raises(DistilyConfigError, match=message):
        student_of(gemma_teacher(variant), layers, init)


def test_a_random_gemma_student_whose_num_kv_shared_layers_leaves_no_producer_is_refused():
    """Its default layers, teacher layers 0 and 2 (sliding, full), compute their own keys and values; told to reuse
    them, the full-attention one has no full-attention layer before it to take them from."""
    with pytest.raises(DistilyConfigError, match=r"student layer 1 stands for teacher layer 2; in the student it "
                                                 "would reuse no layer's; expected a num_kv_shared_layers that "
                                                 "leaves a layer of each attention type"):
        student_of(gemma_teacher("kv_shared"), init="random", num_kv_shared_layers=1)


def every_fifth_full(layers: int) -> list[str]:
    """Gemma 4 E2B's and Gemma 3n's layout: four sliding-window layers, then a full-attention one."""
    return [FULL if i % 5 == 4 else SLIDING for i in range(layers)]


@pytest.mark.parametrize("variant, settings", [
    ("dense", dict(use_double_wide_mlp=True)),  # as Gemma 4 E2B: its KV-sharing layers have a double-wide MLP
    ("gemma3n_altup_4", dict(activation_sparsity_pattern=[0.95] * 4 + [0.0] * 6)),  # as Gemma 3n E2B
])  # fmt: skip
def test_every_depth_of_a_kv_sharing_teachers_default_student_copies_its_layers_exactly(variant, settings, caplog):
    """Teacher layers 5-9 reuse the keys and values of layer 3 (sliding) or 4 (full). Evenly spaced, most students'
    KV-sharing layers lacked those (2 layers: 0 and 9, 9 needing 4) and were refused; the default layers now take
    them, replacing the nearest layers none needs. Every depth builds, keeps the teacher's first and last layers
    from 3 layers up, and each student layer, given its teacher layer's input in the student's own forward (its
    keys and values taken from the copied producer), gives that layer's output; the run log names the layers."""
    teacher = gemma_teacher(variant, layers=10, num_kv_shared_layers=5, layer_types=every_fifth_full(10), **settings)
    ids = torch.randint(0, 320, (1, 12))
    teacher_inputs, teacher_outputs = layer_outputs(teacher, ids)
    for depth in range(1, 11):
        args = ModelArguments(student_config_overrides={"num_hidden_layers": depth})
        layers = student_config_and_teacher_layers(args, teacher.config)[1]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="distily.models.student"):
            student = build_student(args, teacher).eval()
        assert caplog.messages == [f"Student layers copied from teacher layers {layers}"]
        assert layers == sorted(set(layers)) and len(layers) == depth
        assert depth < 3 or (layers[0], layers[-1]) == (0, 9)
        assert student.config.layer_types == [teacher.config.layer_types[index] for index in layers]
        assert student.config.num_kv_shared_layers == sum(index >= 5 for index in layers)
        _, student_outputs = layer_outputs(student, ids, [teacher_inputs[index] for index in layers])
        for student_output, index in zip(student_outputs, layers):
            torch.testing.assert_close(student_output, teacher_outputs[index], rtol=0, atol=0)


@pytest.mark.parametrize("variant, depth, shared, student_depth, expected", [
    ("dense", 35, 20, 1, [14]), ("dense", 35, 20, 2, [14, 34]), ("dense", 35, 20, 6, [0, 13, 14, 20, 27, 34]),
    ("dense", 35, 20, 8, [0, 5, 10, 14, 19, 24, 29, 34]), ("gemma3n", 30, 10, 6, [0, 6, 12, 18, 19, 29]),
    ("gemma3n", 30, 10, 7, [0, 5, 10, 14, 19, 24, 29]),
])  # fmt: skip
def test_the_default_layers_of_a_kv_sharing_teacher_are_evenly_spaced_with_the_producers_they_need(
        variant, depth, shared, student_depth, expected):
    """Laid out as Gemma 4 E2B (35 layers, the last 20 reusing the keys and values of layer 13, sliding, or 14,
    full) and Gemma 3n E2B (30 layers, the last 10 reusing those of 18 or 19): a missing producer replaces the
    nearest layer no KV-sharing one needs (6 of E2B's: 7 of 0, 7, 14, 20, 27, 34 makes way for 13); evenly spaced
    layers that have their producers stay as they are."""
    tiny_config = tiny_gemma3n_config if variant.startswith("gemma3n") else tiny_gemma4_config
    teacher = tiny_config(depth, num_kv_shared_layers=shared, layer_types=every_fifth_full(depth))
    args = ModelArguments(student_config_overrides={"num_hidden_layers": student_depth})
    config, layers = student_config_and_teacher_layers(args, teacher)
    assert layers == expected
    assert config.num_kv_shared_layers == sum(index >= depth - shared for index in expected)


def test_a_gemma4_student_of_a_wider_attention_cannot_copy_its_layers():
    """Heads are compared layer by layer: reading a heterogeneous config's head_dim raised transformers' error."""
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2, "per_layer_config": {1: {"head_dim": 16}}})
    with pytest.raises(DistilyConfigError, match=r"cannot copy teacher layers into a student of head_dim=16 \(the "
                                                 "teacher's is 32\\)"):
        build_student(args, gemma_teacher("dense"))


@pytest.mark.parametrize("variant, layers, softcap", [
    ("dense", None, None), ("k_eq_v", None, 30.0), ("kv_shared", [2, 3], None), ("gemma3n", None, 30.0),
])  # fmt: skip
def test_a_gemma_teacher_distills_and_its_heldout_loss_is_plain_transformers(variant, layers, softcap, run_values,
                                                                            tmp_path):
    """End to end with a BOS-framed tokenizer (Gemma's opens every text with <bos>): the student's KL to the teacher
    falls, and the teacher's held-out loss in metrics.json is what plain transformers gives on the same sequences
    (each opening with BOS). Reading Gemma 4's head_dim, which transformers refuses where layers override it, failed
    the memory check, and its KV heads (attention_k_eq_v) the model summary; Gemma 3n's per-layer MLP widths failed
    the memory check."""
    tokenizer = make_bos_tokenizer()
    teacher = gemma_teacher(variant, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=None, final_logit_softcapping=softcap)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    depth = len(layers) if layers else 2
    values = run_values(str(tmp_path / "teacher"), student_config_overrides={"num_hidden_layers": depth},
                        student_layers_from_teacher=layers, max_steps=10, learning_rate=3e-3, max_eval_samples=None)
    metrics = run_distillation(parse_config(**values))
    assert metrics["student"]["after_kl_to_teacher"] < 0.8 * metrics["student"]["before_kl_to_teacher"]
    config = parse_config(**values)
    sequences = sequences_of(build_datasets(config.data, tokenizer, 32, config.training.seed).eval)
    assert {ids[0] for ids in sequences} == {tokenizer.bos_token_id}
    assert metrics["teacher"]["lm_loss"] == pytest.approx(plain_loss(teacher, sequences), rel=1e-5)
    assert AutoModelForCausalLM.from_pretrained(values["output_dir"]).config.model_type == teacher.config.model_type
