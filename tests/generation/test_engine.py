"""The generation engine: batched, left-padded, in eval mode with a KV cache; the vLLM back end on a stand-in
engine with vLLM's interface (the package itself needs a GPU machine)."""

import copy
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.errors import DistilyConfigError
from distily.generation.backends import open_generator
from distily.generation.arguments import SamplingSettings
from distily.generation.engine import HFGenerator, cut_at_stop, left_padded, stop_token_ids, strip_stop
from distily.generation.vllm_engine import VLLMGenerator
from distily.models.bitnet import convert_to_bitnet
from tiny import ARCHITECTURES, make_tokenizer, tiny_config

EOS, PAD = 0, 0
PROMPTS = [[5, 17, 42, 9, 33, 8, 71], [12], [101, 7, 66]]  # of different lengths: the batch is left-padded


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, layers=2, **overrides)).eval()


def greedy(model, max_new_tokens: int = 12) -> HFGenerator:
    return HFGenerator(model, SamplingSettings(max_new_tokens, temperature=0.0), [EOS], PAD)


def test_prompts_are_left_padded():
    input_ids, attention_mask = left_padded([[4, 5, 6], [7]], pad_token_id=1)
    assert input_ids.tolist() == [[4, 5, 6], [1, 1, 7]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_completion_ends_with_the_first_stop_token():
    assert cut_at_stop([3, 4, 0, 5, 0], [0]) == [3, 4, 0]
    assert cut_at_stop([3, 4, 9, 0, 5], [0, 9]) == [3, 4, 9]  # whichever comes first
    assert cut_at_stop([3, 4], [0]) == [3, 4] and cut_at_stop([3, 0], []) == [3, 0]
    assert strip_stop([3, 4, 0], [0]) == [3, 4] and strip_stop([3, 4, 9], [0, 9]) == [3, 4]
    assert strip_stop([3, 4], [0]) == [3, 4]


def test_the_stop_tokens_are_the_tokenizers_end_of_text_and_the_models_generation_configs():
    """Chat models end a turn with a token of their own, listed in their generation config (Phi-3's
    generation_config.json: [32000, 32001, 32007]) and not the tokenizer's end of text."""
    model = tiny_model()
    model.generation_config.eos_token_id = [2, 7, 2]
    assert stop_token_ids(SimpleNamespace(eos_token_id=2), model) == [2, 7]
    model.generation_config.eos_token_id = 7
    assert stop_token_ids(SimpleNamespace(eos_token_id=None), model) == [7]
    model.generation_config.eos_token_id = None
    assert stop_token_ids(SimpleNamespace(eos_token_id=3), model) == [3]


def test_greedy_completions_stop_at_any_stop_token():
    model = tiny_model()
    free = HFGenerator(model, SamplingSettings(12, temperature=0.0), [], PAD).generate(PROMPTS)
    end_of_turn = next(token for token in free[0][2:] if token not in free[0][:2] + [EOS])  # a later token
    stopped = HFGenerator(model, SamplingSettings(12, temperature=0.0), [EOS, end_of_turn], PAD).generate(PROMPTS)
    assert stopped == [cut_at_stop(completion, [EOS, end_of_turn]) for completion in free]
    assert stopped[0][-1] == end_of_turn and len(stopped[0]) < len(free[0])


def test_completions_stop_at_the_models_last_position_and_no_prompt_is_cut_for_anothers_sake(caplog):
    """GPT-2's positions are learned: 16 of them here. A 14-token prompt has room for 2 completion tokens; the
    batch's other prompts still get all 8 (generate itself fails past the last position)."""
    model = tiny_model("gpt2", n_positions=16)
    long_prompt = list(range(1, 15))
    generator = HFGenerator(model, SamplingSettings(8, temperature=0.0), stop_ids=[], pad_token_id=PAD)
    with pytest.raises(IndexError):  # what the generator keeps from happening
        model.generate(torch.tensor([long_prompt]), max_new_tokens=8, do_sample=False, pad_token_id=PAD)
    completions = generator.generate([PROMPTS[0], long_prompt, PROMPTS[1]])
    assert [len(completion) for completion in completions] == [8, 2, 8]
    alone = [generator.generate([prompt])[0] for prompt in (PROMPTS[0], long_prompt, PROMPTS[1])]
    assert completions == alone
    assert generator.generate([list(range(1, 17))]) == [[]]  # a prompt that fills every position
    assert caplog.text.count("goes beyond the model's 16 positions") == 1  # said once, not at every batch


def test_a_runs_max_length_bounds_prompt_plus_completion():
    model = tiny_model("llama")
    unbounded = HFGenerator(model, SamplingSettings(8, temperature=0.0), stop_ids=[], pad_token_id=PAD)
    bounded = HFGenerator(model, SamplingSettings(8, temperature=0.0), [], PAD, max_length=10)
    completions = bounded.generate(PROMPTS)
    assert [len(completion) for completion in completions] == [3, 8, 7]  # 10 - 7, 8 (of 10 - 1), 10 - 3
    assert completions == [full[: len(cut)] for full, cut in zip(unbounded.generate(PROMPTS), completions)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_left_padded_greedy_equals_each_prompt_alone(arch):
    model = tiny_model(arch)
    generator = greedy(model)
    batched = generator.generate(PROMPTS)
    alone = [generator.generate([prompt])[0] for prompt in PROMPTS]
    assert batched == alone
    for prompt, completion in zip(PROMPTS, alone):  # the model's own greedy continuation, token by token
        ids = torch.tensor([prompt])
        expected = []
        for _ in range(12):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            expected.append(token)
            if token == EOS:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert completion == expected


def test_only_the_settings_shape_the_completions_not_the_models_generation_defaults():
    """A model's generation config may carry sampling defaults (Qwen2.5's repetition_penalty 1.05, top_k 20):
    generation follows the settings alone, as the vLLM back end does, and leaves the model's config as it was."""
    model = tiny_model()
    plain = greedy(model).generate(PROMPTS)
    sampled = HFGenerator(model, SamplingSettings(8, temperature=1.3), [EOS], PAD)
    torch.manual_seed(3)
    samples = sampled.generate(PROMPTS)
    defaults = model.generation_config
    defaults.repetition_penalty, defaults.no_repeat_ngram_size, defaults.top_k, defaults.min_new_tokens = 5.0, 1, 2, 12
    assert greedy(model).generate(PROMPTS) == plain
    torch.manual_seed(3)
    assert sampled.generate(PROMPTS) == samples
    assert model.generation_config is defaults and defaults.repetition_penalty == 5.0


def test_generation_runs_in_eval_mode_with_the_cache_and_restores_training_mode():
    reference = greedy(tiny_model()).generate(PROMPTS)
    model = tiny_model(attention_dropout=0.5).train()  # the same weights; dropout would change the tokens
    model.activation_checkpointing_enable()
    lengths = []  # tokens per forward pass: with the KV cache, one per step after the prompt
    model.get_input_embeddings().register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    assert greedy(model).generate(PROMPTS) == reference
    assert model.training
    assert lengths[0] == len(PROMPTS[0]) and set(lengths[1:]) == {1}


def test_sampling_is_seeded_and_respects_max_new_tokens():
    model = tiny_model()
    generator = HFGenerator(model, SamplingSettings(5, temperature=1.3, top_p=0.9), stop_ids=[], pad_token_id=PAD)
    torch.manual_seed(3)
    first = generator.generate(PROMPTS)
    torch.manual_seed(3)
    assert generator.generate(PROMPTS) == first
    assert [len(completion) for completion in first] == [5, 5, 5]


def test_constant_temperature_sampling_draws_what_the_temperature_schedule_draws():
    """Without a final temperature, generate's own temperature and top-p warpers sample (and skip the work at
    temperature 1 and top-p 1); a schedule from the temperature to itself is the same distribution, so under one
    seed the two draw the same tokens."""
    model = tiny_model()
    completions = []
    for settings in (SamplingSettings(6, 1.3, 0.9), SamplingSettings(6, 1.3, 0.9, final_temperature=1.3),
                     SamplingSettings(6, 1.0, 1.0), SamplingSettings(6, 1.0, 1.0, final_temperature=1.0)):
        torch.manual_seed(5)
        completions.append(HFGenerator(model, settings, stop_ids=[], pad_token_id=PAD).generate(PROMPTS))
    assert completions[0] == completions[1] and completions[2] == completions[3]
    assert completions[0] != completions[2]  # the temperature and top-p act


class StandInLLM:
    """vLLM's ``LLM`` as the back end uses it (``generate`` on prompt token ids, ``apply_model``), serving greedy
    completions from its own copy of a Hugging Face model."""

    def __init__(self, model):
        self.model = copy.deepcopy(model)
        self.model.load_weights = lambda weights: self.model.load_state_dict(dict(weights))
        self.loads = 0

    def apply_model(self, func):
        self.loads += 1
        return [func(self.model)]

    def generate(self, requests, sampling_params, use_tqdm=True):
        prompts = [request["prompt_token_ids"] for request in requests]
        completions = greedy(self.model, sampling_params.max_tokens).generate(prompts)
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(c) + (EOS, 7))]) for c in completions]


def test_the_vllm_back_end_samples_from_the_weights_it_was_last_given():
    student = tiny_model(seed=0)
    engine = StandInLLM(tiny_model(seed=1))  # built from other weights
    generator = VLLMGenerator(engine, SimpleNamespace(max_tokens=12), SamplingSettings(12, 0.0), [EOS])
    generator.load_weights(student)
    assert generator.generate(PROMPTS) == [cut_at_stop(c + [EOS], [EOS]) for c in greedy(student).generate(PROMPTS)]
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    changed = greedy(student).generate(PROMPTS)
    generator.load_weights(student)
    assert generator.generate(PROMPTS) == [cut_at_stop(c + [EOS], [EOS]) for c in changed]
    assert engine.loads == 2


def test_the_vllm_back_end_refuses_a_student_sharded_over_processes_in_one_line():
    engine = StandInLLM(tiny_model(seed=1))
    generator = VLLMGenerator(engine, SimpleNamespace(max_tokens=12), SamplingSettings(12, 0.0), [EOS])
    with pytest.raises(DistilyConfigError, match=r"sharded .*FSDP.*expected on_policy_backend=hf") as error:
        generator.load_weights(tiny_model(seed=0), sharded=True)
    assert "\n" not in str(error.value) and engine.loads == 0


def test_the_vllm_back_end_without_vllm_is_a_one_line_error():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(DistilyConfigError, match=r"on_policy_backend='vllm' needs the vllm package; expected"):
        open_generator("vllm", tiny_model(), None, SamplingSettings(4), max_model_len=32)


def padded_head_model(tokens: int) -> AutoModelForCausalLM:
    """A model whose logits have 64 padding columns past the tokenizer's ``tokens`` ids (an embedding padded to a
    multiple of 64), made the likeliest: they are no tokens, and a teacher with ``tokens`` rows cannot read them."""
    model = tiny_model(vocab_size=tokens + 64)
    with torch.no_grad():
        model.lm_head.weight[tokens:] *= 50
    return model


def test_completions_hold_only_the_tokenizers_ids_never_the_heads_padding_columns():
    tokenizer = make_tokenizer()
    tokens = len(tokenizer)
    model = padded_head_model(tokens)
    settings = [SamplingSettings(12, temperature=0.0), SamplingSettings(12, 1.3, 0.9),
                SamplingSettings(12, 1.3, 0.9, final_temperature=0.7)]
    unbounded = HFGenerator(model, settings[1], [EOS], PAD).generate(PROMPTS)
    assert any(token >= tokens for completion in unbounded for token in completion)  # what the bound prevents
    for sampling in settings:
        torch.manual_seed(0)
        completions = open_generator("hf", model, tokenizer, sampling, max_model_len=64).generate(PROMPTS)
        assert all(token < tokens for completion in completions for token in completion), sampling
    greedy_completions = open_generator("hf", model, tokenizer, settings[0], max_model_len=64).generate(PROMPTS)
    for prompt, completion in zip(PROMPTS, greedy_completions):  # argmax over the tokenizer's columns, token by token
        ids, expected = torch.tensor([prompt]), []
        while len(expected) < 12 and (not expected or expected[-1] != tokenizer.eos_token_id):
            expected.append(int(model(input_ids=ids).logits[0, -1, :tokens].argmax()))
            ids = torch.cat([ids, torch.tensor([[expected[-1]]])], dim=1)
        assert completion == expected


def test_the_vllm_back_end_samples_only_the_tokenizers_ids(monkeypatch):
    """The engine and its sampling parameters as vLLM's classes receive them (vllm itself needs a GPU machine)."""
    tokenizer = make_tokenizer()
    built = {}

    def recorded(name):
        return lambda *args, **kwargs: built.__setitem__(name, kwargs)

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=recorded("engine"), SamplingParams=recorded("params")))
    open_generator("vllm", padded_head_model(len(tokenizer)), tokenizer, SamplingSettings(4), max_model_len=32)
    assert built["params"]["allowed_token_ids"] == list(range(len(tokenizer)))
    open_generator("vllm", tiny_model(vocab_size=len(tokenizer)), tokenizer, SamplingSettings(4), max_model_len=32)
    assert built["params"]["allowed_token_ids"] is None  # the head has no padding columns: nothing to leave out


def test_the_vllm_back_end_refuses_a_bitnet_student_in_one_line(monkeypatch):
    """vLLM has no ternary layers (transformers' bitnet quantization_config, which plain transformers now reads from
    the student's saved copy, is no quantization method of vLLM's): it would sample from full-precision layers of the
    latent weights, not from the student."""
    student = convert_to_bitnet(tiny_model())
    built = []
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=lambda **kwargs: built.append(kwargs),
                                                             SamplingParams=lambda **kwargs: kwargs))
    with pytest.raises(DistilyConfigError, match=r"on_policy_backend='vllm' would sample from the BitNet student's "
                                                 r"full-precision latent weights.*expected on_policy_backend=hf"):
        open_generator("vllm", student, make_tokenizer(), SamplingSettings(4), max_model_len=32)
    assert not built
