"""GGUF export: ternary tensors round-trip, tokenizer metadata, shape errors before writing, llama.cpp."""

from pathlib import Path

import numpy as np
import pytest
import torch
from file_tree import tree
from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers import (
    AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Phi3Config, PreTrainedTokenizerFast, Qwen2Config,
    Qwen3Config,
)

from distily.cli import main
from distily.commands.export import export_run
from distily.data.tokenizer import train_byte_level_bpe, train_sentencepiece_bpe
from distily.errors import DistilyConfigError
from distily.export.llama_cpp_check import llama_cpp_perplexity, pytorch_perplexity
from distily.export.report import LLAMA_CPP_NOT_INSTALLED, read_export_report

gguf = pytest.importorskip("gguf")
from distily.export import gguf as gguf_module  # noqa: E402  (needs the optional gguf package)
from distily.export.gguf import write_gguf  # noqa: E402
from distily.models.bitnet import bitlinear_modules, convert_to_bitnet, fake_quantize_activations

VOCAB = 320
TINY_CONFIGS = {
    "gpt2": lambda **kw: GPT2Config(**{"vocab_size": VOCAB, "n_embd": 256, "n_layer": 2, "n_head": 4,
                                       "n_positions": 64, **kw}),
    "llama": lambda **kw: LlamaConfig(**{"vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 512,
                                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                         "max_position_embeddings": 64, **kw}),
    "phi3": lambda **kw: Phi3Config(**{"vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 512,
                                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                                       "max_position_embeddings": 64, "pad_token_id": 0, **kw}),
}
QWEN = {"vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
TINY_CONFIGS.update({
    "mistral": lambda **kw: MistralConfig(**{**QWEN, "sliding_window": None, **kw}),
    "qwen2": lambda **kw: Qwen2Config(**{**QWEN, "tie_word_embeddings": True, **kw}),
    "qwen3": lambda **kw: Qwen3Config(**{**QWEN, "head_dim": 128, **kw}),  # head_dim other than width / heads
})
EXPECTED_ARCH = {"gpt2": "gpt2", "llama": "llama", "phi3": "phi3", "mistral": "llama", "qwen2": "qwen2",
                 "qwen3": "qwen3"}


def tiny_student(architecture: str, options: dict | None = None, **config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[architecture](**config)).eval()
    return convert_to_bitnet(model, **(options or {}))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    train_byte_level_bpe(["the quick brown fox jumps over the lazy dog"] * 8, VOCAB - 16).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sentencepiece_tokenizer_dir(tmp_path_factory):
    """A Llama-2-style tokenizer.json: BPE over "▁"-joined text with byte fallback tokens <0xNN>."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 16, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 8, trainer)
    path = tmp_path_factory.mktemp("sentencepiece")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def unprefixed_sentencepiece_dir(tmp_path_factory):
    """A SentencePiece-style tokenizer whose Metaspace never puts "▁" before a text (Gemma-like)."""
    path = tmp_path_factory.mktemp("unprefixed")
    train_sentencepiece_bpe(["the quick brown fox jumps over the lazy dog"] * 8, VOCAB - 16,
                            prepend_scheme="never").save_pretrained(path)
    return path


def field_value(reader: gguf.GGUFReader, key: str):
    return reader.get_field(key).contents()


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row order (pairs interleaved) back to HF's half-split order."""
    rows, columns = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, columns).transpose(0, 2, 1, 3).reshape(rows, columns)


@pytest.mark.parametrize("architecture", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_gguf_tensors_round_trip(architecture, qtype, tokenizer_dir, tmp_path):
    student = tiny_student(architecture)
    path = write_gguf(student, tokenizer_dir, tmp_path / "student.gguf", qtype=qtype)
    reader = gguf.GGUFReader(str(path))
    assert field_value(reader, "general.architecture") == EXPECTED_ARCH[architecture]
    stored = {tensor.name: tensor for tensor in reader.tensors}
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[EXPECTED_ARCH[architecture].upper()], 2)
    for name, layer in bitlinear_modules(student):
        tensor = stored[name_map.get_name(name + ".weight", try_suffixes=(".weight",))]
        assert tensor.tensor_type == gguf.GGMLQuantizationType[qtype]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # [out, in]
        if EXPECTED_ARCH[architecture] == "llama" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = (
                student.config.num_attention_heads if "attn_q" in tensor.name else student.config.num_key_value_heads
            )
            values = unpermute_rotary(values, heads)
        ternary, scale = layer.ternary_weight()
        np.testing.assert_array_equal(values, ternary.numpy().astype(np.float32) * np.float32(np.float16(scale.item())))
    assert stored["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert stored["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_the_report_names_the_fp16_scale_a_ternary_tensor_holds(tokenizer_dir, tmp_path):
    """TQ2_0 keeps a block's scale in fp16: the file holds ternary * fp16(s), not the student's fp32 s, and the
    export's report says which it checked."""
    student = tiny_student("llama")
    path = write_gguf(student, tokenizer_dir, tmp_path / "student.gguf")
    stored = {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}["blk.0.attn_output.weight"]
    _, scale = dict(bitlinear_modules(student))["model.layers.0.self_attn.o_proj"].ternary_weight()
    file_scale = np.abs(gguf.quants.dequantize(stored.data, stored.tensor_type)).max()
    assert file_scale == np.float16(scale.item()) and file_scale != np.float32(scale.item())
    assert read_export_report(path).verified == [
        "every tensor reads back as the student's (ternary ones as ternary * fp16(scale) exactly)"
    ]


def biased_llama_student():
    """A llama student with attention biases (attention_bias=True), random so that their row order shows."""
    student = tiny_student("llama", attention_bias=True)
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    return student


@pytest.mark.parametrize("projection, heads", [("q", 4), ("k", 2)])
def test_llama_q_and_k_from_the_file_are_the_students_in_llama_cpp_order(projection, heads, tokenizer_dir, tmp_path):
    """llama.cpp computes Q = x W^T + b with W and b as stored; both rows must be in its rotary order."""
    student = biased_llama_student()
    path = write_gguf(student, tokenizer_dir, tmp_path / "student.gguf")
    stored = {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}
    weight, bias = (stored[f"blk.0.attn_{projection}.{leaf}"] for leaf in ("weight", "bias"))
    inputs = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))  # [tokens, hidden]
    quantized = fake_quantize_activations(inputs).numpy()  # the 8-bit activations BitLinear reads
    from_file = (quantized @ gguf.quants.dequantize(weight.data, weight.tensor_type).T
                 + gguf.quants.dequantize(bias.data, bias.tensor_type))  # [tokens, heads * head_dim], llama.cpp order
    with torch.no_grad():
        expected = getattr(student.model.layers[0].self_attn, f"{projection}_proj")(inputs).numpy()  # HF order
    np.testing.assert_allclose(unpermute_rotary(from_file.T, heads).T, expected, atol=2e-3)  # the fp16 scale's rounding


def test_a_bias_left_in_hf_order_fails_the_exports_check(tokenizer_dir, tmp_path, monkeypatch):
    planned = gguf_module.plan_tensors

    def hf_order_biases(model, architecture):  # the plan as it was: Q and K biases written unpermuted
        parameters = dict(model.named_parameters())
        tensors = planned(model, architecture)
        for tensor in tensors:
            if tensor.name.endswith((".attn_q.bias", ".attn_k.bias")):
                tensor.values = parameters[tensor.source].detach().numpy()
        return tensors

    monkeypatch.setattr(gguf_module, "plan_tensors", hf_order_biases)
    with pytest.raises(DistilyConfigError, match="GGUF tensor blk.0.attn_q.bias does not read back as the student's "
                                                 "model.layers.0.self_attn.q_proj.bias"):
        write_gguf(biased_llama_student(), tokenizer_dir, tmp_path / "student.gguf")
    assert list(tmp_path.iterdir()) == []


def test_gguf_tokenizer_metadata(tokenizer_dir, tmp_path):
    reader = gguf.GGUFReader(str(write_gguf(tiny_student("llama"), tokenizer_dir, tmp_path / "student.gguf")))
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert field_value(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[-1] == "[PAD319]"
    assert len(field_value(reader, "tokenizer.ggml.merges")) > 0
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    assert tokens[eos] == "<|endoftext|>"
    types = field_value(reader, "tokenizer.ggml.token_type")
    # the special token is CONTROL, as llama.cpp's converter writes it (it is also in the base vocabulary, where
    # gguf's reader left it NORMAL, printed as text by llama.cpp); an ordinary token NORMAL, padding UNUSED
    assert types[eos] == gguf.TokenType.CONTROL
    assert types[tokens.index("the")] == gguf.TokenType.NORMAL and types[-1] == gguf.TokenType.UNUSED


@pytest.mark.parametrize("prepend_scheme, written", [("always", True), ("first", True), ("never", False)])
def test_a_sentencepiece_tokenizers_space_prefix_is_written_as_it_tokenizes(prepend_scheme, written, tmp_path):
    """llama.cpp puts "▁" before a SentencePiece text unless add_space_prefix says no: a tokenizer that never does
    must say so, or llama.cpp reads "the" as "▁the" where transformers reads other tokens."""
    train_sentencepiece_bpe(["the quick brown fox"] * 8, VOCAB - 16,
                            prepend_scheme=prepend_scheme).save_pretrained(tmp_path / "tokenizer")
    path = write_gguf(tiny_student("llama"), tmp_path / "tokenizer", tmp_path / "student.gguf")
    assert field_value(gguf.GGUFReader(str(path)), "tokenizer.ggml.add_space_prefix") is written


def test_a_prepending_normalizer_is_a_space_prefix(sentencepiece_tokenizer_dir, tmp_path):
    path = write_gguf(tiny_student("llama"), sentencepiece_tokenizer_dir, tmp_path / "student.gguf")
    assert field_value(gguf.GGUFReader(str(path)), "tokenizer.ggml.add_space_prefix") is True


@pytest.mark.parametrize("fixture, model", [("tokenizer_dir", "gpt2"), ("sentencepiece_tokenizer_dir", "llama"),
                                            ("unprefixed_sentencepiece_dir", "llama")])
def test_llama_cpp_tokenizes_like_transformers(fixture, model, request, tmp_path):
    directory = request.getfixturevalue(fixture)
    path = write_gguf(tiny_student("llama"), directory, tmp_path / "student.gguf")
    assert field_value(gguf.GGUFReader(str(path)), "tokenizer.ggml.model") == model
    llama_cpp = pytest.importorskip("llama_cpp")
    text = "the lazy fox é jumps"
    vocabulary = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    expected = PreTrainedTokenizerFast.from_pretrained(directory)(text, add_special_tokens=False)["input_ids"]
    assert vocabulary.tokenize(text.encode(), add_bos=False) == expected
    vocabulary.close()


def test_subln_llama_becomes_llama_cpp_bitnet(tokenizer_dir, tmp_path):
    student = tiny_student("llama", {"subln": True}, tie_word_embeddings=True)
    reader = gguf.GGUFReader(str(write_gguf(student, tokenizer_dir, tmp_path / "student.gguf")))
    assert field_value(reader, "general.architecture") == "bitnet"
    names = {tensor.name for tensor in reader.tensors}
    assert {"blk.0.attn_sub_norm.weight", "blk.1.ffn_sub_norm.weight"} <= names and "output.weight" not in names


@pytest.mark.parametrize("architecture, config, match", [
    ("llama", {"intermediate_size": 320}, "blk.0.ffn_down.weight as TQ2_0: row length 320; expected a multiple of 256"),
    ("gpt2", {"n_inner": 640}, "row length 640; expected a multiple of 256"),
])
def test_unpackable_shape_fails_before_writing(architecture, config, match, tokenizer_dir, tmp_path):
    with pytest.raises(DistilyConfigError, match=match):
        write_gguf(tiny_student(architecture, **config), tokenizer_dir, tmp_path / "student.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("architecture, options, match", [
    ("llama", {"input_norm": True}, "input_norm=True students have no llama.cpp graph"),
    ("gpt2", {"subln": True}, "subln GGUF export needs model_type 'llama'"),
    ("llama", {"subln": True}, "expected tie_word_embeddings=True"),
])
def test_unsupported_students_are_rejected(architecture, options, match, tokenizer_dir, tmp_path):
    with pytest.raises(DistilyConfigError, match=match):
        write_gguf(tiny_student(architecture, options), tokenizer_dir, tmp_path / "student.gguf")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DistilyConfigError, match="'TQ3_0' is not supported"):
        write_gguf(tiny_student("llama"), tokenizer_dir, tmp_path / "student.gguf", qtype="TQ3_0")


@pytest.mark.parametrize("architecture, config", [
    ("mistral", {"sliding_window": 16}), ("qwen2", {"use_sliding_window": True, "sliding_window": 16}),
])
def test_a_student_attending_in_a_sliding_window_is_refused(architecture, config, tokenizer_dir, tmp_path):
    """llama.cpp's llama and qwen2 graphs attend to every earlier position: a windowed student would run otherwise."""
    with pytest.raises(DistilyConfigError, match="sliding window of 16 tokens, which llama.cpp's"):
        write_gguf(tiny_student(architecture, **config), tokenizer_dir, tmp_path / "student.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("architecture, config, activation", [
    ("llama", {"hidden_act": "gelu"}, "'gelu' is not what llama.cpp's llama graph computes; expected one of silu"),
    ("phi3", {"hidden_act": "relu"}, "'relu' is not what llama.cpp's phi3 graph computes"),
    ("gpt2", {"activation_function": "relu"}, "'relu' is not what llama.cpp's gpt2 graph computes"),
])
def test_a_student_whose_activation_llama_cpp_does_not_compute_is_refused(architecture, config, activation,
                                                                             tokenizer_dir, tmp_path):
    """llama.cpp's graphs fix the feed-forward activation (the file cannot say another): such a student would
    load and run with other outputs."""
    with pytest.raises(DistilyConfigError, match=activation):
        write_gguf(tiny_student(architecture, **config), tokenizer_dir, tmp_path / "student.gguf")
    assert list(tmp_path.iterdir()) == []


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
LLAMA3 = {"rope_parameters": LLAMA3_ROPE, "max_position_embeddings": 128}  # longer than the original context


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1's frequency scaling (Meta's reference: short wavelengths kept, long ones divided by ``factor``,
    a smooth blend between), as the divisor of each default frequency: what llama.cpp's rope_freqs holds."""
    low_wavelength = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelength = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    factors = []
    for frequency in 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim):
        wavelength = 2 * np.pi / frequency
        if wavelength < high_wavelength:
            factors.append(1.0)
        elif wavelength > low_wavelength:
            factors.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelength - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(factors)


@pytest.mark.parametrize("rope, expected", [
    (LLAMA3_ROPE, lambda head_dim: llama3_rope_factors(LLAMA3_ROPE, head_dim)),
    ({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, lambda head_dim: np.full(head_dim // 2, 4.0)),
])
def test_a_rescaled_rotary_embedding_is_written_as_llama_cpps_rope_freqs(rope, expected, tokenizer_dir, tmp_path):
    """A Llama 3.x student (rope_type llama3) or a linearly scaled one: llama.cpp's llama graph divides its default
    frequencies by rope_freqs, which must be the published scaling's factors."""
    path = write_gguf(tiny_student("llama", rope_parameters=rope, max_position_embeddings=128), tokenizer_dir,
                      tmp_path / "student.gguf")
    reader = gguf.GGUFReader(str(path))
    stored = {tensor.name: tensor for tensor in reader.tensors}["rope_freqs.weight"]
    head_dim = 256 // 4
    factors = expected(head_dim)
    if rope["rope_type"] == "llama3":  # the frequencies span the three cases: kept, blended and divided
        assert 1.0 in factors and rope["factor"] in factors and ((factors > 1) & (factors < rope["factor"])).any()
    np.testing.assert_allclose(np.asarray(stored.data, dtype=np.float64), factors, rtol=1e-5)
    assert field_value(reader, "llama.rope.freq_base") == rope["rope_theta"]
    default = write_gguf(tiny_student("llama"), tokenizer_dir, tmp_path / "default.gguf")
    assert "rope_freqs.weight" not in {tensor.name for tensor in gguf.GGUFReader(str(default)).tensors}


@pytest.mark.parametrize("architecture, options, config, match", [
    ("llama", {}, {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
     "supports the rotary embeddings default, linear, llama3 over whole heads; got .*dynamic"),
    ("llama", {}, {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}}, "got .*yarn"),
    ("llama", {"subln": True}, {"tie_word_embeddings": True, **LLAMA3},
     "GGUF export of a bitnet student supports the rotary embeddings default over whole heads; got"),
])
def test_a_rotary_embedding_llama_cpp_would_rotate_otherwise_is_refused(architecture, options, config, match,
                                                                        tokenizer_dir, tmp_path):
    with pytest.raises(DistilyConfigError, match=match):
        write_gguf(tiny_student(architecture, options, **config), tokenizer_dir, tmp_path / "student.gguf")
    assert list(tmp_path.iterdir()) == []


def save_run(run_dir, tokenizer_dir):
    tiny_student("llama").save_pretrained(run_dir)
    PreTrainedTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(run_dir)


def test_export_run_gguf(tokenizer_dir, tmp_path):
    save_run(tmp_path / "run", tokenizer_dir)
    path = export_run(tmp_path / "run", "gguf")
    assert path == tmp_path / "run" / "student-tq2_0.gguf" and path.stat().st_size > 0


def test_export_run_gguf_rejects_a_llama_cpp_perplexity_mismatch(tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    save_run(tmp_path / "run", tokenizer_dir)
    monkeypatch.setattr("distily.export.llama_cpp_check.PERPLEXITY_TOLERANCE", -1.0)
    with pytest.raises(DistilyConfigError, match="llama.cpp perplexity .* differs from PyTorch's"):
        export_run(tmp_path / "run", "gguf")
    assert not any(path.suffix == ".gguf" or path.name.startswith(".") for path in (tmp_path / "run").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("architecture, options, config, head_scale", [
    ("llama", {}, {}, 2), ("gpt2", {}, {}, 8), ("phi3", {}, {}, 2),
    ("llama", {"subln": True}, {"tie_word_embeddings": True}, 2),
    ("llama", {}, LLAMA3, 2), ("mistral", {}, {}, 2), ("qwen2", {}, {}, 2),
    ("qwen3", {}, {}, 2),
])
def test_llama_cpp_perplexity_matches_pytorch(architecture, options, config, head_scale, tokenizer_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    torch.manual_seed(0)
    student = convert_to_bitnet(
        AutoModelForCausalLM.from_config(TINY_CONFIGS[architecture](**config)).eval(), **options
    )
    # peaked predictions and attention, so that a wrong layout shows (random init is near uniform)
    with torch.no_grad():
        student.get_output_embeddings().weight.mul_(head_scale)
        for name, module in student.named_modules():
            if name.endswith(("q_proj", "k_proj", "qkv_proj", "c_attn")):
                module.weight.mul_(8)
    path = write_gguf(student, tokenizer_dir, tmp_path / "student.gguf")
    tokens = torch.randint(0, VOCAB - 16, (64,), generator=torch.Generator().manual_seed(3))
    reference = pytorch_perplexity(student, tokens)
    assert reference > 1.1 * VOCAB  # worse than uniform: the predictions are confident
    assert llama_cpp_perplexity(path, tokens) == pytest.approx(reference, rel=0.02)



def test_export_command_says_llama_cpp_did_not_verify_the_file(tokenizer_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("distily.export.gguf.llama_cpp_available", lambda: False)  # as where it is not installed
    save_run(tmp_path / "run", tokenizer_dir)
    assert main(["export", str(tmp_path / "run"), "--format", "gguf"]) == 0
    path = tmp_path / "run" / "student-tq2_0.gguf"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"wrote {path}; verified: every tensor reads back as the student's (ternary ones as ternary * "
                    "fp16(scale) exactly); not verified with llama.cpp: llama-cpp-python is not installed; "
                    "`pip install 'distily[llamacpp]'`")
    report = read_export_report(path)  # the file carries the same report in its metadata
    assert report.not_verified == [LLAMA_CPP_NOT_INSTALLED]


def test_llama_cpp_extra_installs_what_the_message_names():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads(
        (Path(__file__).parents[2] / "pyproject.toml").read_text()
    )["project"]["optional-dependencies"]
    assert any(requirement.startswith("llama-cpp-python") for requirement in extras["llamacpp"])
    assert any(requirement.startswith("gguf") for requirement in extras["llamacpp"])


def test_llama_cpp_check_is_reported_when_it_ran(tokenizer_dir, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr("distily.export.gguf.llama_cpp_available", lambda: True)
    monkeypatch.setattr("distily.export.gguf.check_llama_cpp_perplexity", lambda *args: ran.append(args) or (1.0, 1.0))
    path = write_gguf(tiny_student("llama"), tokenizer_dir, tmp_path / "student.gguf", perplexity_ids=torch.arange(8))
    assert len(ran) == 1
    report = read_export_report(path)
    assert report.not_verified == [] and "llama.cpp perplexity within 2% of the student's" in report.verified
    assert report.line(path).startswith(f"wrote and verified {path} (")


def test_gguf_export_replaces_a_previous_one_only_with_overwrite(tokenizer_dir, tmp_path, capsys):
    save_run(tmp_path / "run", tokenizer_dir)
    path = export_run(tmp_path / "run", "gguf")
    before, inode = tree(tmp_path), path.stat().st_ino
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"distily export: error: output '{path}' already exists; expected a new path, "
        "or --overwrite to replace a previous GGUF export"
    )
    assert tree(tmp_path) == before
    assert main(["export", str(tmp_path / "run"), "--format", "gguf", "--overwrite"]) == 0
    assert path.stat().st_ino != inode and tree(tmp_path) == before  # the same file again, renamed in


@pytest.mark.parametrize("content, reason", [
    (b"my notes", "it is not a GGUF file"),
    ("someone else's GGUF", "its general.name is 'someone-elses-model'"),
])
def test_gguf_export_never_replaces_a_file_it_did_not_write(content, reason, tokenizer_dir, tmp_path, capsys):
    save_run(tmp_path / "run", tokenizer_dir)
    output = tmp_path / "model.gguf"
    if isinstance(content, bytes):
        output.write_bytes(content)
    else:
        writer = gguf.GGUFWriter(str(output), "llama")
        writer.add_name("someone-elses-model")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "gguf", "--output", str(output), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"is not a previous GGUF export ({reason}" in err, err
    assert tree(tmp_path) == before


def test_a_failed_gguf_overwrite_leaves_the_previous_file(tokenizer_dir, tmp_path, monkeypatch):
    save_run(tmp_path / "run", tokenizer_dir)
    export_run(tmp_path / "run", "gguf")
    before = tree(tmp_path)

    def failing(*args):
        raise DistilyConfigError("verification failed")

    monkeypatch.setattr("distily.export.gguf.verify_gguf", failing)
    with pytest.raises(DistilyConfigError, match="verification failed"):
        export_run(tmp_path / "run", "gguf", overwrite=True)
    assert tree(tmp_path) == before
