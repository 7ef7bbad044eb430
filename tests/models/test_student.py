import pytest
import torch
from transformers import AutoModelForCausalLM, ZambaConfig

from tiny import ARCHITECTURES, layer_outputs, tiny_config
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers
from distily.models.arguments import ModelArguments
from distily.models.student import build_student, config_with_overrides, evenly_spaced_layers
from distily.models.teacher import load_teacher


def teacher_model(arch, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides)).eval()


@pytest.mark.parametrize(
    "teacher_depth, student_depth, expected",
    [(12, 6, [0, 2, 4, 7, 9, 11]), (4, 2, [0, 3]), (5, 3, [0, 2, 4]), (4, 4, [0, 1, 2, 3]), (6, 1, [5])],
)
def test_evenly_spaced_layers_include_first_and_last(teacher_depth, student_depth, expected):
    assert evenly_spaced_layers(teacher_depth, student_depth) == expected


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_student_from_teacher_layers_copies_the_chosen_layers(arch):
    teacher = teacher_model(arch)
    args = ModelArguments(student_config_overrides='{"num_hidden_layers": 2}', student_layers_from_teacher=[1, 3])
    student = build_student(args, teacher)
    assert student.config.num_hidden_layers == 2
    for student_layer, teacher_index in zip(decoder_layers(student), [1, 3]):
        teacher_state = decoder_layers(teacher)[teacher_index].state_dict()
        for name, value in student_layer.state_dict().items():
            torch.testing.assert_close(value, teacher_state[name].float())
    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    torch.testing.assert_close(student.get_output_embeddings().weight, teacher.get_output_embeddings().weight)


def test_a_student_built_from_the_teacher_stops_and_samples_as_it_does(tmp_path):
    """Phi-3's chat model ends a turn with <|end|> (32007), listed in its generation config only."""
    teacher = teacher_model("phi3")
    teacher.generation_config.eos_token_id = [32000, 32001, 32007]
    teacher.generation_config.temperature, teacher.generation_config.do_sample = 0.6, True
    for init in ("teacher", "random"):
        student = build_student(ModelArguments(student_config_overrides='{"num_hidden_layers": 2}',
                                               student_init=init), teacher)
        student.save_pretrained(tmp_path / init)
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / init).generation_config
        assert saved.eos_token_id == [32000, 32001, 32007] and saved.temperature == 0.6 and saved.do_sample
    assert student.generation_config is not teacher.generation_config


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_random_student_keeps_its_own_init(arch):
    teacher = teacher_model(arch)
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_init="random")
    student = build_student(args, teacher)
    assert not torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert student(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, teacher.config.vocab_size)


def test_architecture_specific_keys_work_for_gpt2():
    config = config_with_overrides(tiny_config("gpt2"), {"n_layer": 2, "n_embd": 32, "n_head": 2})
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 32, 2)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_narrower_student_derives_head_dim_again(arch):
    narrower = {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}
    config = config_with_overrides(tiny_config(arch), narrower)
    assert getattr(config, "head_dim", 16) == 16  # Qwen2 derives it at run time
    student = AutoModelForCausalLM.from_config(config)
    assert student(torch.tensor([[1, 2]])).logits.shape[-1] == config.vocab_size


def test_student_from_separate_config_file(tmp_path):
    tiny_config("llama", layers=3).save_pretrained(tmp_path)
    student = build_student(
        ModelArguments(student_config_name_or_path=str(tmp_path / "config.json"), student_init="random"),
        teacher_model("llama"),
    )
    assert student.config.num_hidden_layers == 3


def test_copy_and_freeze_named_modules():
    teacher = teacher_model("llama")
    args = ModelArguments(
        student_config_overrides={"num_hidden_layers": 2},
        student_init="random",
        copy_teacher_modules=["model.embed_tokens"],
        freeze_student_modules=["model.embed_tokens"],
    )
    student = build_student(args, teacher)
    torch.testing.assert_close(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert not student.model.embed_tokens.weight.requires_grad
    assert student.model.layers[0].mlp.up_proj.weight.requires_grad


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": 5}, "num_attention_heads=5 does not divide hidden_size=64"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "num_key_value_heads=3 does not divide"),
        ({"num_layerz": 2}, "key 'num_layerz' is not a field of LlamaConfig"),
        ({"hidden_size": -64}, "student_config_overrides hidden_size=-64 must be a positive integer"),
        ({"intermediate_size": 0}, "intermediate_size=0 must be a positive integer"),
        ({"num_key_value_heads": 1.5}, "num_key_value_heads=1.5 must be a positive integer"),
    ],
)
def test_impossible_student_shapes_are_clear_errors(overrides, message):
    with pytest.raises(DistilyConfigError, match=message):
        config_with_overrides(tiny_config("llama"), overrides)


def test_narrow_student_cannot_copy_teacher_layers():
    narrower = {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}
    args = ModelArguments(student_config_overrides=narrower)
    with pytest.raises(DistilyConfigError, match="use student_init=random"):
        build_student(args, teacher_model("llama"))


def test_out_of_range_teacher_layer_is_an_error():
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=[0, 9])
    with pytest.raises(DistilyConfigError, match="index 9 is out of range"):
        build_student(args, teacher_model("llama"))


def _gemma3_text(layers: int = 12, **overrides):
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            intermediate_size=128, max_position_embeddings=256, num_hidden_layers=layers,
                            sliding_window=4, **overrides)


@pytest.mark.parametrize("init, layers, sources", [
    ("teacher", None, [0, 4, 7, 11]), ("teacher", [0, 1, 2, 11], [0, 1, 2, 11]), ("random", None, [0, 4, 7, 11]),
])  # fmt: skip
def test_a_shallower_student_keeps_the_per_layer_settings_of_the_layers_it_stands_for(init, layers, sources):
    """Gemma 3 attends globally every sixth layer (rope base 1e6 there, 1e4 in the sliding-window layers): a
    4-layer student derived from its depth had four sliding layers, so copied teacher layer 11 ran local attention
    with the local rope base, and no layer attended globally. It takes the teacher's types at its layers."""
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(_gemma3_text()).eval()
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 4}, student_init=init,
                          student_layers_from_teacher=layers)
    student = build_student(args, teacher)
    assert student.config.layer_types == [teacher.config.layer_types[index] for index in sources]
    assert student.config.layer_types[-1] == "full_attention"


@pytest.mark.parametrize("arch", ["qwen3", "gemma2"])
def test_a_narrower_students_head_dim_is_derived_from_its_width_and_heads(arch):
    """Qwen3's and Gemma 2's configs fall back to a fixed head_dim (128, 256) when none is given: dropping the
    teacher's derived one gave a 'narrower' student with wider attention than the teacher."""
    from transformers import Gemma2Config, Qwen3Config
    config_class = {"qwen3": Qwen3Config, "gemma2": Gemma2Config}[arch]
    teacher = config_class(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           intermediate_size=128, num_hidden_layers=2)
    student = config_with_overrides(teacher, {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1})
    assert student.head_dim == 16


def test_a_head_dim_of_its_own_is_kept_and_the_heads_need_not_divide_the_width():
    """Qwen3-0.6B's head_dim (128) is not its width over its heads (1024 / 16): such a student's attention is
    heads x head_dim wide whatever the width, so 3 heads on a width of 64 are a valid student, as transformers
    builds it, not 'a head count that divides the hidden size'."""
    from transformers import Qwen3Config
    teacher = Qwen3Config(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                          intermediate_size=128, num_hidden_layers=2)
    student = config_with_overrides(teacher, {"num_attention_heads": 3})
    assert (student.num_attention_heads, student.head_dim) == (3, 32)
    model = AutoModelForCausalLM.from_config(student)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (96, 64)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)


def test_a_tied_student_of_an_untied_teacher_takes_the_teachers_input_embeddings():
    """The student's LM head is its embedding matrix: copied once, from the teacher's embeddings (transformers
    ties the head to the input embeddings), not overwritten by the teacher's separate head."""
    teacher = teacher_model("llama", tie_word_embeddings=False)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.add_(1.0)  # the untied head differs from the embeddings
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2, "tie_word_embeddings": True})
    student = build_student(args, teacher)
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)


def test_a_student_of_a_multimodal_model_reads_its_depth_from_the_text_config(tmp_path):
    """Gemma 3 from 4B up loads as ...ForConditionalGeneration, its depth in its text config: build_student copes.
    load_teacher, which refused such a teacher, loads its language model as a Gemma3ForCausalLM, which computes what
    the multimodal model does on text (test_multimodal_teachers checks so family by family)."""
    from transformers import Gemma3Config
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(Gemma3Config(text_config=_gemma3_text(4).to_dict(),
                                                            vision_config=vision, mm_tokens_per_image=4)).eval()
    student = build_student(ModelArguments(), teacher).eval()
    ids = torch.randint(0, 128, (1, 12))
    teacher.save_pretrained(tmp_path / "gemma3")
    language_model = load_teacher(str(tmp_path / "gemma3"))
    assert type(language_model).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits)
        torch.testing.assert_close(language_model(ids).logits, teacher(ids).logits)


TEXT = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            num_hidden_layers=4)
MOE = dict(moe_intermediate_size=32, num_experts_per_tok=2)
MLA = dict(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
MAMBA2 = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=8)


def _per_layer_config(arch):
    """Tiny configs whose layers differ in kind (dense or mixture of experts, RoPE or none, sliding or global)."""
    import transformers as hf
    return {
        # dense layer 0 (listed) and 2 (off the sparse step), MoE 1 and 3
        "qwen2_moe": lambda: hf.Qwen2MoeConfig(intermediate_size=128, num_experts=4, shared_expert_intermediate_size=32,
                                               mlp_only_layers=[0], decoder_sparse_step=2, **MOE, **TEXT),
        "qwen3_moe": lambda: hf.Qwen3MoeConfig(intermediate_size=128, num_experts=4, mlp_only_layers=[3], head_dim=16,
                                               **MOE, **TEXT),
        "deepseek_v2": lambda: hf.DeepseekV2Config(intermediate_size=128, n_routed_experts=4, n_shared_experts=1,
                                                   first_k_dense_replace=2, q_lora_rank=None, **MLA, **MOE, **TEXT),
        "deepseek_v3": lambda: hf.DeepseekV3Config(intermediate_size=128, n_routed_experts=4, n_shared_experts=1,
                                                   first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=24,
                                                   **MLA, **MOE, **TEXT),
        # MoE every second layer; chunked attention with RoPE, global attention without it every fourth layer
        "llama4": lambda: hf.Llama4TextConfig(intermediate_size=128, intermediate_size_mlp=128, num_local_experts=4,
                                              head_dim=16, interleave_moe_layer_step=2, attention_chunk_size=4, **TEXT),
        "ernie4_5_moe": lambda: hf.Ernie4_5_MoeConfig(intermediate_size=128, moe_num_experts=4, moe_k=2,
                                                      moe_intermediate_size=32, moe_layer_start_index=1,
                                                      moe_layer_end_index=2, **TEXT),
        "gemma3": lambda: _gemma3_text(4, sliding_window_pattern=2),
        "phi3": lambda: hf.Phi3Config(intermediate_size=128, partial_rotary_factor=0.5, pad_token_id=0, **TEXT),
        # attention at layer 1 (every third from 1), Mamba elsewhere; MoE at 1 and 3 (every second from 1)
        "jamba": lambda: hf.JambaConfig(intermediate_size=128, num_experts=4, num_experts_per_tok=2,
                                        attn_layer_period=3, attn_layer_offset=1, expert_layer_period=2,
                                        expert_layer_offset=1, mamba_d_state=8, **TEXT),
        "bamba": lambda: hf.BambaConfig(intermediate_size=128, attn_layer_indices=[1], **MAMBA2, **TEXT),
        # recurrent, recurrent, attention, recurrent: block_types repeated
        "recurrent_gemma": lambda: hf.RecurrentGemmaConfig(vocab_size=128, hidden_size=64, num_attention_heads=4,
                                                           num_key_value_heads=2, intermediate_size=128,
                                                           num_hidden_layers=4, attention_window_size=8),
        # the depth is the length of layers_block_type
        "nemotron_h": lambda: hf.NemotronHConfig(
            vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, mamba_num_heads=8, mamba_head_dim=16, n_groups=1, ssm_state_size=16, chunk_size=8,
            n_routed_experts=4, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
            layers_block_type=["mamba", "moe", "attention", "mlp"]),
        # a shared transformer block in layers 1 and 3 (hybrid_layer_ids, derived from layers_block_type)
        "zamba2": lambda: hf.Zamba2Config(intermediate_size=128, n_mamba_heads=4, mamba_d_state=8, chunk_size=8,
                                          layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
                                          **{**TEXT, "num_key_value_heads": 4}),
    }[arch]()


@pytest.mark.parametrize("layers", [[0, 3], [1, 2]])
@pytest.mark.parametrize("arch", ["qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "llama4", "ernie4_5_moe",
                                  "gemma3", "phi3", "jamba", "bamba", "recurrent_gemma", "nemotron_h"])
def test_each_copied_layer_computes_what_its_teacher_layer_does(arch, layers):
    """Which layers are dense and which a mixture of experts is said by a list of indices (Qwen-MoE mlp_only_layers,
    Llama 4 moe_layers) or a scalar (decoder_sparse_step, DeepSeek first_k_dense_replace, Ernie's MoE run): kept
    from the teacher, a 2-layer student's layer 1 was dense where its teacher layer 3 was MoE (or the reverse), and
    copying it failed. Which are attention and which Mamba or recurrent likewise (Jamba's attn_layer_period and
    expert_layer_period, Bamba's attn_layer_indices, RecurrentGemma's block_types); Nemotron-H's depth, derived from
    its layers_block_type, was a KeyError. Student layer i, given the input of its teacher layer in the student's own
    forward (its own mask, RoPE, experts), gives that layer's output."""
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(_per_layer_config(arch)).eval()
    ids = torch.randint(0, 128, (1, 12))
    teacher_inputs, teacher_outputs = layer_outputs(teacher, ids)
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=layers)
    student = build_student(args, teacher).eval()
    _, student_outputs = layer_outputs(student, ids, [teacher_inputs[index] for index in layers])
    for student_output, index in zip(student_outputs, layers):
        torch.testing.assert_close(student_output, teacher_outputs[index])


@pytest.mark.parametrize("arch", ["qwen2_moe", "qwen3_moe", "deepseek_v2", "llama4", "ernie4_5_moe", "jamba",
                                  "bamba", "recurrent_gemma", "nemotron_h"])
def test_a_random_students_layers_have_the_modules_of_the_teacher_layers_they_stand_for(arch):
    teacher = AutoModelForCausalLM.from_config(_per_layer_config(arch))
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_init="random")
    student = build_student(args, teacher)
    for student_layer, index in zip(decoder_layers(student), evenly_spaced_layers(4, 2)):
        assert student_layer.state_dict().keys() == decoder_layers(teacher)[index].state_dict().keys()


@pytest.mark.parametrize("arch, layers, message", [
    # a dense layer after an MoE one, where the config says which are MoE by a count of dense first layers
    ("deepseek_v3", [3, 0], r"layers \[3, 0\] would be MoE, dense, which DeepseekV3Config's first_k_dense_replace "
                            "cannot express"),
])
def test_copies_the_students_config_cannot_hold_are_refused(arch, layers, message):
    teacher = AutoModelForCausalLM.from_config(_per_layer_config(arch))
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=layers)
    with pytest.raises(DistilyConfigError, match=message):
        build_student(args, teacher)


def test_a_pattern_a_period_cannot_give_is_refused():
    """Jamba's attention layers are every attn_layer_period-th: attention, attention, Mamba has no period."""
    from transformers import JambaConfig
    teacher = JambaConfig(attn_layer_period=2, attn_layer_offset=0, **TEXT)  # attention at 0 and 2
    with pytest.raises(DistilyConfigError, match=r"layers \[0, 2, 1\] would be attention, attention, mamba, which "
                                                 "JambaConfig's attn_layer_period, attn_layer_offset cannot express; "
                                                 "expected student_layers_from_teacher whose attention layers repeat"):
        config_with_overrides(teacher, {"num_hidden_layers": 3}, [0, 2, 1])


@pytest.mark.parametrize("init, layers, hybrid", [("random", None, [1]), ("teacher", [1, 3], [0, 1])])
def test_a_zamba2_students_shared_blocks_sit_in_its_own_hybrid_layers(init, layers, hybrid):
    """Zamba2 derives hybrid_layer_ids (the layers holding its shared transformer block) from layers_block_type:
    kept from the teacher ([1, 3]), a 2-layer student with one hybrid layer had adapters for two and the build was
    refused (two module lists of 2 layers). Copied, its layers give their teacher layers' outputs."""
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(_per_layer_config("zamba2")).eval()
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_init=init,
                          student_layers_from_teacher=layers)
    student = build_student(args, teacher).eval()
    assert student.config.hybrid_layer_ids == hybrid
    if layers is not None:
        ids = torch.randint(0, 128, (1, 12))
        teacher_inputs, teacher_outputs = layer_outputs(teacher, ids)
        _, student_outputs = layer_outputs(student, ids, [teacher_inputs[index] for index in layers])
        for student_output, index in zip(student_outputs, layers):
            torch.testing.assert_close(student_output, teacher_outputs[index])


def test_an_lfm2_students_attention_indices_are_its_own():
    """LFM2 keeps the full_attn_idxs its layer_types came from: a 2-layer student had the teacher's, [1, 3]."""
    from transformers import Lfm2Config
    teacher = Lfm2Config(full_attn_idxs=[1, 3], **TEXT)
    student = config_with_overrides(teacher, {"num_hidden_layers": 2}, [3, 2])
    assert student.layer_types == ["full_attention", "conv"] and student.full_attn_idxs == [0]


def test_a_student_its_model_class_cannot_build_is_one_line():
    """A Zamba of one hybrid layer is a valid config whose model transformers cannot build (its shared block's ties
    need two): a ValueError traceback from inside transformers, now a one-line error naming the architecture."""
    config = ZambaConfig(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                         attention_hidden_size=128, intermediate_size=128, mamba_d_state=8, n_mamba_heads=2,
                         num_hidden_layers=8, attn_layer_period=2, attn_layer_offset=1)
    teacher = AutoModelForCausalLM.from_config(config)  # hybrid layers 2, 4 and 6
    for layers, hybrid in (([0, 1], 0), ([2, 4], 2)):
        args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=layers)
        assert build_student(args, teacher).config.layers_block_type.count("hybrid") == hybrid
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=[0, 2])
    with pytest.raises(DistilyConfigError, match=r"^transformers cannot build a zamba student of this shape: There is "
                                                 r"an issue with your definition of `tie_weights_keys`.*; expected"):
        build_student(args, teacher)


def test_a_copied_layer_must_hold_every_teacher_tensor():
    """A student without the teacher's attention biases took its layers' weights and silently dropped the biases."""
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2, "attention_bias": False})
    with pytest.raises(DistilyConfigError, match=r"self_attn.q_proj.bias is missing in the student and of shape "):
        build_student(args, teacher_model("llama", attention_bias=True))


@pytest.mark.parametrize("depth", [0, "2", 2.5])
def test_a_student_depth_that_is_not_a_layer_count_is_refused(depth):
    """Depth 0 built a student with no layers; a string or float failed inside range()."""
    args = ModelArguments(student_config_overrides={"num_hidden_layers": depth}, student_init="random")
    with pytest.raises(DistilyConfigError, match=f"num_hidden_layers={depth!r} is not a layer count"):
        build_student(args, teacher_model("llama"))


def test_a_config_transformers_refuses_is_a_one_line_error():
    """Phi-3's LongRoPE has one factor per rotary frequency: a student of another head_dim needs its own."""
    from transformers import Phi3Config
    teacher = Phi3Config(intermediate_size=128, pad_token_id=0, original_max_position_embeddings=64, **TEXT,
                         rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                          "long_factor": [2.0] * 8})
    with pytest.raises(DistilyConfigError, match="Phi3Config is not valid: .*short_factor field must have length 4"):
        config_with_overrides(teacher, {"hidden_size": 32, "intermediate_size": 64})


@pytest.mark.parametrize("arch, overrides", [
    ("llama", {"num_attention_heads": 2, "num_key_value_heads": 1}), ("gpt2", {"n_head": 2}),
    ("phi3", {"num_attention_heads": 2, "num_key_value_heads": 2}),
])  # fmt: skip
def test_teacher_layers_are_not_copied_into_other_heads(arch, overrides):
    """Fewer, wider heads of the same width keep every projection's shape: the teacher's layers were copied and split
    into other heads (Llama: the copied layers' outputs differed from the teacher layers' by up to 21)."""
    with pytest.raises(DistilyConfigError, match="cannot copy teacher layers into a student of num_attention_heads=2 "
                                                 r"\(the teacher's is 4\)"):
        build_student(ModelArguments(student_config_overrides=overrides), teacher_model(arch))


@pytest.mark.parametrize("module, refused", [
    ("model.layers.0", True), ("model.layers.0.self_attn", True), ("model.layers.0.mlp", False),
    ("model.embed_tokens", False),
])
def test_copy_teacher_modules_refuses_attention_into_other_heads(module, refused):
    """copy_teacher_modules compared shapes only: a layer or attention copied into fewer, wider heads of the same
    width loaded and split the teacher's projections into other heads."""
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2, "num_attention_heads": 2,
                                                    "num_key_value_heads": 1},
                          student_init="random", copy_teacher_modules=[module])
    if refused:
        with pytest.raises(DistilyConfigError, match=f"cannot copy teacher module {module} into a student of "
                                                     r"num_attention_heads=2 \(the teacher's is 4\)"):
            build_student(args, teacher_model("llama"))
    else:
        build_student(args, teacher_model("llama"))


@pytest.mark.parametrize("overrides, module, message", [
    ({"hidden_size": 32}, "model.norm", r"weight is of shape \(32,\) in the student and of shape \(64,\)"),
    ({"num_attention_heads": 2, "num_key_value_heads": 1}, "model.layers.0.self_attn", "num_attention_heads=2"),
])  # fmt: skip
def test_a_module_that_does_not_fit_says_to_leave_it_out_of_copy_teacher_modules(overrides, module, message):
    """The refusal said 'use student_init=random for a reshaped student' of a random student: copy_teacher_modules
    copies whatever the init, so only leaving the module out builds it."""
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2, **overrides}, student_init="random",
                          copy_teacher_modules=[module])
    with pytest.raises(DistilyConfigError, match=f"{message}.*leave {module} out of copy_teacher_modules") as err:
        build_student(args, teacher_model("llama"))
    assert "student_init=random for" not in str(err.value)


def test_teacher_layers_copied_in_another_order_keep_their_kinds_at_the_teachers_depth():
    """At the teacher's depth the per-layer settings were kept as the teacher's: Gemma 3's layers copied in reverse
    order put its global-attention layer (the last) first but left layer_types saying the last one attends globally."""
    teacher = AutoModelForCausalLM.from_config(_gemma3_text(4, sliding_window_pattern=4))
    assert teacher.config.layer_types == ["sliding_attention"] * 3 + ["full_attention"]
    args = ModelArguments(student_layers_from_teacher=[3, 2, 1, 0])
    student = build_student(args, teacher)
    assert student.config.layer_types == teacher.config.layer_types[::-1]
