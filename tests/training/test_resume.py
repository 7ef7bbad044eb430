"""A run stopped by Ctrl-C and resumed with the same command ends with the uninterrupted run's student, bit for bit
(fp32 on the CPU), where a resume has state of its own to take back: which batches go on-policy and what the student
samples, the BitNet schedule's stage, a step of several micro-batches, the best checkpoint, the shuffled order of a
run by epochs."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distily.config import parse_config
from distily.errors import RunInterrupted
from distily.training.distill import run_distillation
from distily.training.trainer import DistillationTrainer
from tiny import make_chat_tokenizer, make_conversations, save_tiny_model, write_chat_jsonl

BEST = {"eval_strategy": "steps", "eval_steps": 3, "load_best_model_at_end": True, "metric_for_best_model": "loss",
        "greater_is_better": True}  # the best is the first evaluation's, before the interruption


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(root / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    return {"teacher_model_name_or_path": teacher, "max_seq_length": 128, "max_samples": 48, "max_eval_samples": 8,
            "dataset_name": write_chat_jsonl(root / "chat.jsonl", make_conversations(160))}


def _interrupted_at_micro_batch(values: dict, micro_batch: int, monkeypatch) -> None:
    """Run ``values``, with Ctrl-C as the training's ``micro_batch``-th micro-batch (counted from 1) starts."""
    compute_loss, calls = DistillationTrainer.compute_loss, []

    def ctrl_c(self, model, *args, **kwargs):
        calls.extend([None] * model.training)
        if len(calls) == micro_batch:
            raise KeyboardInterrupt
        return compute_loss(self, model, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(DistillationTrainer, "compute_loss", ctrl_c)
        with pytest.raises(RunInterrupted):
            run_distillation(parse_config(**values))


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, micro_batch",
    [
        ({"lmbda": 0.5, "on_policy_max_new_tokens": 8, "on_policy_temperature": 1.0, "per_device_train_batch_size": 2,
          "gradient_accumulation_steps": 2}, 9),  # the first micro-batch of step 5: from checkpoint-3
        # from checkpoint-3 over the stage boundary (step 4)
        ({"student_as_bitnet": True, "bitnet_schedule": True, "weight_decay": 0.1, "warmup_steps": 2}, 5),
        ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, 12),  # between step 6's micro-batches
        (BEST, 7),
        ({"max_steps": -1, "num_train_epochs": 2, "data_seed": 7}, 11),  # 6 steps an epoch: from step 9
    ],
    ids=["on-policy", "bitnet-schedule", "accumulation", "best-checkpoint", "epochs"],
)
def test_a_run_interrupted_then_resumed_ends_with_the_uninterrupted_student(setting, micro_batch, chat_run,
                                                                             teacher_dirs, run_values, tmp_path,
                                                                             monkeypatch):
    data = chat_run if "lmbda" in setting else {"max_samples": 24}
    run = {"student_config_overrides": {"num_hidden_layers": 2}, "max_steps": 8, "save_strategy": "steps",
           "save_steps": 3, "learning_rate": 1e-3, "use_cpu": True}
    base = run_values(teacher_dirs["llama"], **{**run, **data, **setting})
    reference = {**base, "output_dir": str(tmp_path / "reference")}
    expected = run_distillation(parse_config(**reference))
    resumed = {**base, "output_dir": str(tmp_path / "resumed")}
    _interrupted_at_micro_batch(resumed, micro_batch, monkeypatch)
    found = run_distillation(parse_config(**resumed, resume_from_checkpoint="true"))
    assert 0 < found["train"]["resumed_from_step"] < found["train"]["global_step"] == expected["train"]["global_step"]
    assert found["student"]["after_loss"] == expected["student"]["after_loss"]
    assert found["train"]["train_loss"] == expected["train"]["train_loss"]
    weights = [load_file(Path(run["output_dir"]) / "model.safetensors") for run in (reference, resumed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
