"""Every PNG plot Distily draws: a run's losses, its eval metrics over steps and teacher against student (in
its output_dir), and a sweep's metric per run and against each parameter its grid varies. Plots are drawn on
``matplotlib.figure.Figure`` objects, so no global plotting state or display is involved."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from distily.metrics import RunMetrics
from distily.reporting.tables import is_number, label, row_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs) -> Figure:
    """A matplotlib figure; matplotlib is imported here, not with the module, since every command that imports
    the reports would otherwise pay its half second of import."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


RUN_DPI, SWEEP_DPI = 100, 120
MAX_LEGEND = 10  # sweep series beyond this are drawn without a legend
GRID_COLUMNS, PLOT_INCHES = 3, (4.2, 3.0)  # a grid's plots to a row; each plot's width and height


def _grid(count: int):
    """A figure of ``count`` small plots, three to a row (fixed spacing: automatic layouts cost seconds)."""
    rows = max(1, math.ceil(count / GRID_COLUMNS))
    columns = min(GRID_COLUMNS, max(count, 1))
    height = PLOT_INCHES[1] * rows + 0.8  # inches: the plots, and the legend above them
    figure = _figure(figsize=(PLOT_INCHES[0] * columns, height))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    figure.subplots_adjust(left=0.25 / columns, right=0.98, bottom=0.55 / height, top=1 - 0.9 / height,
                           hspace=0.6, wspace=0.3)
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes


def _save(figure: Figure, path: Path, dpi: int) -> Path:
    figure.savefig(path, dpi=dpi)
    return path


def _save_grid(figure: Figure, axes, path: Path) -> Path:
    """One legend for the whole figure, from the plots' labels, then the PNG."""
    handles = {}
    for axis in axes:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="upper center", ncols=len(handles), frameon=False)
    return _save(figure, path, RUN_DPI)


def plot_losses(log_history: list[dict], path: Path) -> Optional[Path]:
    """Training loss and each objective component over steps, eval losses as markers; ``None`` if nothing
    was logged."""
    train = [entry for entry in log_history if "loss" in entry and "step" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry and "step" in entry]
    names = list(dict.fromkeys(
        [key for entry in train for key in entry if key == "loss" or key.startswith("loss_")]
        + [key.removeprefix("eval_") for entry in evals for key in entry if key.startswith("eval_loss")]
    ))
    if not names:
        return None
    figure, axes = _grid(len(names))
    for axis, name in zip(axes, names):
        points = [(entry["step"], entry[name]) for entry in train if name in entry]
        if points:
            axis.plot(*zip(*points), ".-", label="train")
        points = [(entry["step"], entry[f"eval_{name}"]) for entry in evals if f"eval_{name}" in entry]
        if points:
            axis.plot(*zip(*points), "o--", label="eval")
        axis.set_title(name)
        axis.set_xlabel("step")
    return _save_grid(figure, axes, path)


def plot_eval_metrics(log_history: list[dict], metrics: RunMetrics, path: Path) -> Optional[Path]:
    """The student's eval metrics over steps (before training at step 0, each evaluation, after training at
    the last step), the teacher's value as a dashed line; ``None`` if there is nothing to plot."""
    student, teacher = metrics.student, metrics.teacher.evaluation.values
    series: dict[str, list[tuple[float, float]]] = {}
    for key, value in student.before.values.items():
        if is_number(value):
            series.setdefault(key, []).append((0, value))
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and is_number(value) and "step" in entry:
                series.setdefault(key.removeprefix("eval_"), []).append((entry["step"], value))
    for key, value in student.after.values.items():
        if is_number(value):
            series.setdefault(key, []).append((metrics.train.global_step, value))
    shown = row_keys({"student": dict.fromkeys(series, 0.0)})  # the table's order
    names = [name for name in shown if name != "loss" and not name.endswith("lm_loss")]  # perplexity shows it
    if not names:
        return None
    figure, axes = _grid(len(names))
    for axis, name in zip(axes, names):
        axis.plot(*zip(*sorted(series[name])), "o-", label="student")
        if is_number(teacher.get(name)):
            axis.axhline(teacher[name], linestyle="--", color="gray", label="teacher")
        axis.set_title(label(name), fontsize=9)
        axis.set_xlabel("step")
    return _save_grid(figure, axes, path)


def comparison_keys(columns: dict[str, dict[str, float]], tokenizers_differ: bool = False) -> list[str]:
    """The metrics ``plot_comparison`` draws (perplexities, agreement, benchmarks), in the results table's order
    (bits per byte first when the models' ``tokenizers_differ``)."""
    drawn_elsewhere = ("loss", "parameters", "size_on_disk_bytes")
    return [key for key in row_keys(columns, tokenizers_differ)
            if key not in drawn_elsewhere and not key.endswith("lm_loss")]


def plot_comparison(columns: dict[str, dict[str, float]], path: Path,
                    tokenizers_differ: bool = False) -> Optional[Path]:
    """Bars of each model per metric (``comparison_keys``); ``None`` if there is none."""
    keys = comparison_keys(columns, tokenizers_differ)
    if not keys:
        return None
    figure, axes = _grid(len(keys))
    colors = {name: f"C{index}" for index, name in enumerate(columns)}  # a model keeps its colour throughout
    for axis, key in zip(axes, keys):
        names = [name for name, values in columns.items() if is_number(values.get(key))]
        bars = axis.bar(range(len(names)), [columns[name][key] for name in names],
                        color=[colors[name] for name in names], label=names)
        axis.bar_label(bars, fmt="%.3g")
        axis.margins(y=0.15)
        axis.set_xticks([])
        axis.set_title(label(key, columns), fontsize=9)
    return _save_grid(figure, axes, path)


def _finished(rows: list[dict], metric: str) -> list[dict]:
    return [row for row in rows if isinstance(row.get(metric), (int, float)) and not math.isnan(row[metric])]


def plot_by_run(rows: list[dict], metric: str, path: Path) -> Optional[Path]:
    """Horizontal bars of ``metric``, one per finished run, in the rows' (ranked) order."""
    finished = _finished(rows, metric)
    if not finished:
        return None
    figure = _figure(figsize=(10, 1.2 + 0.35 * len(finished)))
    axes = figure.subplots()
    bars = axes.barh([row["name"] for row in finished], [row[metric] for row in finished])
    axes.bar_label(bars, fmt="%.4g", padding=2)
    axes.invert_yaxis()  # best first, at the top
    axes.set_xlabel(metric)
    figure.tight_layout()
    return _save(figure, path, SWEEP_DPI)


def _numbers(values: list[str]) -> Optional[list[float]]:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def _scale(key: str, values: list[str]) -> Optional[list[float]]:
    """``key``'s values as points on a numeric scale; None when they are categories: not all numbers, or numbers
    that name a draw rather than measure something (``seed``, ``data_seed``)."""
    return None if key == "seed" or key.endswith("_seed") else _numbers(values)


def _line_label(row: dict, others: list[str], metric: str) -> str:
    """The overrides a run sets besides the plotted key, which its line shares with no other run's."""
    return ", ".join(f"{other}={row[other]}" for other in others if other in row) or metric


def plot_against(rows: list[dict], key: str, override_keys: list[str], metric: str, path: Path) -> Optional[Path]:
    """``metric`` against the values of ``key``: one series per combination of the runs' other overrides (the other
    grid keys, and what each explicit run sets: runs that differ elsewhere are not one series). A numeric key is a
    line on a numeric axis (logarithmic when its values span a factor of 10 or more); a categorical one
    (a seed, or values that are not numbers: ``_scale``) is points over its values in order, with no line to
    suggest a trend between them."""
    finished = _finished(rows, metric)
    if not finished:
        return None
    others = [other for other in override_keys if other != key]
    series: dict[str, list[dict]] = {}
    for row in finished:
        series.setdefault(_line_label(row, others, metric), []).append(row)
    values = list(dict.fromkeys(row.get(key, "") for row in finished))
    numbers = _scale(key, values)
    figure = _figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for line, members in series.items():
        if numbers is None:
            positions = [values.index(row.get(key, "")) for row in members]
        else:
            positions = [float(row[key]) for row in members]
        points = sorted(zip(positions, (row[metric] for row in members)))
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=line,
                  linestyle="none" if numbers is None else "-")
    if numbers is None:
        axes.set_xticks(range(len(values)), values, rotation=20, ha="right")
    elif min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
        axes.set_xscale("log")
    axes.set_xlabel(key)
    axes.set_ylabel(metric)
    if 1 < len(series) <= MAX_LEGEND:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path, SWEEP_DPI)
