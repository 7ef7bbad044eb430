"""PNG plots of a sweep's metric: per run, and against each parameter a grid varies."""

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

MAX_LEGEND = 10  # series beyond this are drawn without a legend


def _finished(rows: list[dict], metric: str) -> list[dict]:
    return [row for row in rows if isinstance(row.get(metric), (int, float)) and not math.isnan(row[metric])]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_by_run(rows: list[dict], metric: str, path: Path) -> Optional[Path]:
    """Horizontal bars of ``metric``, one per finished run, in the rows' (ranked) order."""
    finished = _finished(rows, metric)
    if not finished:
        return None
    figure, axes = plt.subplots(figsize=(10, 1.2 + 0.35 * len(finished)))
    bars = axes.barh([row["name"] for row in finished], [row[metric] for row in finished])
    axes.bar_label(bars, fmt="%.4g", padding=2)
    axes.invert_yaxis()  # best first, at the top
    axes.set_xlabel(metric)
    return _save(figure, path)


def _numbers(values: list[str]) -> Optional[list[float]]:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def plot_against(rows: list[dict], key: str, grid_keys: list[str], metric: str, path: Path) -> Optional[Path]:
    """``metric`` against the values of ``key``: one line per combination of the other grid keys; a numeric
    key on a numeric axis (logarithmic when its values span a factor of 10 or more), any other in order."""
    finished = _finished(rows, metric)
    if not finished:
        return None
    others = [other for other in grid_keys if other != key]
    series: dict[str, list[dict]] = {}
    for row in finished:
        label = ", ".join(f"{other}={row.get(other, '')}" for other in others) or metric
        series.setdefault(label, []).append(row)
    values = list(dict.fromkeys(row.get(key, "") for row in finished))
    numbers = _numbers(values)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, members in series.items():
        if numbers is None:
            positions = [values.index(row.get(key, "")) for row in members]
        else:
            positions = [float(row[key]) for row in members]
        points = sorted(zip(positions, (row[metric] for row in members)))
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    if numbers is None:
        axes.set_xticks(range(len(values)), values, rotation=20, ha="right")
    elif min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
        axes.set_xscale("log")
    axes.set_xlabel(key)
    axes.set_ylabel(metric)
    if 1 < len(series) <= MAX_LEGEND:
        axes.legend(fontsize="small")
    return _save(figure, path)
