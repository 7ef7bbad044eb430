"""Load the teacher: any causal LM, frozen, in eval mode, optionally quantized to 8 or 4 bits."""

import importlib.util
import logging
import os

import torch
from accelerate import PartialState
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distily.errors import DistilyConfigError
from distily.paths import looks_like_local_path

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
            raise DistilyConfigError(f"cannot load {role} {name_or_path!r}: {reason}; expected a saved model's "
                                     "directory (its config.json names its model_type)") from None
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


def load_teacher(
    name_or_path: str, dtype: str = "auto", trust_remote_code: bool = False, quantization: str = "none"
) -> PreTrainedModel:
    """The teacher, frozen and in eval mode; with ``quantization`` (8bit, 4bit) loaded by bitsandbytes
    straight onto this process's device. A multimodal model is refused before its weights load."""
    check_model_source(name_or_path, "teacher")
    config = from_pretrained(AutoConfig, name_or_path, "teacher", trust_remote_code=trust_remote_code)
    if config.get_text_config() is not config:
        raise DistilyConfigError(
            f"the teacher {name_or_path!r} is a multimodal {type(config).__name__} (its language model's settings "
            "are in its text_config); expected a text-only causal LM, such as the family's text checkpoint"
        )
    quantized = {}
    if quantization != "none":
        quantized = {
            "quantization_config": bitsandbytes_config(quantization, dtype),
            "device_map": {"": PartialState().device},
        }
    teacher = from_pretrained(
        AutoModelForCausalLM,
        name_or_path,
        "teacher",
        dtype=DTYPES[dtype],
        trust_remote_code=trust_remote_code,
        **quantized,
    )
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_tokenizer(name_or_path: str, role: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return from_pretrained(AutoTokenizer, name_or_path, f"{role} tokenizer", trust_remote_code=trust_remote_code)
