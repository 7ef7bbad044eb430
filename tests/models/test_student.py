import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import ARCHITECTURES, tiny_config
from distily.errors import DistilyConfigError
from distily.models.architecture import decoder_layers
from distily.models.arguments import ModelArguments
from distily.models.student import build_student, config_with_overrides, evenly_spaced_layers


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
