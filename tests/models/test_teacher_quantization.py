"""A teacher loaded in 8 or 4 bits by bitsandbytes (its CPU backend here): frozen, smaller, close to the
full-precision teacher; the student still built from the full-precision weights."""

import importlib.util
import json

import pytest
import torch

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.models.teacher import load_teacher
from distily.objectives.losses import forward_kl
from distily.training.distill import run_distillation

LAYER_CLASSES = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}
MAX_KL = {"8bit": 0.05, "4bit": 1.0}  # nats per token against the full-precision teacher (tiny random models)


@pytest.mark.parametrize("bits", LAYER_CLASSES)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "phi3"])
def test_quantized_teacher_is_frozen_smaller_and_close(arch, bits, teacher_dirs):
    pytest.importorskip("bitsandbytes")
    full = load_teacher(teacher_dirs[arch])
    quantized = load_teacher(teacher_dirs[arch], quantization=bits)
    assert any(type(module).__name__ == LAYER_CLASSES[bits] for module in quantized.modules())
    assert not quantized.training and not any(p.requires_grad for p in quantized.parameters())
    assert quantized.get_memory_footprint() < 0.5 * full.get_memory_footprint()
    input_ids = torch.randint(0, full.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, logits = full(input_ids).logits, quantized(input_ids).logits  # [batch, seq, vocab]
    kl = forward_kl(logits.flatten(0, 1), reference.flatten(0, 1)).mean().item()
    assert kl < MAX_KL[bits], kl


def test_without_bitsandbytes_the_error_says_what_to_install(teacher_dirs, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else find_spec(name))
    with pytest.raises(DistilyConfigError,
                       match=r"teacher_quantization='4bit' needs bitsandbytes.*distily\[quantization\]"):
        load_teacher(teacher_dirs["llama"], quantization="4bit")


def test_unknown_quantization_is_a_config_error(run_values, teacher_dirs):
    with pytest.raises(DistilyConfigError, match="teacher_quantization='3bit' is not supported; expected one of none"):
        parse_config(**run_values(teacher_dirs["llama"], teacher_quantization="3bit"))


def test_distilling_from_an_8bit_teacher_reports_its_quality(run_values, teacher_dirs, tmp_path):
    pytest.importorskip("bitsandbytes")
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=1)
    metrics = run_distillation(parse_config(**values, teacher_quantization="8bit"))
    teacher = metrics["teacher"]
    assert teacher["quantization"] == "8bit" and teacher["memory_bytes"] < teacher["size_on_disk_bytes"]
    assert teacher["perplexity"] > 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "quantization_config" not in config  # the student is a plain full-precision model
