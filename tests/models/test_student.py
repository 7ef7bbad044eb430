import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import ARCHITECTURES, tiny_config
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
    student = build_student(ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_init="random"), teacher)
    assert not torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert student(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, teacher.config.vocab_size)


def test_architecture_specific_keys_work_for_gpt2():
    config = config_with_overrides(tiny_config("gpt2"), {"n_layer": 2, "n_embd": 32, "n_head": 2})
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 32, 2)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_narrower_student_derives_head_dim_again(arch):
    config = config_with_overrides(tiny_config(arch), {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1})
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
    ],
)
def test_impossible_student_shapes_are_clear_errors(overrides, message):
    with pytest.raises(DistilyConfigError, match=message):
        config_with_overrides(tiny_config("llama"), overrides)


def test_narrow_student_cannot_copy_teacher_layers():
    args = ModelArguments(student_config_overrides={"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1})
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
    """Gemma 3 from 4B up loads as ...ForConditionalGeneration, its depth in its text config: build_student copes,
    and load_teacher refuses such a teacher in one line before loading its weights (the data checks, losses and
    exports read a text decoder's config)."""
    from transformers import Gemma3Config
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(Gemma3Config(text_config=_gemma3_text(4).to_dict(),
                                                            vision_config=vision, mm_tokens_per_image=4)).eval()
    student = build_student(ModelArguments(), teacher).eval()
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits)
    teacher.save_pretrained(tmp_path / "gemma3")
    with pytest.raises(DistilyConfigError, match="is a multimodal Gemma3Config .*; expected a text-only causal LM"):
        load_teacher(str(tmp_path / "gemma3"))
