"""`distily export` of a run whose tokenizer runs custom code; llama.cpp's pre-tokenizer for byte-level BPE."""

import json

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from distily.cli import main
from distily.commands.export import export_run
from distily.errors import DistilyConfigError
from distily.models.bitnet import convert_to_bitnet

gguf = pytest.importorskip("gguf")
from distily.export.gguf import SPLIT_PRE_TOKENIZERS, write_gguf  # noqa: E402  (needs the optional gguf package)

VOCAB = 320
TEXT = "Hello, world! (hello) it's 12345 items.\n\nNew line: x=y+z;"
LLAMA3_REGEX, QWEN2_REGEX = (regex for regex, name in SPLIT_PRE_TOKENIZERS.items() if name in ("llama-bpe", "qwen2"))


def tiny_student():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return convert_to_bitnet(AutoModelForCausalLM.from_config(config).eval())


def split_bpe_tokenizer(regex: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as Llama 3's and Qwen2's are built: a Split by `regex`, then a plain ByteLevel."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 16, special_tokens=["<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT] * 8, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|end|>")


def save_run_with_custom_tokenizer(run):
    """A run whose tokenizer_config.json maps AutoTokenizer to its own module (loads only with trust_remote_code)."""
    tiny_student().save_pretrained(run)
    split_bpe_tokenizer(LLAMA3_REGEX).save_pretrained(run)
    (run / "tokenization_custom.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass CustomTokenizerFast(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    config = json.loads((run / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="CustomTokenizerFast",
                  auto_map={"AutoTokenizer": [None, "tokenization_custom.CustomTokenizerFast"]})
    (run / "tokenizer_config.json").write_text(json.dumps(config))


def test_export_passes_trust_remote_code_to_the_runs_tokenizer(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("distily.export.gguf.llama_cpp_available", lambda: False)  # as where it is not installed
    run = tmp_path / "run"
    save_run_with_custom_tokenizer(run)
    assert main(["export", str(run), "--format", "gguf", "--trust_remote_code"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {run / 'student-tq2_0.gguf'};")


def test_a_packed_export_carries_the_tokenizers_custom_code(tmp_path):
    run = tmp_path / "run"
    save_run_with_custom_tokenizer(run)
    path = export_run(run, "packed", trust_remote_code=True)
    assert (path / "tokenization_custom.py").read_bytes() == (run / "tokenization_custom.py").read_bytes()
    assert type(AutoTokenizer.from_pretrained(path, trust_remote_code=True)).__name__ == "CustomTokenizerFast"
    assert export_run(run, "packed", overwrite=True) == path  # its own code file does not hide a previous export


@pytest.mark.parametrize("regex, name", [(LLAMA3_REGEX, "llama-bpe"), (QWEN2_REGEX, "qwen2")])
def test_a_split_byte_level_bpe_gets_llama_cpps_pre_tokenizer_of_the_same_regex(regex, name, tmp_path):
    """llama.cpp's "default" pre-tokenizer splits punctuation apart (" (", "'s", ".\\n\\n" become two tokens or
    more), so a Llama 3 or Qwen2 tokenizer written as "default" tokenizes unlike transformers."""
    split_bpe_tokenizer(regex).save_pretrained(tmp_path / "tokenizer")
    path = write_gguf(tiny_student(), tmp_path / "tokenizer", tmp_path / "student.gguf")
    assert gguf.GGUFReader(str(path)).get_field("tokenizer.ggml.pre").contents() == name


@pytest.mark.parametrize("regex", [LLAMA3_REGEX, QWEN2_REGEX])
def test_llama_cpp_tokenizes_a_split_byte_level_bpe_like_transformers(regex, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    split_bpe_tokenizer(regex).save_pretrained(tmp_path / "tokenizer")
    path = write_gguf(tiny_student(), tmp_path / "tokenizer", tmp_path / "student.gguf")
    vocabulary = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    expected = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tokenizer")(TEXT, add_special_tokens=False)
    assert vocabulary.tokenize(TEXT.encode(), add_bos=False) == expected["input_ids"]
    vocabulary.close()


def test_a_byte_level_bpe_llama_cpp_cannot_pre_tokenize_is_refused_before_writing(tmp_path):
    split_bpe_tokenizer(r"\p{N}| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+").save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(DistilyConfigError, match=r"pre-tokenizer in .*tokenizer \(.*\) is none llama.cpp reproduces; "
                                                 r"expected GPT-2's ByteLevel, or a Split by Llama 3's or Qwen2's"):
        write_gguf(tiny_student(), tmp_path / "tokenizer", tmp_path / "student.gguf")
    assert not (tmp_path / "student.gguf").exists()
