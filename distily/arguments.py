"""What the configuration dataclasses of every package share: value checks, and a key read by several commands."""

import dataclasses
import json
from typing import Any, Optional

from distily.errors import DistilyConfigError


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


def field_of(cls: type, name: str, help: Optional[str] = None) -> dataclasses.Field:
    """A field declared as ``cls`` declares ``name`` (the same default), for a key that another command's
    dataclass reads too; ``help`` says what it does there."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    metadata = {**source.metadata, **({"help": help} if help else {})}
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)
