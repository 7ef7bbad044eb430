"""BitNet through the pipeline: `student_as_bitnet`, the two-stage schedule, and `distily export`."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.config import parse_config
from distily.models.bitnet import BitLinear, bitlinear_modules, load_bitnet_student
from distily.models.student import load_student
from distily.training.bitnet_schedule import LATENT_GROUP
from distily.training.distill import run_distillation
from distily.training.trainer import DistillationTrainer


def test_bitnet_student_with_schedule_trains_and_exports(teacher_dirs, run_values, monkeypatch, capsys):
    seen = {}
    original = DistillationTrainer.train

    def train(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        groups = {group.get("name"): group for group in self.optimizer.param_groups}
        latent = {id(p) for p in groups[LATENT_GROUP]["params"]}
        seen["latent_is_bitlinear"] = latent == {id(layer.weight) for _, layer in bitlinear_modules(self.model)}
        seen["final_decay"] = groups[LATENT_GROUP]["weight_decay"]
        seen["others_decay"] = [g["weight_decay"] for g in self.optimizer.param_groups if g.get("name") != LATENT_GROUP]
        return output

    monkeypatch.setattr(DistillationTrainer, "train", train)
    values = run_values(
        teacher_dirs["llama"],
        student_config_overrides={"num_hidden_layers": 2},
        student_as_bitnet=True,
        bitnet_schedule=True,
        weight_decay=0.1,
        max_steps=6,
    )
    metrics = run_distillation(parse_config(**values))
    assert seen["latent_is_bitlinear"]
    assert seen["final_decay"] == 0.0  # the second stage turned weight decay off
    assert set(seen["others_decay"]) == {0.0}  # never on full-precision parameters
    assert metrics["student"]["after_loss"] > 0
    assert metrics["student"]["architecture"]["bitnet_in_transformers"]  # the model card says how it loads

    out = Path(values["output_dir"])
    reloaded = load_student(str(out))
    assert any(isinstance(module, BitLinear) for module in reloaded.modules())
    # plain transformers loads the run as the ternary model it trained (it was the full-precision one of its latent
    # weights): in float64, the logits of Distily's loader
    tokens = torch.randint(0, reloaded.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch._dynamo.config.patch(disable=True), torch.no_grad():  # transformers compiles its quantisers
        plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64)(tokens).logits
        assert torch.equal(plain, load_bitnet_student(out, dtype=torch.float64)(tokens).logits)
    assert main(["export", str(out), "--format", "packed"]) == 0
    assert (out / "packed" / "config.json").exists()
    assert "wrote and verified" in capsys.readouterr().out


def test_schedule_without_bitnet_student_is_an_error(teacher_dirs, run_values):
    from distily.errors import DistilyConfigError

    values = run_values(teacher_dirs["llama"], bitnet_schedule=True)
    with pytest.raises(DistilyConfigError, match="bitnet_schedule=true needs a BitNet student"):
        run_distillation(parse_config(**values))


def test_exporting_a_dense_run_is_a_one_line_error(teacher_dirs, capsys):
    assert main(["export", teacher_dirs["llama"], "--format", "packed"]) == 2
    assert "error" in capsys.readouterr().err
