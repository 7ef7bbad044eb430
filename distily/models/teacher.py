"""Load the teacher: any causal LM, or a multimodal checkpoint's language model, frozen, in eval mode, optionally
quantized to 8 or 4 bits."""

import importlib.util
import logging
import os
import re
from typing import Optional

import torch
from accelerate import PartialState
from huggingface_hub import ResolvedRevision
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils.hub import resolve_revision

from distily.errors import DistilyConfigError
from distily.logs import quieted
from distily.models.bitnet import bitnet_format, is_bitnet, load_bitnet_student
from distily.outputs import safetensors_tensor_bytes
from distily.paths import looks_like_local_path

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Where multimodal checkpoints keep their language model, as the keys of the family's text-only causal LM: the layout
# transformers 5 saves (Gemma 4, Gemma 3n, Qwen3.5), the one transformers 4 saved and it still writes for the LLaVA
# family (Gemma 3, Mistral 3, Llama 4, PaliGemma, LLaVA), and Idefics3's and SmolVLM's.
LANGUAGE_MODEL_KEYS = {
    r"^model\.language_model\.": "model.",
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.text_model\.": "model.",
}


def check_model_source(name_or_path: str, role: str, allow_file: bool = False) -> None:
    """A local path must exist (a directory, or with ``allow_file`` a file); anything else is a Hub id."""
    path = os.path.expanduser(name_or_path)
    if looks_like_local_path(name_or_path) and not (os.path.isdir(path) or allow_file and os.path.isfile(path)):
        expected = (
            "a checkpoint directory, a config file or a Hub id" if allow_file else "a checkpoint directory or a Hub id"
        )
        raise DistilyConfigError(
            f"{role} path {name_or_path!r} does not exist or is not a directory; expected {expected}"
        )


def from_pretrained(loader, name_or_path: str, role: str, **kwargs):
    """``loader.from_pretrained`` with a one-line error when the source cannot be read; a config loader
    also reads a single config file."""
    check_model_source(name_or_path, role, allow_file=loader is AutoConfig)
    try:
        return loader.from_pretrained(os.path.expanduser(name_or_path), **kwargs)
    except OSError as err:
        reason = str(err).strip().splitlines()[0]
        local = "" if "/" not in name_or_path else f"no local directory {name_or_path!r}, and from the Hub: "
        raise DistilyConfigError(f"cannot load {role} {name_or_path!r}: {local}{reason}")
    except ValueError as err:  # transformers' answer to a folder without a model's config, or to custom code
        reason = str(err).strip().splitlines()[0]
        if "trust_remote_code" in str(err):
            raise DistilyConfigError(f"cannot load {role} {name_or_path!r}: it runs code of its own; expected "
                                     "trust_remote_code=true (once that code is trusted)") from None
        if reason.startswith("Unrecognized"):
            raise DistilyConfigError(f"cannot load {role} {name_or_path!r}: {reason.rstrip('.')}; expected a saved "
                                     "model's directory (its config.json names its model_type)") from None
        raise


def bitsandbytes_config(quantization: str, dtype: str) -> BitsAndBytesConfig:
    """LLM.int8 (``8bit``) or NF4 weights computing in ``dtype`` (float32 for auto/float32) (``4bit``)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DistilyConfigError(
            f"teacher_quantization={quantization!r} needs bitsandbytes, which is not installed; expected "
            "`pip install distily[quantization]` or teacher_quantization='none'"
        )
    if quantization == "8bit":
        # LLM.int8 always quantizes activations through float16 and logs so at every layer and step
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = DTYPES[dtype] if dtype in ("bfloat16", "float16") else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def teacher_config(config: PretrainedConfig, name_or_path: str) -> PretrainedConfig:
    """The config the teacher loads as: a text-only model's own; a multimodal checkpoint's language model's (its text
    config), refused where transformers has no text-only causal LM class for it."""
    text = config.get_text_config()
    if text is not config and type(text) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise DistilyConfigError(
            f"the teacher {name_or_path!r} is a multimodal {type(config).__name__} whose language model "
            f"({text.model_type}) has no text-only causal LM class in transformers; expected a text-only causal LM, "
            "or a multimodal checkpoint whose language model has one (Gemma 3, Gemma 3n, Gemma 4, Mistral 3, ...)"
        )
    return text


def _is_local_bitnet_run(name_or_path: str, config: PretrainedConfig) -> bool:
    """Whether ``name_or_path`` is a local folder of a trained BitNet student (its latent weights, not a packed
    export)."""
    return is_bitnet(config) and bitnet_format(config) == "latent" and looks_like_local_path(name_or_path)


def load_teacher(
    name_or_path: str, dtype: str = "auto", trust_remote_code: bool = False, quantization: str = "none"
) -> PreTrainedModel:
    """The teacher, frozen and in eval mode; with ``quantization`` (8bit, 4bit) loaded by bitsandbytes
    straight onto this process's device. Of a multimodal checkpoint, the language model alone; of a local BitNet run,
    Distily's ternary student."""
    check_model_source(name_or_path, "teacher")
    revision = hub_revision(name_or_path)
    config = from_pretrained(AutoConfig, name_or_path, "teacher", trust_remote_code=trust_remote_code,
                             revision=revision)
    text = teacher_config(config, name_or_path)
    quantized = {}
    if quantization != "none":
        quantized = {
            "quantization_config": bitsandbytes_config(quantization, dtype),
            "device_map": {"": PartialState().device},
        }
    settings = dict(dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, revision=revision, **quantized)
    if not quantized and _is_local_bitnet_run(name_or_path, config):
        # a BitNet run: its BitLinear layers, bit for bit the model it trained (transformers' own BitNet layers round
        # differently; a run saved without its quantization_config loads in transformers as a full-precision model)
        weights_dtype = torch.float32 if dtype == "auto" else DTYPES[dtype]
        teacher = load_bitnet_student(os.path.expanduser(name_or_path), weights_dtype, trust_remote_code)
    elif text is config:
        teacher = from_pretrained(AutoModelForCausalLM, name_or_path, "teacher", **settings)
    else:
        teacher = load_language_model(name_or_path, config, text, **settings)
    # where transformers 4 kept the commit a model came from (5 no longer does; never saved with the config)
    teacher.config._commit_hash = revision.resolved if revision is not None else None
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def hub_revision(name_or_path: str) -> Optional[ResolvedRevision]:
    """The commit a Hub id's default branch points to (read from the local cache when offline), resolved once so that
    the teacher's config, its weights and the identity a store records are of one commit; None for a local folder,
    or where the Hub and the cache cannot say (loading then reports what is wrong)."""
    if looks_like_local_path(name_or_path):
        return None
    revision = resolve_revision(name_or_path)
    return revision if isinstance(revision, ResolvedRevision) else None


def load_language_model(
    name_or_path: str, config: PretrainedConfig, text: PretrainedConfig, **settings
) -> PreTrainedModel:
    """A multimodal checkpoint's language model and LM head as the family's text-only causal LM (``text`` its
    config): transformers reads only the checkpoint's tensors the model has, so the other towers' weights stay on
    disk. A language model the checkpoint does not hold under ``LANGUAGE_MODEL_KEYS`` is refused."""
    with quieted("transformers.modeling_utils", logging.ERROR):  # its load report lists the other towers' weights
        model, loading = from_pretrained(AutoModelForCausalLM, name_or_path, "teacher", config=text,
                                         key_mapping=LANGUAGE_MODEL_KEYS, output_loading_info=True, **settings)
    missing, tied = set(loading["missing_keys"]), set(model._tied_weights_keys or {})
    if missing and getattr(config, "tie_word_embeddings", False) and missing <= tied:
        model.config.tie_word_embeddings = True  # as the multimodal model, which ties by its own config, does
        model.tie_weights()
    elif missing:
        layouts = ", ".join(pattern.strip("^").replace("\\", "") + "*" for pattern in LANGUAGE_MODEL_KEYS)
        raise DistilyConfigError(
            f"the teacher {name_or_path!r} is a multimodal {type(config).__name__} whose checkpoint lacks "
            f"{len(missing)} weights of its language model, such as {min(missing, key=lambda key: (key in tied, key))}"
            f", under {layouts}; expected a checkpoint in one of those layouts"
        )
    return model


def unused_towers(config: PretrainedConfig) -> list[str]:
    """The towers of a multimodal checkpoint's ``config`` that a teacher, its language model, leaves on disk: its
    sub-configs other than the text one (``vision``, ``audio``)."""
    text = config.get_text_config()
    towers = {name: getattr(config, name, None) for name in config.sub_configs}
    return [name.removesuffix("_config") for name, tower in towers.items() if tower is not None and tower is not text]


def language_model_bytes(directory: str | os.PathLike) -> Optional[int]:
    """Bytes of a local multimodal checkpoint's tensors that ``load_language_model`` loads (those under
    ``LANGUAGE_MODEL_KEYS``, and the LM head), read from its safetensors headers; None without safetensors files."""
    tensors = safetensors_tensor_bytes(directory)
    if not tensors:
        return None
    return sum(size for name, size in tensors.items()
               if name.startswith("lm_head.") or any(re.match(pattern, name) for pattern in LANGUAGE_MODEL_KEYS))


def load_tokenizer(name_or_path: str, role: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return from_pretrained(AutoTokenizer, name_or_path, f"{role} tokenizer", trust_remote_code=trust_remote_code)
