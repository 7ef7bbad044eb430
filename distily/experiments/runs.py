"""The runs of a sweep and their names.

A run is a set of config overrides. Its name is a readable label (the ``name`` given in the sweep file,
or the overrides written out) and a short hash of the overrides: the same every time a sweep file is
read, whatever the order of its keys, and a new one as soon as a run's overrides change.
"""

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

LABEL_LENGTH = 60  # characters of the readable part of a run name
UNSAFE = re.compile(r"[^A-Za-z0-9._,:=+-]+")  # anything else becomes '-' in a directory name


@dataclass(frozen=True)
class Run:
    name: str
    overrides: dict[str, Any]  # config keys this run sets on top of the base


def overrides_hash(overrides: dict) -> str:
    canonical = json.dumps(overrides, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def render_value(value: Any) -> str:
    """A config value as a short label: lists joined by ',', mappings as key:value, null as 'default'."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(render_value(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}:{render_value(item)}" for key, item in value.items())
    return str(value)


def render_overrides(overrides: dict) -> str:
    return "+".join(f"{key}={render_value(overrides[key])}" for key in sorted(overrides))


def run_name(overrides: dict, label: Optional[str] = None) -> str:
    readable = UNSAFE.sub("-", label or render_overrides(overrides) or "base").strip("-")[:LABEL_LENGTH]
    return f"{readable}-{overrides_hash(overrides)}"


def expand_runs(explicit: list[tuple[Optional[str], dict]], grid: dict[str, list]) -> list[Run]:
    """Every explicit run (label, overrides) at every point of the grid (the product of its value lists)."""
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    runs = []
    for label, overrides in explicit:
        for point in points:
            parts = [label or render_overrides(overrides), render_overrides(point)]
            runs.append(Run(run_name({**overrides, **point}, "+".join(p for p in parts if p)), {**overrides, **point}))
    return runs
