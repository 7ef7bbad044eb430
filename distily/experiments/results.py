"""The results of a sweep: one row per run, from its ``metrics.json`` (flattened: ``student.after_perplexity``)
or its ``error.txt``, ranked by the sweep's metric; written as ``results.csv`` (every value),
``results.md`` (the ranking, the main columns, the plots) and PNG plots, and printed as a table."""

import csv
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distily.experiments.plots import plot_against, plot_by_run
from distily.experiments.runs import render_value
from distily.training.run_dir import RunDir

ERROR_FILE = "error.txt"  # first line: the error in one line; then the traceback
SHOWN = (
    "teacher.perplexity",
    "teacher.memory_bytes",
    "student.after_perplexity",
    "student.after_kl_to_teacher",
    "student.after_top1_agreement",
    "train.wall_seconds",
)
FIXED = ("rank", "name", "status")


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics as one level of dotted keys; lists are left out."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def _score(row: dict, metric: str, goal: str) -> float:
    value = row.get(metric)
    if not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf  # runs without the metric rank last
    return value if goal == "min" else -value


def gather_results(sweep) -> list[dict]:
    """A row per run (name, overrides, status, metrics or error), finished runs ranked best first."""
    rows = []
    for run in sweep.runs:
        run_dir = sweep.run_dir(run)
        row = {"name": run.name, **{key: render_value(value) for key, value in run.overrides.items()}}
        if RunDir(run_dir).is_finished():
            row.update(status="finished", **flatten(RunDir(run_dir).read_metrics()))
        elif (run_dir / ERROR_FILE).exists():
            row.update(status="failed", error=(run_dir / ERROR_FILE).read_text().splitlines()[0])
        else:
            row["status"] = "not run"
        rows.append(row)
    finished = sorted((r for r in rows if r["status"] == "finished"), key=lambda r: _score(r, sweep.metric, sweep.metric_goal))
    for rank, row in enumerate(finished, start=1):
        row["rank"] = rank
    return finished + [row for row in rows if row["status"] != "finished"]


def _override_keys(sweep) -> list[str]:
    return list(dict.fromkeys(key for run in sweep.runs for key in run.overrides))


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "" if value is None else str(value)


def ranking_table(sweep, rows: list[dict], overrides: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main columns: rank, name, status, (overrides,) the metric, SHOWN, error."""
    metrics = [sweep.metric] + [key for key in SHOWN if key != sweep.metric and any(key in row for row in rows)]
    columns = [*FIXED, *(_override_keys(sweep) if overrides else []), *metrics]
    if overrides and any("error" in row for row in rows):
        columns.append("error")
    return columns, [[_format(row.get(column)) for column in columns] for row in rows]


def write_results(sweep, rows: list[dict]) -> list[Path]:
    """results.csv, results.md and the plots, in the sweep's output_dir; returns their paths."""
    out = sweep.output_dir
    first = [*FIXED, *_override_keys(sweep)]
    rest = sorted({key for row in rows for key in row} - set(first) - {"error"})
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*first, *rest, "error"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    plots = [plot_by_run(rows, sweep.metric, out / "plot_by_run.png")]
    plots += [plot_against(rows, key, sweep.grid_keys, sweep.metric, out / f"plot_{key}.png") for key in sweep.grid_keys]
    plots = [plot for plot in plots if plot is not None]
    columns, table = ranking_table(sweep, rows)
    counts = {status: sum(row["status"] == status for row in rows) for status in ("finished", "failed", "not run")}
    lines = [
        f"# Sweep `{sweep.source}`",
        "",
        f"Ranked by `{sweep.metric}` ({'lower' if sweep.metric_goal == 'min' else 'higher'} is better); "
        + ", ".join(f"{count} {status}" for status, count in counts.items())
        + ". Every value of every run: `results.csv`.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table),
        "",
        *(f"![{plot.stem}]({plot.name})" for plot in plots),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return [out / "results.csv", out / "results.md", *plots]


def print_ranking(sweep, rows: list[dict], console: Console | None = None) -> None:
    """The ranking without the override columns (the names carry them), then one line per failure."""
    columns, table = ranking_table(sweep, rows, overrides=False)
    ranking = Table(title=f"{sweep.source}: ranked by {sweep.metric} ({sweep.metric_goal})")
    for column in columns:
        ranking.add_column(column.replace(".", " ").replace("_", " "), overflow="fold")
    for row in table:
        ranking.add_row(*row)
    console = console or Console()
    console.print(ranking)
    for row in rows:
        if row["status"] == "failed":
            console.print(f"{row['name']}: failed: {row['error']}", markup=False, highlight=False)
    console.print(f"results: {sweep.output_dir / 'results.md'}")
