"""Local paths: telling a local path from a Hub id (so that a missing local path is reported as missing), and
where Distily caches what it computes."""

import os

from huggingface_hub import constants

# suffixes of the files Distily reads (data, configs, weights): a name ending in one is a file, not a Hub id
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv", ".arrow", ".yaml", ".yml", ".safetensors", ".bin",
                 ".gguf")


def looks_like_local_path(name_or_path: str) -> bool:
    """True when ``name_or_path`` can only be a local path, whether it exists or not: it starts like one (``/``,
    ``./``, ``../``, ``~``), exists, has more than the one ``/`` of a Hub id (``org/name``) or a backslash,
    or ends in a file suffix (``data/train.jsonl``)."""
    return (
        name_or_path.startswith(("/", "./", "../", "~"))
        or os.path.exists(os.path.expanduser(name_or_path))
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
        or name_or_path.lower().endswith(FILE_SUFFIXES)
    )


def distily_cache_dir(kind: str) -> str:
    """Distily's cache of ``kind`` (``tokenized``, ``lm_eval``): ``<HF_HOME>/distily/<kind>``, the Hugging Face cache
    home as ``huggingface_hub`` resolves it (``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface`` or
    ``~/.cache/huggingface``)."""
    return os.path.join(constants.HF_HOME, "distily", kind)
