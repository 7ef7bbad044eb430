"""freeze_student_modules: named modules, and the 'embeddings' and 'lm_head' names of any architecture."""

import pytest
from transformers import AutoModelForCausalLM

from distily.models.arguments import ModelArguments
from distily.models.student import build_student
from distily.models.teacher import load_teacher
from tiny import tiny_gemma3n_config, tiny_gemma4_config

FROZEN = {  # arch -> (names frozen by 'embeddings', names frozen by 'lm_head')
    "gpt2": ({"transformer.wte.weight"}, {"transformer.wte.weight"}),  # tied: one parameter
    "llama": ({"model.embed_tokens.weight"}, {"lm_head.weight"}),
}


@pytest.mark.parametrize("arch", FROZEN)
@pytest.mark.parametrize("alias", ["embeddings", "lm_head"])
def test_alias_freezes_the_same_module_in_every_architecture(arch, alias, teacher_dirs):
    teacher = load_teacher(teacher_dirs[arch])
    student = build_student(
        ModelArguments(student_config_overrides={"num_hidden_layers": 2}, freeze_student_modules=[alias]), teacher
    )
    frozen = {name for name, parameter in student.named_parameters() if not parameter.requires_grad}
    assert frozen == FROZEN[arch][alias == "lm_head"]


@pytest.mark.parametrize("config", [tiny_gemma3n_config, tiny_gemma4_config])
def test_embeddings_freezes_the_per_layer_token_table_too(config):
    """Gemma 3n and Gemma 4 hold a second table of a vector per input token, for every layer's input: 'embeddings'
    froze the first alone, and the per-layer table (as large as the embeddings times the depth's share) trained."""
    teacher = AutoModelForCausalLM.from_config(config(layers=4))
    student = build_student(
        ModelArguments(student_config_overrides={"num_hidden_layers": 2}, freeze_student_modules=["embeddings"]),
        teacher,
    )
    frozen = {name for name, parameter in student.named_parameters() if not parameter.requires_grad}
    assert frozen == {"model.embed_tokens.weight", "model.embed_tokens_per_layer.weight"}
