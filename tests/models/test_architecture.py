import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from tiny import tiny_config
from distily.models.architecture import plain_lm_head
from distily.models.bitnet import BitLinear


def tiny_model(arch="llama", **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_plain_linear_head_is_fusable(arch):
    model = tiny_model(arch)
    head = model.get_output_embeddings()
    hidden = torch.randn(2, 5, head.in_features)
    torch.testing.assert_close(head(hidden), nn.functional.linear(hidden, head.weight, head.bias))
    assert plain_lm_head(model)


def test_logit_softcapping_after_the_head_is_not_fusable():
    model = tiny_model()
    model.config.final_logit_softcapping = 30.0
    assert not plain_lm_head(model)


def test_a_head_with_its_own_forward_is_not_fusable():
    """A ternary (or quantized) head is an nn.Linear whose output is not F.linear(x, weight): fusing it
    would silently use the latent full-precision weights."""
    model = tiny_model()
    model.set_output_embeddings(BitLinear.from_module(model.get_output_embeddings()))
    head = model.get_output_embeddings()
    hidden = torch.randn(2, 5, head.in_features)
    assert not torch.allclose(head(hidden), nn.functional.linear(hidden, head.weight, head.bias))
    assert not plain_lm_head(model)


def test_a_wrapped_head_is_not_fusable():
    model = tiny_model()
    model.set_output_embeddings(nn.Sequential(model.get_output_embeddings()))
    assert not plain_lm_head(model)
