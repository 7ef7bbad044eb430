"""Teacher against student(s), where people look: a markdown table, PNG plots, tensorboard scalars.

Everything here reads plain metric dicts: *columns* ``{column name: {metric: value}}`` with the same
metric names in each column (``perplexity``, ``<set>_perplexity``, ``lm_eval/<task>/<metric>``, ...), and
a Trainer's ``log_history``. Plots are drawn on ``matplotlib.figure.Figure`` objects, so no global
plotting state or display is involved.
"""

import math
from pathlib import Path
from typing import Optional

from matplotlib.figure import Figure

from distily.config import HELDOUT_SET

LM_EVAL = "lm_eval"
MIB = 2**20
PER_SET_METRICS = ("lm_loss", "perplexity", "kl_to_teacher", "top1_agreement")
LABELS = {
    "loss": "distillation loss (the objective)",
    "lm_loss": "next-token loss (nats)",
    "perplexity": "perplexity",
    "kl_to_teacher": "KL(teacher ‖ model) per token (nats)",
    "top1_agreement": "top-1 agreement with the teacher",
    "parameters": "parameters",
    "size_on_disk_bytes": "size on disk (MiB)",
}


def flat_lm_eval(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{task: {metric: value}}`` as ``{"lm_eval/<task>/<metric>": value}``."""
    return {f"{LM_EVAL}/{task}/{metric}": value for task, found in results.items() for metric, value in found.items()}


def run_columns(metrics: dict) -> dict[str, dict[str, float]]:
    """A finished run's ``metrics.json`` as columns: the teacher, the student before and after training."""
    student = metrics["student"]
    before = {key.removeprefix("before_"): value for key, value in student.items() if key.startswith("before_")}
    after = {key.removeprefix("after_"): value for key, value in student.items() if key.startswith("after_")}
    after.update(parameters=student["parameters"], size_on_disk_bytes=student["size_on_disk_bytes"])
    after.update(flat_lm_eval(student.get(LM_EVAL, {})))
    teacher = {key: value for key, value in metrics["teacher"].items() if key != LM_EVAL}
    teacher.update(flat_lm_eval(metrics["teacher"].get(LM_EVAL, {})))
    return {"teacher": teacher, "student (before)": before, "student (after)": after}


def _set_names(columns: dict[str, dict]) -> list[str]:
    """The named eval sets in the columns, in order of appearance."""
    names = []
    for values in columns.values():
        for key in values:
            name = key.removesuffix("_perplexity")
            if key.endswith("_perplexity") and not key.startswith(f"{LM_EVAL}/") and name not in names:
                names.append(name)
    return names


def row_keys(columns: dict[str, dict]) -> list[str]:
    """The metrics shown, in order: objective loss, held-out split, each named set, lm-eval, size."""
    keys = ["loss", *PER_SET_METRICS]
    keys += [f"{name}_{metric}" for name in _set_names(columns) for metric in PER_SET_METRICS]
    benchmark = [
        key
        for values in columns.values()
        for key in values
        if key.startswith(f"{LM_EVAL}/") and not key.endswith(("_stderr", "/samples"))
    ]
    keys += list(dict.fromkeys(benchmark))
    keys += ["parameters", "size_on_disk_bytes"]
    return [key for key in keys if any(_is_number(values.get(key)) for values in columns.values())]


def label(key: str, columns: Optional[dict[str, dict]] = None) -> str:
    if key.startswith(f"{LM_EVAL}/"):
        _, task, metric = key.split("/", 2)
        counts = [values[f"{LM_EVAL}/{task}/samples"] for values in (columns or {}).values()
                  if f"{LM_EVAL}/{task}/samples" in values]
        return f"{task}: {metric}" + (f" (n={counts[0]:g})" if counts else "")
    for metric in PER_SET_METRICS:
        if key.endswith(f"_{metric}"):
            return f"{key.removesuffix('_' + metric)}: {LABELS[metric]}"
    where = f"{HELDOUT_SET}: " if key in PER_SET_METRICS else ""
    return where + LABELS.get(key, key)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(key: str, values: dict) -> str:
    value = values.get(key)
    if not _is_number(value):
        return "—"
    if key == "parameters":
        return f"{value:,}"
    if key == "size_on_disk_bytes":
        return f"{value / MIB:,.1f}"
    if key.startswith(f"{LM_EVAL}/"):
        stderr = values.get(f"{key}_stderr")
        return f"{value:.4f}" + (f" ± {stderr:.4f}" if _is_number(stderr) else "")
    if key.endswith("perplexity"):
        return f"{value:,.2f}"
    return f"{value:.4f}"


def markdown_table(columns: dict[str, dict[str, float]]) -> str:
    """One row per metric of ``row_keys``, one column per model; ``—`` where a model has no value."""
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key in row_keys(columns):
        cells = " | ".join(format_value(key, values) for values in columns.values())
        lines.append(f"| {label(key, columns)} | {cells} |")
    return "\n".join(lines) + "\n"


def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.2, 3.0)):
    """A figure of ``count`` small plots, three to a row (fixed spacing: automatic layouts cost seconds)."""
    rows = max(1, math.ceil(count / columns))
    columns = min(columns, max(count, 1))
    height = size[1] * rows + 0.8  # inches: the plots, and the legend above them
    figure = Figure(figsize=(size[0] * columns, height))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    figure.subplots_adjust(left=0.25 / columns, right=0.98, bottom=0.55 / height, top=1 - 0.9 / height,
                           hspace=0.6, wspace=0.3)
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes


def _save(figure: Figure, axes, path: Path) -> Path:
    """One legend for the whole figure, from the plots' labels, then the PNG."""
    handles = {}
    for axis in axes:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="upper center", ncols=len(handles), frameon=False)
    figure.savefig(path, dpi=100)
    return path


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
    return _save(figure, axes, path)


def plot_eval_metrics(log_history: list[dict], metrics: dict, path: Path) -> Optional[Path]:
    """The student's eval metrics over steps (before training at step 0, each evaluation, after training at
    the last step), the teacher's value as a dashed line; ``None`` if there is nothing to plot."""
    student, teacher = metrics["student"], metrics["teacher"]
    last_step = metrics["train"].get("global_step", 0)
    series: dict[str, list[tuple[float, float]]] = {}
    for key, value in student.items():
        if key.startswith("before_") and _is_number(value):
            series.setdefault(key.removeprefix("before_"), []).append((0, value))
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and _is_number(value) and "step" in entry:
                series.setdefault(key.removeprefix("eval_"), []).append((entry["step"], value))
    for key, value in student.items():
        if key.startswith("after_") and _is_number(value):
            series.setdefault(key.removeprefix("after_"), []).append((last_step, value))
    shown = row_keys({"student": dict.fromkeys(series, 0.0)})  # the table's order
    names = [name for name in shown if name != "loss" and not name.endswith("lm_loss")]  # perplexity shows it
    if not names:
        return None
    figure, axes = _grid(len(names))
    for axis, name in zip(axes, names):
        axis.plot(*zip(*sorted(series[name])), "o-", label="student")
        if _is_number(teacher.get(name)):
            axis.axhline(teacher[name], linestyle="--", color="gray", label="teacher")
        axis.set_title(label(name), fontsize=9)
        axis.set_xlabel("step")
    return _save(figure, axes, path)


def plot_comparison(columns: dict[str, dict[str, float]], path: Path) -> Optional[Path]:
    """Bars of each model per metric (perplexities, agreement, benchmarks); ``None`` if there is none."""
    keys = [key for key in row_keys(columns) if key not in ("loss", "parameters", "size_on_disk_bytes")
            and not key.endswith("lm_loss")]
    if not keys:
        return None
    figure, axes = _grid(len(keys))
    colors = {name: f"C{index}" for index, name in enumerate(columns)}  # a model keeps its colour throughout
    for axis, key in zip(axes, keys):
        names = [name for name, values in columns.items() if _is_number(values.get(key))]
        bars = axis.bar(range(len(names)), [columns[name][key] for name in names],
                        color=[colors[name] for name in names], label=names)
        axis.bar_label(bars, fmt="%.3g")
        axis.margins(y=0.15)
        axis.set_xticks([])
        axis.set_title(label(key, columns), fontsize=9)
    return _save(figure, axes, path)


def write_tensorboard(columns: dict[str, dict[str, float]], log_dir: Path, step: int) -> None:
    """Each model's final numbers as scalars ``results/<metric>/<model>`` (one chart per metric)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, values in columns.items():
            for key in row_keys(columns):
                if _is_number(values.get(key)):
                    writer.add_scalar(f"results/{key}/{name}", values[key], step)
