import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from tiny import tiny_config
from distily.evaluation.token_chunks import logit_rows
from distily.models.architecture import decoder_of, plain_lm_head
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


def _gemma4_with_text_config_softcap():
    from transformers import Gemma4Config
    return Gemma4Config(text_config=dict(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, final_logit_softcapping=2.0,
        sliding_window=16, vocab_size_per_layer_input=320, hidden_size_per_layer_input=16,
    ))


def _falcon_h1_with_head_multiplier():
    from transformers import FalconH1Config
    return FalconH1Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
        mamba_d_state=16, mamba_chunk_size=16, max_position_embeddings=128, lm_head_multiplier=0.25,
    )


def _recurrent_gemma_with_softcap():
    from transformers import RecurrentGemmaConfig
    return RecurrentGemmaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        lru_width=64, attention_window_size=16, logits_soft_cap=2.0,
    )


@pytest.mark.parametrize("config", [_gemma4_with_text_config_softcap, _falcon_h1_with_head_multiplier,
                                    _recurrent_gemma_with_softcap],
                         ids=["gemma4_text_config_softcap", "falcon_h1_lm_head_multiplier",
                              "recurrent_gemma_logits_soft_cap"])
def test_a_transform_after_the_head_read_from_the_text_config_or_a_multiplier_is_not_fusable(config):
    """Gemma 4 loads as ...ForConditionalGeneration with its soft-cap in the text config; Falcon-H1 multiplies the
    head's output: fusing either would read other logits than the model's own."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config()).eval()
    ids = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        outputs = model(ids, output_hidden_states=True)
        head = model.get_output_embeddings()
        fused = nn.functional.linear(outputs.hidden_states[-1], head.weight, head.bias)
    assert not torch.allclose(fused, outputs.logits, atol=1e-4)  # the transform is real
    assert not plain_lm_head(model)


def _modernbert_decoder():
    from transformers import ModernBertDecoderConfig
    return ModernBertDecoderConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        sep_token_id=2, cls_token_id=1,
    )


def _roberta_decoder():
    from transformers import RobertaConfig
    return RobertaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=130, is_decoder=True)


def _llama4_text():
    from transformers import Llama4TextConfig
    return Llama4TextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, intermediate_size_mlp=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )


@pytest.mark.parametrize("config, fused",
                         [(_modernbert_decoder, False), (_roberta_decoder, False), (_llama4_text, True)],
                         ids=["modernbert_decoder", "roberta_decoder", "llama4_text"])
def test_a_head_behind_a_prediction_head_is_not_fused_and_llama4s_is_through_its_inner_decoder(config, fused):
    """ModernBERT's and RoBERTa's decoders put a prediction head (dense, activation, norm) between the decoder and
    the linear head, and Llama 4's causal LM has no ``get_decoder`` but itself. Fusing them read other logits than
    the model's (RoBERTa), called the linear head on the token ids (ModernBERT: its ``get_decoder`` is that head) or
    found no last hidden state (Llama 4): the teacher's first step or the first evaluation failed. The logits the
    evaluation and the live teacher read are now the model's own; Llama 4's head is fused over its inner decoder
    (``model.model``), so its 202k-token vocabulary is never held whole."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config()).eval()
    ids = torch.randint(3, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        rows, columns = logit_rows(model, batch)
        torch.testing.assert_close(rows(slice(None), columns), model(**batch).logits.flatten(0, 1))
    assert plain_lm_head(model) == fused
    assert (decoder_of(model) is getattr(model, "model", None)) == fused
