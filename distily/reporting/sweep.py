"""A sweep's results where people look: ``results.csv`` (every value), ``results.md`` (the ranking, the main
columns, the plots), PNG plots, and the ranking printed as a table. Rows as distily.experiments.results
gathers them."""

import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distily.outputs import remove_earlier_outputs
from distily.reporting.plots import plot_against, plot_by_run
from distily.reporting.tables import is_nan

SHOWN = (
    "teacher.perplexity",
    "teacher.bits_per_byte",
    "teacher.memory_bytes",
    "student.after_perplexity",
    "student.after_bits_per_byte",
    "student.after_kl_to_teacher",
    "student.after_top1_agreement",
    "train.wall_seconds",
)
FIXED = ("rank", "name", "status")
PLOT_PREFIX = "plot_"  # every PNG the sweep draws in its output_dir: plot_by_run.png, plot_KEY.png per grid key
PLOT_BY_RUN = f"{PLOT_PREFIX}by_run.png"


def _override_keys(sweep) -> list[str]:
    return list(dict.fromkeys(key for run in sweep.runs for key in run.overrides))


def _plot_name(key: str) -> str:
    """The plot of the metric against the grid key ``key``."""
    return f"{PLOT_PREFIX}{key}.png"


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "" if value is None else str(value)


def ranking_table(sweep, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main columns: rank, name, status, overrides, the metric, SHOWN, error."""
    metrics = [sweep.metric] + [key for key in SHOWN if key != sweep.metric and any(key in row for row in rows)]
    columns = [*FIXED, *_override_keys(sweep), *metrics]
    if any("error" in row for row in rows):
        columns.append("error")
    return columns, [[_format(row.get(column)) for column in columns] for row in rows]


def _ranked_by(sweep, rows: list[dict]) -> str:
    """What results.md's runs are ordered by: the metric, or nothing when no finished run measured it."""
    if any(row["status"] == "finished" for row in rows) and not any("rank" in row for row in rows):
        if any(is_nan(row.get(sweep.metric)) for row in rows):
            return f"Not ranked: `{sweep.metric}` is NaN in every finished run that measured it; "
        return f"Not ranked: no finished run measured `{sweep.metric}`; "
    return f"Ranked by `{sweep.metric}` ({'lower' if sweep.metric_goal == 'min' else 'higher'} is better); "


def write_results(sweep, rows: list[dict]) -> list[Path]:
    """results.csv, results.md and the plots, in the sweep's output_dir; returns their paths."""
    out = sweep.output_dir
    first = [*FIXED, *_override_keys(sweep)]
    rest = sorted({key for row in rows for key in row} - set(first) - {"error"})
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*first, *rest, "error"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    # not all are drawn again: a ranking may be gone, an earlier sweep file in output_dir may have had other grid keys
    remove_earlier_outputs(out, [plot.name for plot in out.glob(f"{PLOT_PREFIX}*.png")])
    plots = [plot_by_run(rows, sweep.metric, out / PLOT_BY_RUN)]
    plots += [plot_against(rows, key, _override_keys(sweep), sweep.metric, out / _plot_name(key))
              for key in sweep.grid_keys]
    plots = [plot for plot in plots if plot is not None]
    columns, table = ranking_table(sweep, rows)
    counts = {status: sum(row["status"] == status for row in rows) for status in ("finished", "failed", "not run")}
    lines = [
        f"# Sweep `{sweep.source}`",
        "",
        _ranked_by(sweep, rows) + ", ".join(f"{count} {status}" for status, count in counts.items())
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
    """The ranking by the metric (the names carry the overrides; the other columns are in results.md), with the
    status where a run did not finish, then one line per failure. Few enough columns to fit an 80-column terminal
    or log: every main column there left each figure a character or two wide, folded over several lines."""
    unfinished = any(row["status"] != "finished" for row in rows)
    columns = ["rank", "name", *(["status"] if unfinished else []), sweep.metric]
    ranking = Table(title=f"{sweep.source}: ranked by {sweep.metric} ({sweep.metric_goal})")
    table = [[_format(row.get(column)) for column in columns] for row in rows]
    for index, column in enumerate(columns):  # whole names (what a user copies) and figures; headers may wrap
        width = max((len(cells[index]) for cells in table), default=0)
        ranking.add_column(column.replace(".", " ").replace("_", " "), no_wrap=column == "name", min_width=width)
    for cells in table:
        ranking.add_row(*cells)
    console = console or Console()
    console.print(ranking)
    for row in rows:
        if row["status"] == "failed":
            console.print(f"{row['name']}: failed: {row['error']}", markup=False, highlight=False)
    console.print(f"results: {sweep.output_dir / 'results.md'} (every value: results.csv)")
