"""GGUF export of BitNet students for llama.cpp, through the `gguf` package.

Ternary projections are written as TQ2_0 (2.06 bits per weight) or TQ1_0 (1.69 bits): both store
blocks of 256 values of one row with one fp16 scale per block, so a row length must be a multiple of
256 and the per-tensor absmean scale s becomes every block's scale. Dequantised, a tensor therefore
equals ternary * fp16(s) exactly; `verify_gguf` checks every tensor of the written file against the
student's parameter it came from (ternary ones against ternary * fp16(s)).

Architectures (transformers model_type -> llama.cpp architecture):
    llama, mistral   -> llama   (Q and K rows, weights and biases, permuted to llama.cpp's rotary layout; a
                                 rescaled rotary embedding, Llama 3's, as rope_freqs; no sliding window)
    qwen2, qwen3     -> qwen2, qwen3 (HF's rotary layout is theirs; Qwen3's Q/K norms as attn_q_norm/attn_k_norm)
    llama, subln     -> bitnet  (llama.cpp's BitNet graph: SubLN before attn_output and ffn_down;
                                 it ties the output to the token embedding)
    gpt2             -> gpt2
    phi3             -> phi3    (fused qkv and gate_up projections, default rotary embedding only)
An `input_norm` student (an RMSNorm inside every ternary layer) has no llama.cpp graph. llama.cpp
quantises activations per block of 256 (Q8_K) rather than per token, so its logits differ slightly
from the fake-quantised PyTorch ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel

from distily.errors import DistilyConfigError
from distily.export.llama_cpp_check import PERPLEXITY_TOLERANCE, check_llama_cpp_perplexity, llama_cpp_available
from distily.export.report import GGUF_REPORT_KEY, LLAMA_CPP_NOT_INSTALLED, ExportReport
from distily.outputs import PreviousOutput, atomic_output
from distily.models.bitnet import BitLinear, BitNetOptions, bitlinear_modules

TERNARY_TYPES = {"TQ2_0": gguf.GGMLQuantizationType.TQ2_0, "TQ1_0": gguf.GGMLQuantizationType.TQ1_0}
FILE_TYPES = {"TQ2_0": gguf.LlamaFileType.MOSTLY_TQ2_0, "TQ1_0": gguf.LlamaFileType.MOSTLY_TQ1_0}
# general.name; llama.cpp changes token attributes for names containing e.g. "phi3", so it stays neutral.
GGUF_MODEL_NAME = "distily-bitnet-student"
SUB_NORMS = {"o_proj": gguf.MODEL_TENSOR.ATTN_SUB_NORM, "down_proj": gguf.MODEL_TENSOR.FFN_SUB_NORM}
GGUF_MAGIC = b"GGUF"
# Byte-level BPE pre-tokenizers (tokenizer.json: a Split by this regex, then ByteLevel without its own) -> the
# tokenizer.ggml.pre name whose regex llama.cpp splits text with in the same way.
SPLIT_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",  # Llama 3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",  # Qwen2, Qwen2.5, Qwen3
}
ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
# Rotary embeddings that rescale each default frequency by a fixed factor and leave attention unscaled (Llama 3.x's
# "llama3", "linear"): llama.cpp's llama graph divides its frequencies by the factors of a rope_freqs tensor, as
# its own converter writes for Llama 3. Its other graphs here take the default rotary embedding only.
RESCALED_ROPE_TYPES = {"llama": ("linear", "llama3")}
# What verify_gguf checks. A ternary tensor's block scales are fp16, so it holds the scale rounded to fp16.
FILE_CHECK = "every tensor reads back as the student's (ternary ones as ternary * fp16(scale) exactly)"


@dataclass
class GGUFTensor:
    """One tensor to write, from the student's parameter `source`: `values` float32 [rows, columns] or [n]
    (ternary * scale for ternary tensors, which also carry `ternary` and `scale`), in llama.cpp's layout."""

    name: str
    source: str
    values: np.ndarray
    ternary: np.ndarray | None = None  # int8 [rows, columns]
    scale: float | None = None


# The feed-forward activation each llama.cpp graph computes whatever the file says: SiLU-gated in its llama, phi3
# and bitnet graphs, GELU (tanh approximation, close to the exact one) in its gpt2 graph.
SILU = ("silu", "swish")
LLAMA_CPP_ACTIVATIONS = {"llama": SILU, "phi3": SILU, "bitnet": SILU, "qwen2": SILU, "qwen3": SILU,
                         "gpt2": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu")}
# The llama.cpp graph of each model type (its converter's choice: Mistral runs as llama).
GRAPHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2", "phi3": "phi3"}


def gguf_architecture(model: PreTrainedModel) -> str:
    """The llama.cpp architecture for a converted student, or DistilyConfigError if it has none."""
    architecture = _graph(model)
    config = model.config
    activation = config.activation_function if architecture == "gpt2" else config.hidden_act
    if activation not in LLAMA_CPP_ACTIVATIONS[architecture]:
        raise DistilyConfigError(
            f"the student's activation '{activation}' is not what llama.cpp's {architecture} graph computes; "
            f"expected one of {', '.join(LLAMA_CPP_ACTIVATIONS[architecture])}"
        )
    return architecture


def _graph(model: PreTrainedModel) -> str:
    options = BitNetOptions.from_config(model.config)
    model_type = model.config.model_type
    if options.input_norm:
        raise DistilyConfigError("input_norm=True students have no llama.cpp graph; expected input_norm=False for GGUF")
    if options.subln:
        if model_type != "llama":
            raise DistilyConfigError(
                f"subln GGUF export needs model_type 'llama' (llama.cpp 'bitnet'); got '{model_type}'"
            )
        if not model.config.tie_word_embeddings:
            raise DistilyConfigError(
                "llama.cpp's bitnet graph ties the LM head to the embeddings; expected tie_word_embeddings=True"
            )
        return "bitnet"
    if model_type not in GRAPHS:
        raise DistilyConfigError(f"no GGUF mapping for model_type '{model_type}'; expected one of {', '.join(GRAPHS)}")
    windowed = getattr(model.config, "use_sliding_window", True)  # Qwen2 says so apart from the window's size
    window = getattr(model.config, "sliding_window", None) if windowed else None
    if window is not None and window < model.config.max_position_embeddings:
        raise DistilyConfigError(
            f"the student attends within a sliding window of {window} tokens, which llama.cpp's "
            f"{GRAPHS[model_type]} graph does not; expected sliding_window null (or use_sliding_window false)"
        )
    return GRAPHS[model_type]


def plan_tensors(model: PreTrainedModel, architecture: str) -> list[GGUFTensor]:
    """Map every parameter to its GGUF name and value; ternary layers are ternarised here. (The embeddings and LM
    head keep the model's rows: a smaller tokenizer's vocabulary is padded to them, a larger one refused, in
    ``_vocabulary``.)"""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.upper()], model.config.num_hidden_layers)
    ternary_layers = dict(bitlinear_modules(model))
    tensors = []
    for name, parameter in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        if module_name.endswith(".rms_norm"):
            tensors.append(GGUFTensor(_sub_norm_name(module_name), name, _float32(parameter)))
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise DistilyConfigError(f"no GGUF name for parameter '{name}' in llama.cpp's {architecture} graph")
        layer = ternary_layers.get(module_name)
        heads = _rotary_heads(gguf_name, model.config, architecture)
        if isinstance(layer, BitLinear) and leaf == "weight":
            tensors.append(_ternary_tensor(gguf_name, name, layer, heads))
        else:
            values = _float32(parameter)  # [rows, columns] or [n]
            tensors.append(GGUFTensor(gguf_name, name, values if heads is None else _rotary_permute(values, heads)))
    factors = rope_factors(model, architecture)
    if factors is not None:
        tensors.append(GGUFTensor(ROPE_FREQS, "rotary_emb.inv_freq", factors))
    return tensors


def rope_factors(model: PreTrainedModel, architecture: str) -> np.ndarray | None:
    """llama.cpp's rope_freqs for a student whose rotary embedding rescales the default frequencies: each default
    frequency divided by the student's own (its rotary embedding's ``inv_freq``), float32 [head_dim / 2]; None for
    the default rotary embedding (and for GPT-2). Any other is refused: llama.cpp's graph would rotate otherwise."""
    config = model.config
    if architecture == "gpt2":
        return None
    rope = config.rope_parameters or {}
    rope_type = rope.get("rope_type", "default")
    allowed = ("default", *RESCALED_ROPE_TYPES.get(architecture, ()))
    if rope_type not in allowed or rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise DistilyConfigError(f"GGUF export of a {architecture} student supports the rotary embeddings "
                                 f"{', '.join(allowed)} over whole heads; got {rope}")
    if rope_type == "default":
        return None
    rotary = model.get_decoder().rotary_emb
    if rotary.attention_scaling != 1.0:
        raise DistilyConfigError(f"GGUF export needs a rotary embedding without attention scaling; got {rope} "
                                 f"(attention scaling {rotary.attention_scaling})")
    head_dim = rotary.inv_freq.numel() * 2
    default = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return (default / rotary.inv_freq.double().numpy()).astype(np.float32)


def check_ternary_type(qtype: str) -> None:
    """Raise DistilyConfigError unless `qtype` is a GGUF ternary type this module writes."""
    if qtype not in TERNARY_TYPES:
        raise DistilyConfigError(
            f"GGUF ternary type '{qtype}' is not supported; expected one of {sorted(TERNARY_TYPES)}"
        )


def check_packable(tensors: list[GGUFTensor], qtype: str) -> None:
    """Raise DistilyConfigError unless `qtype` is supported and every ternary tensor's row length fits its block
    size."""
    check_ternary_type(qtype)
    block_size, _ = gguf.GGML_QUANT_SIZES[TERNARY_TYPES[qtype]]
    for tensor in tensors:
        if tensor.ternary is not None and tensor.ternary.shape[-1] % block_size:
            raise DistilyConfigError(
                f"cannot write {tensor.name} as {qtype}: row length {tensor.ternary.shape[-1]}; "
                f"expected a multiple of {block_size}"
            )


def why_not_gguf_export(path: Path) -> str | None:
    """Why the file `path` is not a GGUF file written by write_gguf; None if it is one."""
    with open(path, "rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            return "it is not a GGUF file"
    try:
        name = gguf.GGUFReader(str(path)).get_field("general.name").contents()
    except Exception:  # noqa: BLE001 - any unreadable GGUF file is not one of ours
        return "it is not a readable GGUF file"
    return None if name == GGUF_MODEL_NAME else f"its general.name is {name!r}, not {GGUF_MODEL_NAME!r}"


GGUF_EXPORT = PreviousOutput("GGUF export", why_not_gguf_export)


def write_gguf(model: PreTrainedModel, tokenizer_dir: str | Path, output_path: str | Path, qtype: str = "TQ2_0",
               perplexity_ids: torch.Tensor | None = None, *, overwrite: bool = False,
               protected: Mapping[Path, str] | None = None) -> Path:
    """Write a converted student and the tokenizer saved in `tokenizer_dir` as one GGUF file; verify it.

    Every check (architecture, shapes, tokenizer) runs before anything is written; the file is
    written beside `output_path` and renamed into place after verify_gguf and, when `perplexity_ids`
    [seq] is given and llama-cpp-python is installed, after llama.cpp's perplexity on them is within
    2% of the model's. The metadata string GGUF_REPORT_KEY lists those checks, and any that could not
    run. An existing `output_path` is refused unless `overwrite` and it is a previous GGUF export
    (distily.outputs.check_output; `protected` paths are never replaced).
    """
    architecture = gguf_architecture(model)
    vocabulary = _vocabulary(Path(tokenizer_dir), model.config.vocab_size)
    tensors = plan_tensors(model, architecture)
    check_packable(tensors, qtype)
    output_path = Path(output_path)
    report = ExportReport("gguf", verified=[FILE_CHECK])
    run_llama_cpp = perplexity_ids is not None and llama_cpp_available()
    if run_llama_cpp:
        report.verified.append(f"llama.cpp perplexity within {PERPLEXITY_TOLERANCE:.0%} of the student's")
    elif perplexity_ids is None:
        report.not_verified.append("not verified with llama.cpp: no perplexity_ids given")
    else:
        report.not_verified.append(LLAMA_CPP_NOT_INSTALLED)
    with atomic_output(output_path, overwrite=overwrite, previous=GGUF_EXPORT, protected=protected) as staging:
        writer = gguf.GGUFWriter(str(staging), architecture)
        writer.add_name(GGUF_MODEL_NAME)
        writer.add_string(GGUF_REPORT_KEY, report.to_json())  # true once the file is in place: it follows the checks
        writer.add_file_type(FILE_TYPES[qtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, model.config, architecture)
        vocabulary.add_to(writer)
        for tensor in tensors:
            _add_tensor(writer, tensor, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        verify_gguf(staging, tensors, model, architecture)
        if run_llama_cpp:
            check_llama_cpp_perplexity(model, staging, perplexity_ids)
    return output_path


def verify_gguf(path: str | Path, tensors: list[GGUFTensor], model: PreTrainedModel, architecture: str) -> None:
    """Check the file holds every planned tensor and each reads back as the student's parameter it came from.

    A tensor is read back into HF's layout (llama's Q and K rows, weights and biases alike, out of llama.cpp's
    rotary order; the vocabulary's padding rows dropped) and compared with the parameter itself, not with the
    plan, so a tensor the plan left in the wrong layout fails here: a ternary weight must equal
    ternary * fp16(scale) exactly, any other tensor the parameter at the precision the file keeps (rope_freqs, no
    parameter, the factors of the student's own rotary frequencies: rope_factors).
    """
    parameters = dict(model.named_parameters())
    ternary_layers = dict(bitlinear_modules(model))
    expected = {tensor.name: tensor.source for tensor in tensors}
    for stored in gguf.GGUFReader(str(path)).tensors:
        source = expected.pop(stored.name, None)
        if source is None:
            raise DistilyConfigError(f"GGUF file {path} holds tensor {stored.name}, which was not planned; expected "
                                     "only the student's")
        module_name, _, leaf = source.rpartition(".")
        layer = ternary_layers.get(module_name) if leaf == "weight" else None
        if stored.name == ROPE_FREQS:  # not a parameter: the factors of the student's own frequencies
            reference = rope_factors(model, architecture)
        else:
            reference = _hf_values(parameters[source], layer)  # [rows, columns] or [n]
        values = gguf.quants.dequantize(stored.data, stored.tensor_type)[: reference.shape[0]]  # float32, as reference
        heads = _rotary_heads(stored.name, model.config, architecture)
        values = values if heads is None else _hf_rotary_order(values, heads)
        if values.shape != reference.shape or not np.array_equal(values, reference):
            raise DistilyConfigError(f"GGUF tensor {stored.name} does not read back as the student's {source}; "
                                     "expected equality")
    if expected:
        raise DistilyConfigError(f"GGUF file {path} lacks tensors {sorted(expected)[:3]}; expected all of them")


def _hf_values(parameter: torch.Tensor, layer: BitLinear | None) -> np.ndarray:
    """What the file must hold for `parameter`, in HF's layout: ternary * fp16(scale) for a BitLinear `layer`'s
    weight, else the parameter as _add_tensor stores it (matrices in fp16, vectors in fp32), read as float32."""
    if isinstance(layer, BitLinear):
        ternary, scale = layer.ternary_weight()  # int8 [out, in], fp32 []
        return ternary.numpy().astype(np.float32) * np.float32(np.float16(scale.item()))
    values = _float32(parameter)
    return values.astype(np.float16).astype(np.float32) if values.ndim == 2 else values


@dataclass
class _Vocabulary:
    model: str  # llama.cpp tokenizer model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    special: gguf.SpecialVocab
    add_space_prefix: bool | None  # SentencePiece: whether "▁" goes before the text (None: llama.cpp's default, yes)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def _steps(component: dict | None) -> list[dict]:
    """A tokenizer.json normalizer or pre-tokenizer as the list of its steps (a Sequence's, or itself)."""
    if component is None:
        return []
    return component.get("normalizers") or component.get("pretokenizers") or [component]


def _adds_space_prefix(settings: dict) -> bool:
    """Whether a SentencePiece-style tokenizer.json puts "▁" before a text (a Prepend normalizer, or a Metaspace
    pre-tokenizer that prepends), as llama.cpp's add_space_prefix does: without it llama.cpp would tokenize "the"
    as "▁the" where transformers reads "t", "he"."""
    def metaspace_prepends(step: dict) -> bool:  # tokenizers before 0.14 wrote add_prefix_space, not prepend_scheme
        scheme = step.get("prepend_scheme")
        return step.get("add_prefix_space", True) if scheme is None else scheme != "never"

    return any(step.get("type") == "Prepend" for step in _steps(settings.get("normalizer"))) or any(
        step.get("type") == "Metaspace" and metaspace_prepends(step) for step in _steps(settings.get("pre_tokenizer"))
    )


def _vocabulary(path: Path, model_vocab_size: int) -> _Vocabulary:
    """Read a saved HF tokenizer with gguf's vocab readers; pad with unused tokens to the model's vocab size."""
    for reader in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab, gguf.vocab.SentencePieceVocab):
        try:
            vocab = reader(path)
            break
        except (FileNotFoundError, TypeError, ValueError, ImportError):
            continue
    else:
        raise DistilyConfigError(
            f"no byte-level BPE or SentencePiece tokenizer in {path}; expected tokenizer.json or tokenizer.model"
        )
    byte_level = vocab.tokenizer_model == "gpt2"
    tokenizer_json = path / "tokenizer.json"
    settings = json.loads(tokenizer_json.read_text(encoding="utf-8")) if tokenizer_json.exists() else {}
    entries = list(vocab.all_tokens())
    if byte_level:
        entries = _added_token_types(settings, entries)
    if len(entries) > model_vocab_size:
        raise DistilyConfigError(
            f"tokenizer in {path} has {len(entries)} tokens; expected at most the model's {model_vocab_size}"
        )
    entries += [
        (f"[PAD{index}]".encode(), -1000.0, gguf.TokenType.UNUSED) for index in range(len(entries), model_vocab_size)
    ]
    tokens, scores, types = zip(*entries)
    return _Vocabulary(
        model=vocab.tokenizer_model,
        pre=_pre_tokenizer(path, settings) if byte_level else "default",
        tokens=list(tokens), scores=list(scores), types=[int(kind) for kind in types],
        special=gguf.SpecialVocab(path, load_merges=byte_level, n_vocab=model_vocab_size),
        # a tokenizer.model alone (no tokenizer.json) keeps SentencePiece's and llama.cpp's default: prepend
        add_space_prefix=_adds_space_prefix(settings) if not byte_level and settings else None,
    )


def _added_token_types(settings: dict, entries: list[tuple]) -> list[tuple]:
    """The entries with the token types llama.cpp's own converter gives the added tokens of a tokenizer.json
    (``settings``): CONTROL for a special one, USER_DEFINED for another. gguf's BPE reader leaves an added token that
    is also in the base vocabulary (GPT-2's <|endoftext|>) NORMAL, so llama.cpp would print it as text."""
    added = settings.get("added_tokens", [])
    kinds = {token["id"]: gguf.TokenType.CONTROL if token.get("special") else gguf.TokenType.USER_DEFINED
             for token in added}
    return [(text, score, kinds.get(index, kind)) for index, (text, score, kind) in enumerate(entries)]


def _pre_tokenizer(path: Path, settings: dict) -> str:
    """llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) for the byte-level BPE tokenizer in `path` (its
    tokenizer.json: ``settings``): GPT-2's for a ByteLevel pre-tokenizer with its own regex, SPLIT_PRE_TOKENIZERS'
    for a Split by a known regex before a plain ByteLevel; any other would be split by llama.cpp's default regex,
    unlike transformers, and is refused."""
    pre = settings.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if [step.get("type") for step in steps] == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            name = SPLIT_PRE_TOKENIZERS.get(split.get("pattern", {}).get("Regex"))
            if name is not None:
                return name
    raise DistilyConfigError(f"the byte-level BPE pre-tokenizer in {path} ({json.dumps(pre)[:200]}) is none llama.cpp "
                             "reproduces; expected GPT-2's ByteLevel, or a Split by Llama 3's or Qwen2's regex")


def _add_hyperparameters(writer: gguf.GGUFWriter, config, architecture: str) -> None:
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    if architecture == "gpt2":
        writer.add_feed_forward_length(config.n_inner or 4 * config.hidden_size)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    rope = config.rope_parameters or {}  # its type checked by rope_factors when the tensors were planned
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)


def _add_tensor(writer: gguf.GGUFWriter, tensor: GGUFTensor, qtype: str) -> None:
    if tensor.ternary is not None:
        qtype_enum = TERNARY_TYPES[qtype]
        writer.add_tensor(tensor.name, gguf.quants.quantize(tensor.values, qtype_enum), raw_dtype=qtype_enum)
    elif tensor.values.ndim == 2:
        writer.add_tensor(tensor.name, tensor.values.astype(np.float16))
    else:
        writer.add_tensor(tensor.name, tensor.values)


def _ternary_tensor(gguf_name: str, source: str, layer: BitLinear, heads: int | None) -> GGUFTensor:
    ternary, scale = layer.ternary_weight()  # int8 [out, in], fp32 []
    ternary = ternary.numpy() if heads is None else _rotary_permute(ternary.numpy(), heads)
    return GGUFTensor(gguf_name, source, ternary.astype(np.float32) * scale.item(), ternary, scale.item())


def _rotary_heads(gguf_name: str, config, architecture: str) -> int | None:
    """The heads of a tensor whose rows llama.cpp's llama graph reads in its rotary order (the Q and K projections'
    weights and biases, e.g. blk.0.attn_q.bias); None for any other tensor or architecture."""
    if architecture != "llama":
        return None
    projection = gguf_name.rsplit(".", 2)[-2]
    return {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(projection)


def _rotary_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from HF's half-split rotary layout to llama.cpp's interleaved pairs.

    rows: a weight [heads * head_dim, in] or a bias [heads * head_dim]; row (h, j) of half i moves to (h, 2j + i).
    """
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _hf_rotary_order(rows: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of _rotary_permute: llama.cpp's interleaved pairs back to HF's half-split rows (h, i, j)."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _sub_norm_name(norm_module: str) -> str:
    """GGUF name of a SubLN norm stored inside a projection, e.g. model.layers.3.self_attn.o_proj.rms_norm."""
    parts = norm_module.split(".")
    projection, block = parts[-2], next(int(part) for part in parts if part.isdigit())
    if projection not in SUB_NORMS:
        raise DistilyConfigError(
            f"no GGUF name for the norm inside '{projection}'; expected one of {sorted(SUB_NORMS)}"
        )
    return gguf.TENSOR_NAMES[SUB_NORMS[projection]].format(bid=block) + ".weight"


def _float32(parameter: torch.Tensor) -> np.ndarray:
    return parameter.detach().float().cpu().numpy()

