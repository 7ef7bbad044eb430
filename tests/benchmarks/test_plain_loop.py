"""training_speed's baselines do distily's work: the optimizer the Trainer builds, on the models asked for."""

import importlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from tiny import tiny_config

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _trl_arguments(output_dir: str, lr: float) -> TrainingArguments:
    pytest.importorskip("trl")
    from trl.experimental.gkd import GKDConfig

    return GKDConfig(output_dir=output_dir, learning_rate=lr, weight_decay=0.0, use_cpu=True)


@pytest.mark.parametrize("trainer", ["distily", "trl"])
def test_the_plain_loop_steps_with_the_optimizer_the_trainer_builds(trainer, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    training_speed = importlib.import_module("training_speed")
    lr = 3e-4
    arguments = (TrainingArguments(output_dir=str(tmp_path), learning_rate=lr, weight_decay=0.0, use_cpu=True)
                 if trainer == "distily" else _trl_arguments(str(tmp_path), lr))  # fmt: skip
    trainer_class, trainer_kwargs = Trainer.get_optimizer_cls_and_kwargs(arguments)
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1))

    optimizer = training_speed.plain_optimizer(student, lr)

    assert type(optimizer) is trainer_class is torch.optim.AdamW
    assert {key: optimizer.defaults[key] for key in trainer_kwargs} == trainer_kwargs
    assert trainer_kwargs["fused"] and optimizer.defaults["weight_decay"] == 0.0


def test_the_models_have_the_heads_asked_for_when_another_head_count_was_built_before(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path / "results"))  # where --quick would send results
    training_speed = importlib.import_module("training_speed")
    for heads in (2, 4):  # the same width, vocabulary, depths and sequence length in the same --workdir
        options = training_speed.parse_arguments(["--quick", "--workdir", str(tmp_path)])
        options.heads = heads  # --quick's shapes have 2

        spec = training_speed.prepare(options)

        for role in ("teacher", "student"):
            assert AutoModelForCausalLM.from_pretrained(spec[role]).config.num_attention_heads == heads
