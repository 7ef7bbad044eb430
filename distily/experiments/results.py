"""The results of a sweep: one row per run, from its ``metrics.json`` (flattened: ``student.after_perplexity``)
or its ``error.txt``, ranked by the sweep's metric (distily.reporting.sweep writes and prints them)."""

from difflib import get_close_matches

from distily.errors import DistilyConfigError
from distily.experiments.runs import render_value
from distily.reporting.tables import is_nan, is_number
from distily.training.run_dir import RunDir

ERROR_FILE = "error.txt"  # first line: the error in one line; then the traceback


def run_finished(run_dir) -> bool:
    """Whether a sweep's run finished: its ``metrics.json`` is there, and no ``error.txt``. Every attempt at a run
    removes ``error.txt`` first, so the two together say it failed after writing its metrics (a folder of a sweep
    before bde2db0, which left both; since then a failure removes ``metrics.json``)."""
    return RunDir(run_dir).is_finished() and not (run_dir / ERROR_FILE).exists()


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics as one level of dotted keys; lists are left out."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def _has_metric(row: dict, metric: str) -> bool:
    value = row.get(metric)
    return is_number(value) and not is_nan(value)


def _score(row: dict, metric: str, goal: str) -> float:
    return row[metric] if goal == "min" else -row[metric]


def check_ranked(sweep, rows: list[dict]) -> None:
    """Refuse a ranking metric that no finished run measured (``metric:`` names a key a run can hold, but none
    of these did), naming the metrics they have, or measured as a number (NaN in every run that has it); nothing to
    check before a run has finished."""
    finished = [row for row in rows if row["status"] == "finished"]
    if not finished or any(_has_metric(row, sweep.metric) for row in finished):
        return
    diverged = sum(is_nan(row.get(sweep.metric)) for row in finished)
    if diverged:
        raise DistilyConfigError(
            f"{sweep.source}: metric={sweep.metric!r} is NaN in every finished run that measured it ({diverged} of "
            f"{len(finished)}); expected a number to rank the runs by (a student that diverged measures NaN: a lower "
            "learning_rate?)"
        )
    measured = sorted({key for row in finished for key in row if _has_metric(row, key)})
    closest = "".join(f" (closest: {key})" for key in get_close_matches(sweep.metric, measured, n=1))
    raise DistilyConfigError(f"{sweep.source}: metric={sweep.metric!r} is in no finished run's metrics; expected "
                             f"one of the metrics they have{closest}: {', '.join(measured)}")


def rank(sweep, finished: list[dict]) -> list[dict]:
    """The finished rows, those with the sweep's metric best first and numbered ``rank`` 1, 2, ...; runs of equal
    values share a rank, the next one counting them all (1, 1, 3), and keep the sweep file's order; then the rows
    without it (a run that measured something else), unranked."""
    ranked = sorted((row for row in finished if _has_metric(row, sweep.metric)),
                    key=lambda row: _score(row, sweep.metric, sweep.metric_goal))
    for position, row in enumerate(ranked):
        tied = position > 0 and row[sweep.metric] == ranked[position - 1][sweep.metric]
        row["rank"] = ranked[position - 1]["rank"] if tied else position + 1
    return ranked + [row for row in finished if not _has_metric(row, sweep.metric)]


def gather_results(sweep) -> list[dict]:
    """A row per run (name, overrides, status, metrics or error), finished runs ranked best first (``rank``)."""
    rows = []
    for run in sweep.runs:
        run_dir = sweep.run_dir(run)
        row = {"name": run.name, **{key: render_value(value) for key, value in run.overrides.items()}}
        if run_finished(run_dir):
            row.update(status="finished", **flatten(RunDir(run_dir).read_metrics().to_dict()))
        elif (run_dir / ERROR_FILE).exists():
            row.update(status="failed", error=(run_dir / ERROR_FILE).read_text().splitlines()[0])
        else:
            row["status"] = "not run"
        rows.append(row)
    finished = rank(sweep, [row for row in rows if row["status"] == "finished"])
    return finished + [row for row in rows if row["status"] != "finished"]
