"""Load the teacher: any causal LM, frozen, in eval mode."""

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from distily.errors import DistilyConfigError

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def looks_like_local_path(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", "./", "../", "~")) or os.path.exists(name_or_path)


def check_model_source(name_or_path: str, role: str) -> None:
    """A local path must exist; anything else is taken as a Hub id."""
    if looks_like_local_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise DistilyConfigError(
            f"{role} path {name_or_path!r} does not exist or is not a directory; "
            "expected a checkpoint directory or a Hub id"
        )


def from_pretrained(loader, name_or_path: str, role: str, **kwargs):
    """``loader.from_pretrained`` with a one-line error when the source cannot be read."""
    check_model_source(name_or_path, role)
    try:
        return loader.from_pretrained(os.path.expanduser(name_or_path), **kwargs)
    except OSError as err:
        reason = str(err).strip().splitlines()[0]
        raise DistilyConfigError(f"cannot load {role} {name_or_path!r}: {reason}")


def load_teacher(name_or_path: str, dtype: str = "auto", trust_remote_code: bool = False) -> PreTrainedModel:
    """The teacher, frozen and in eval mode."""
    teacher = from_pretrained(
        AutoModelForCausalLM, name_or_path, "teacher", dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_tokenizer(name_or_path: str, role: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return from_pretrained(AutoTokenizer, name_or_path, f"{role} tokenizer", trust_remote_code=trust_remote_code)
