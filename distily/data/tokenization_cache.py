"""The tokenization cache: packed blocks saved under a key of what made them (the documents' fingerprint, the
tokenizer's, the framing), written whole and never replaced under a reader."""

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import datasets
from transformers import PreTrainedTokenizerBase

from distily.errors import DistilyConfigError
from distily.outputs import filesystem_errors
from distily.paths import distily_cache_dir


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of what the tokenizer does: its class, vocabulary, special tokens, its backend's pipeline and
    whether it reads special tokens' text as plain text (``split_special_tokens``, a setting of its
    ``tokenizer_config.json`` kept out of the backend's; in the hash only when set, so other hashes stay as they
    were)."""
    content = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content["backend"] = backend.to_str()
    if getattr(tokenizer, "split_special_tokens", False):
        content["split_special_tokens"] = True
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_dataset(cache_dir: str, key: str, build: Callable[[], datasets.Dataset],
                   cache: str = "the tokenization cache") -> datasets.Dataset:
    """The dataset cached under ``cache_dir/key``, built by ``build()`` and saved there when absent (an empty
    one is returned uncached: nothing worth caching, the caller reports it); ``cache`` names the cache in errors."""
    cached = Path(cache_dir) / key
    if not (cached / "dataset_info.json").exists():
        built = build()
        if len(built) == 0:
            return built
        _save_entry(built, cached, cache)
    return datasets.load_from_disk(str(cached))


def _save_entry(built: datasets.Dataset, cached: Path, cache: str) -> None:
    """``built`` saved beside ``cached``, then renamed to it whole (a crash never leaves an entry that looks
    complete), never over an entry there: processes sharing the cache that build the same entry at once all read the
    first one in (the others hold the same rows), which is never moved or deleted under its readers."""
    with filesystem_errors(cached, cache):
        cached.parent.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    try:
        with filesystem_errors(cached, cache):  # diagnosed before the workspace is removed
            built.save_to_disk(str(workspace / "entry"))
            _rename_entry(workspace / "entry", cached, cache)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _rename_entry(staging: Path, cached: Path, cache: str) -> None:
    """Rename the saved entry ``staging`` to ``cached`` unless another process's entry is there already."""
    try:
        os.rename(staging, cached)  # fails onto a directory that holds anything
    except OSError as err:
        if (cached / "dataset_info.json").exists():
            return
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise DistilyConfigError(f"{cache.removeprefix('the ')} entry '{cached}' is not a saved dataset (no "
                                 "dataset_info.json); expected it removed (Distily writes none such)")


def default_cache_dir() -> str:
    """Where tokenized datasets are cached unless ``tokenization_cache_dir`` says otherwise."""
    return distily_cache_dir("tokenized")
