"""Generation with a student of a hybrid teacher that kept none of its attention layers, or whose first layer caches
nothing: transformers' own cache makes these models raise in every forward with use_cache=True; with Distily's, they
generate what their full forward continues greedily, one token per step after the prompt."""

import pytest
import torch
import transformers as hf
from transformers import AutoModelForCausalLM

from distily.generation.arguments import SamplingSettings
from distily.generation.engine import HFGenerator
from distily.generation.recurrent_cache import cache_argument
from distily.models.arguments import ModelArguments
from distily.models.student import build_student

EOS, PAD = 0, 0
PROMPTS = [[5, 17, 42, 9, 33, 8, 71], [12], [101, 7, 66]]  # of different lengths: the batch is left-padded
TEXT = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            num_hidden_layers=2, initializer_range=0.2)
MAMBA2 = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=8)


def _recurrent_only(arch: str):
    """Tiny configs of two layers, none of them attention."""
    return {
        "bamba": lambda: hf.BambaConfig(intermediate_size=128, attn_layer_indices=[], **MAMBA2, **TEXT),
        "granitemoehybrid": lambda: hf.GraniteMoeHybridConfig(
            intermediate_size=128, shared_intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
            layer_types=["mamba", "mamba"], **MAMBA2, **TEXT),
        "recurrent_gemma": lambda: hf.RecurrentGemmaConfig(  # untied: its tied tiny head repeats the last token
            intermediate_size=128, attention_window_size=8, block_types=["recurrent"], tie_word_embeddings=False,
            **TEXT),
        "jamba": lambda: hf.JambaConfig(intermediate_size=128, attn_layer_period=3, attn_layer_offset=2,
                                        mamba_d_state=8, **TEXT),
        "nemotron_h": lambda: hf.NemotronHConfig(
            head_dim=16, intermediate_size=128, mamba_num_heads=8, mamba_head_dim=16, n_groups=1, ssm_state_size=16,
            chunk_size=8, layers_block_type=["mamba", "mlp"], **{**TEXT, "num_hidden_layers": None}),
        "zamba2": lambda: hf.Zamba2Config(intermediate_size=128, n_mamba_heads=4, mamba_d_state=8, chunk_size=8,
                                          layers_block_type=["mamba", "mamba"], **TEXT),
        "lfm2": lambda: hf.Lfm2Config(intermediate_size=128, layer_types=["conv", "conv"], **TEXT),
    }[arch]()


def greedy_continuation(model, prompt: list[int], steps: int) -> list[int]:
    """``model``'s greedy continuation of ``prompt``, each token from a full forward without a cache."""
    ids = list(prompt)
    for _ in range(steps):
        token = int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
        ids.append(token)
        if token == EOS:
            break
    return ids[len(prompt):]


@pytest.mark.parametrize("arch", ["bamba", "granitemoehybrid", "recurrent_gemma", "jamba", "nemotron_h", "zamba2",
                                  "lfm2"])
def test_a_student_without_attention_layers_generates_its_greedy_continuation_with_a_cache(arch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_recurrent_only(arch)).eval()
    lengths = []  # tokens per forward pass: with a cache, one per step after the prompt
    model.get_input_embeddings().register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    generator = HFGenerator(model, SamplingSettings(12, temperature=0.0), [EOS], PAD)
    batched = generator.generate(PROMPTS)
    assert lengths[0] == len(PROMPTS[0]) and set(lengths[1:]) == {1}
    with torch.no_grad():
        assert batched == [greedy_continuation(model, prompt, 12) for prompt in PROMPTS]
    assert len({token for completion in batched for token in completion}) > 3  # not one token over and over


@pytest.mark.parametrize("layers", [[1, 2], [3, 0], [1, 0]])
def test_a_student_whose_first_layer_caches_nothing_generates_its_greedy_continuation_with_a_cache(layers):
    """A Nemotron-H student whose first layer stands for an MLP or MoE block: transformers reads the cache's length
    from that layer, which caches nothing, and raised AttributeError ('DummyLayer' object has no attribute
    'get_seq_length') in generate."""
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(hf.NemotronHConfig(
        head_dim=16, intermediate_size=128, mamba_num_heads=8, mamba_head_dim=16, n_groups=1, ssm_state_size=16,
        chunk_size=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32, layers_block_type=["mamba", "mlp", "attention", "moe"],
        **{**TEXT, "num_hidden_layers": None}))
    args = ModelArguments(student_config_overrides={"num_hidden_layers": 2}, student_layers_from_teacher=layers)
    student = build_student(args, teacher).eval()
    assert student.config.layers_block_type[0] in ("mlp", "moe")
    batched = HFGenerator(student, SamplingSettings(12, temperature=0.0), [EOS], PAD).generate(PROMPTS)
    with torch.no_grad():
        assert batched == [greedy_continuation(student, prompt, 12) for prompt in PROMPTS]


@pytest.mark.parametrize("config", [lambda: hf.BambaConfig(intermediate_size=128, attn_layer_indices=[1], **MAMBA2,
                                                           **TEXT),
                                    lambda: hf.LlamaConfig(intermediate_size=128, **TEXT)])
def test_a_model_with_an_attention_layer_generates_with_transformers_own_cache(config):
    assert cache_argument(AutoModelForCausalLM.from_config(config())) == {}
