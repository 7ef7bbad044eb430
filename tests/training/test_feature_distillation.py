"""Feature distillation end to end: a narrower student learns the teacher's hidden states through a linear
projector; projectors train with the student, are checkpointed and restored, and are never exported."""

import json

import datasets
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.objective import build_objective
from distily.teachers.live import LiveTeacher
from distily.training.distill import run_distillation
from distily.training.trainer import DistillationTrainer

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
    assert exported.keys() <= tiny_student().state_dict().keys()  # the student's own weights, no projector


def trainer_for(tmp_path, objective_seed: int, max_steps: int = 4) -> DistillationTrainer:
    """A trainer of a live teacher, a narrower student and an objective with trainable heads (orthogonal projectors,
    affine norms), checkpointing every 2 steps into tmp_path/run."""
    data_dir = tmp_path / "data"
    if not data_dir.exists():
        datasets.Dataset.from_dict({"input_ids": [d[:24] for d in documents(32)]}).save_to_disk(str(data_dir))
    teacher_dir = tmp_path / "teacher"
    if not teacher_dir.exists():
        save_teacher_with_tokenizer(teacher_dir)
    config = parse_config(
        teacher_model_name_or_path=str(teacher_dir), dataset_name=str(data_dir), output_dir=str(tmp_path / "run"),
        max_steps=max_steps, save_strategy="steps", save_steps=2, save_total_limit=0, eval_strategy="no",
        logging_steps=1, report_to="none", learning_rate=1e-2, weight_decay=0.1, warmup_steps=0,
        per_device_train_batch_size=4, seed=0,
    )
    teacher, student = LiveTeacher(config), tiny_student()
    torch.manual_seed(objective_seed)
    objective = build_objective(
        ObjectiveArguments(hidden_states_weight=1.0, hidden_states_projector="orthogonal", hidden_states_norm="affine",
                           attention_relations_weight=1.0),
        teacher.model.config,
        student.config,
        VOCAB,
    )
    train = datasets.load_from_disk(str(data_dir)).with_format("torch")
    return DistillationTrainer(model=student, teacher=teacher, objective=objective, args=config.training,
                               train_dataset=train, data_collator=teacher.collate_fn())


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
    decayed = [group for group in trainer.optimizer.param_groups if group["weight_decay"] > 0]
    heads = {id(parameter) for parameter in trainer.objective.parameters()}
    assert decayed and not any(id(parameter) in heads for group in decayed for parameter in group["params"])

    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = load_file(str(checkpoint / "model.safetensors"))  # the Trainer's model: the student and the heads
    assert all(torch.equal(saved[f"objective.{name}"], final[name]) for name in final)
    assert {name for name in saved if name.startswith("objective.")} == {f"objective.{name}" for name in final}

    trainer.save_model(str(tmp_path / "export"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert load_file(str(tmp_path / "export" / "model.safetensors")).keys() <= exported.state_dict().keys()
    for name, tensor in trainer.student.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name

    resumed = trainer_for(tmp_path, objective_seed=1)  # other initial projectors
    assert any(not torch.equal(objective_state(resumed)[name], initial[name]) for name in initial)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    after_resume = objective_state(resumed)
    for name in final:
        assert torch.allclose(after_resume[name], final[name], atol=1e-5), name
    for name, tensor in trainer.student.state_dict().items():
        assert torch.allclose(resumed.student.state_dict()[name], tensor, atol=1e-5), name


def test_resuming_from_a_checkpoint_without_the_objective_state_is_a_config_error(tmp_path):
    trainer = trainer_for(tmp_path, objective_seed=0, max_steps=2)
    trainer.train()
    weights = tmp_path / "run" / "checkpoint-2" / "model.safetensors"
    save_file({name: tensor for name, tensor in load_file(str(weights)).items() if not name.startswith("objective.")},
              str(weights), metadata={"format": "pt"})
    resumed = trainer_for(tmp_path, objective_seed=0, max_steps=4)
    with pytest.raises(DistilyConfigError, match="does not fit this objective"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
