"""What the configuration dataclasses of every package share: value checks, and a key read by several commands."""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

from distily.errors import DistilyConfigError
from distily.paths import looks_like_local_path


def json_dict(value: Any, key: str) -> dict:
    """A dict given as a dict (from YAML) or as a JSON string (from a CLI flag)."""
    if value is None or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise DistilyConfigError(f"{key}={value!r} is not valid JSON; expected a JSON object such as '{{\"a\": 1}}'")
    if not isinstance(parsed, dict):
        raise DistilyConfigError(f"{key}={value!r} is a JSON {type(parsed).__name__}; expected a JSON object")
    return parsed


def one_of(value: str, choices: tuple, key: str) -> None:
    if value not in choices:
        raise DistilyConfigError(f"{key}={value!r} is not supported; expected one of {', '.join(choices)}")


def registered(value: str, registry: dict, key: str, kind: str) -> None:
    """Stop unless ``value`` names an entry of ``registry`` (a registered ``kind``: loss, projector, ...)."""
    if value not in registry:
        raise DistilyConfigError(f"{key}={value!r} is not a registered {kind}; expected one of {', '.join(registry)}")


def check_seed(seed: Optional[int], key: str = "seed") -> None:
    """A seed numpy takes (``set_seed`` seeds numpy too, which refuses one outside 0..2**32-1 deep inside a run; the
    split of the documents by ``data_seed`` refuses a negative one); None (unset) passes."""
    if seed is not None and not 0 <= seed < 2**32:
        raise DistilyConfigError(f"{key}={seed} is out of range; expected an integer 0 <= x < 2**32")


def check_not_blank(value: Optional[str], key: str, expected: str) -> None:
    """Refuse an empty path or name: libraries fail on it deep inside a command, or read it as the current
    directory."""
    if value is not None and not value.strip():
        raise DistilyConfigError(f"{key}={value!r} is empty; expected {expected}")


def check_local_path_exists(value: Optional[str], key: str) -> None:
    """Refuse a value that can only be a local path (``looks_like_local_path``: ``data/train.jsonl``) where nothing
    is: as the config is read, not once the models have loaded and the path is opened."""
    if value is not None and looks_like_local_path(value) and not os.path.exists(os.path.expanduser(value)):
        raise DistilyConfigError(f"{key}={value!r} does not exist; expected an existing local path or a Hub id")


def default_of(arguments, name: str) -> Any:
    """The default of the field ``name`` of a config dataclass."""
    return next(field.default for field in dataclasses.fields(arguments) if field.name == name)


def user_set(arguments, name: str) -> bool:
    """Whether ``name`` of a config dataclass differs from its default (a default given explicitly reads as unset)."""
    return getattr(arguments, name) != default_of(arguments, name)


def split_seed(seed: int, data_seed: Optional[int]) -> int:
    """The seed of the held-out split and of the samples of the data: ``data_seed`` where set (the Trainer's seed of
    data sampling, independent of the model's), else ``seed``. distill, record and generate draw the same rows."""
    return seed if data_seed is None else data_seed


def file_in_the_way(path: str) -> Optional[str]:
    """Why no directory can be made at ``path`` ("is an existing file" or "is below the file '...'"), or None."""
    path = Path(path)
    existing = next((where for where in (path, *path.parents) if where.exists()), None)
    if existing is None or existing.is_dir():
        return None
    return "is an existing file" if existing == path else f"is below the file {str(existing)!r}"


def field_of(cls: type, name: str, help: Optional[str] = None) -> dataclasses.Field:
    """A field declared as ``cls`` declares ``name`` (the same default), for a key that another command's
    dataclass reads too; ``help`` says what it does there."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    metadata = {**source.metadata, **({"help": help} if help else {})}
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)
