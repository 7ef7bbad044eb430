"""Feature distillation end to end: a narrower student learns the teacher's hidden states through a linear
projector; projectors train with the student, are checkpointed and restored, and are never exported."""

import json
import os

import datasets
import pytest
import torch
import torch.multiprocessing
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from distily.config import parse_config
from distily.data.text import collate
from distily.errors import DistilyConfigError
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.objective import build_objective
from distily.training.arguments import DistillationTrainingArguments
from distily.training.distill import run_distillation
from distily.training.trainer import (
    OBJECTIVE_STATE_FILE,
    DistillationTrainer,
    average_across_processes,
    load_objective_state,
)

VOCAB = 128
STUDENT_SHAPE = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                 "num_key_value_heads": 1}


def teacher_config() -> LlamaConfig:
    """A random teacher whose weights are large enough (initializer_range 0.1) for peaked, non-uniform
    next-token distributions: the default 0.02 gives a near-uniform teacher and a near-zero logit KL."""
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_teacher(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(teacher_config()).eval().requires_grad_(False)


def tiny_student(seed: int = 1):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**teacher_config().to_dict(), **STUDENT_SHAPE}))


def documents(count: int, seed: int = 0) -> list[list[int]]:
    """Token sequences with structure a model can learn: runs of a step pattern from a random start."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(3, VOCAB, (count,), generator=generator)
    steps = torch.randint(1, 5, (count,), generator=generator)
    return [[3 + (int(start) + i * int(step)) % (VOCAB - 3) for i in range(40)] for start, step in zip(starts, steps)]


def save_teacher_with_tokenizer(path) -> str:
    """A tiny Llama teacher and a word-level tokenizer over its vocabulary, as a local checkpoint."""
    tiny_teacher().save_pretrained(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_hidden_state_distillation_into_a_narrower_student_lowers_heldout_feature_loss_and_logit_kl(tmp_path):
    dataset_dir = tmp_path / "data"
    datasets.Dataset.from_dict({"input_ids": documents(240)}).save_to_disk(str(dataset_dir))
    config = parse_config(
        teacher_model_name_or_path=save_teacher_with_tokenizer(tmp_path / "teacher"),
        student_config_overrides=STUDENT_SHAPE,
        student_init="random",
        dataset_name=str(dataset_dir),
        tokenization_cache_dir=str(tmp_path / "cache"),
        max_seq_length=32,
        eval_fraction=0.1,
        max_eval_samples=16,
        hidden_states_weight=1.0,
        hidden_states_layer_map="uniform_last",
        hidden_states_projector="linear",
        output_dir=str(tmp_path / "run"),
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        warmup_steps=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    metrics = run_distillation(config)
    student = metrics["student"]
    print(json.dumps({key: value for key, value in student.items() if "loss" in key or "kl" in key}, indent=1))
    assert student["after_loss_hidden_states"] < 0.9 * student["before_loss_hidden_states"]
    assert student["after_kl_to_teacher"] < 0.8 * student["before_kl_to_teacher"]
    exported = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert not any("projector" in name or "components" in name for name in exported)
    assert not (tmp_path / "run" / OBJECTIVE_STATE_FILE).exists()


def trainer_for(tmp_path, objective_seed: int, max_steps: int = 4) -> DistillationTrainer:
    teacher, student = tiny_teacher(), tiny_student()
    torch.manual_seed(objective_seed)
    objective = build_objective(
        ObjectiveArguments(hidden_states_weight=1.0, hidden_states_projector="orthogonal", hidden_states_norm="affine",
                           attention_relations_weight=1.0),
        teacher.config,
        student.config,
        VOCAB,
    )
    args = DistillationTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=max_steps, save_strategy="steps", save_steps=2,
        save_total_limit=0, eval_strategy="no", logging_steps=1, report_to="none", learning_rate=1e-2,
        warmup_steps=0, per_device_train_batch_size=4, seed=0,
    )
    train = datasets.Dataset.from_dict({"input_ids": [d[:24] for d in documents(32)]}).with_format("torch")
    return DistillationTrainer(model=student, teacher_model=teacher, objective=objective, args=args,
                               train_dataset=train, data_collator=collate)


def objective_state(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in trainer.objective.state_dict().items()}


@pytest.mark.slow
def test_objective_state_is_trained_checkpointed_restored_on_resume_and_not_exported(tmp_path):
    trainer = trainer_for(tmp_path, objective_seed=0)
    initial = objective_state(trainer)
    trainer.train()
    final = objective_state(trainer)
    assert any(not torch.equal(initial[name], final[name]) for name in final), "the optimizer trains the projectors"
    assert all(parameter.grad is None for parameter in trainer.objective.parameters()), "zeroed after each step"
    assert any("loss_hidden_states" in log and "loss_attention_relations" in log for log in trainer.state.log_history)

    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = load_file(str(checkpoint / OBJECTIVE_STATE_FILE))
    assert saved.keys() == final.keys() and all(torch.equal(saved[name], final[name]) for name in final)
    assert not any("components" in name for name in load_file(str(checkpoint / "model.safetensors")))

    trainer.save_model(str(tmp_path / "export"))
    assert not (tmp_path / "export" / OBJECTIVE_STATE_FILE).exists()
    assert not any("components" in name for name in load_file(str(tmp_path / "export" / "model.safetensors")))

    resumed = trainer_for(tmp_path, objective_seed=1)  # other initial projectors
    assert any(not torch.equal(objective_state(resumed)[name], initial[name]) for name in initial)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    after_resume = objective_state(resumed)
    for name in final:
        assert torch.allclose(after_resume[name], final[name], atol=1e-5), name
    for name, tensor in trainer.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[name], tensor, atol=1e-5), name


def test_resuming_from_a_checkpoint_without_the_objective_state_is_a_config_error(tmp_path):
    trainer = trainer_for(tmp_path, objective_seed=0)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DistilyConfigError, match=f"has no {OBJECTIVE_STATE_FILE}"):
        load_objective_state(trainer.objective, str(tmp_path / "empty"))


def _average_in_process(rank: int, world_size: int, init_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        projector, norm = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
        projector.grad = torch.full((3,), float(rank + 1))
        if rank == 0:
            norm.grad = torch.ones(2)  # no gradient on the other process
        average_across_processes([projector, norm], world_size)
        assert torch.equal(projector.grad, torch.full((3,), 1.5)) and torch.equal(norm.grad, torch.full((2,), 0.5))
    finally:
        torch.distributed.destroy_process_group()


def test_objective_gradients_are_averaged_over_processes_like_ddp(tmp_path):
    torch.multiprocessing.start_processes(
        _average_in_process, args=(2, str(tmp_path / "init")), nprocs=2, start_method="fork"
    )
