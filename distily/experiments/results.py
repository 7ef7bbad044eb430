"""The results of a sweep: one row per run, from its ``metrics.json`` (flattened: ``student.after_perplexity``)
or its ``error.txt``, ranked by the sweep's metric (distily.reporting.sweep writes and prints them)."""

import math

from distily.experiments.runs import render_value
from distily.training.run_dir import RunDir

ERROR_FILE = "error.txt"  # first line: the error in one line; then the traceback


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
            row.update(status="finished", **flatten(RunDir(run_dir).read_metrics().to_dict()))
        elif (run_dir / ERROR_FILE).exists():
            row.update(status="failed", error=(run_dir / ERROR_FILE).read_text().splitlines()[0])
        else:
            row["status"] = "not run"
        rows.append(row)
    finished = sorted((r for r in rows if r["status"] == "finished"), key=lambda r: _score(r, sweep.metric, sweep.metric_goal))
    for rank, row in enumerate(finished, start=1):
        row["rank"] = rank
    return finished + [row for row in rows if row["status"] != "finished"]
