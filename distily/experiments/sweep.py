"""``distily sweep``: run each run of a sweep that has not finished, record failures, gather the results.

A run is finished when its ``metrics.json`` exists, and running the sweep again skips it. A run that
was killed resumes from its last checkpoint (or starts again without one); a failed run is tried
again. A failure (any exception) goes to the run's ``error.txt`` and one line of the results, and the
sweep goes on. Results are written when the sweep ends, also when it is interrupted.
"""

import gc
import traceback

from tqdm.auto import tqdm
from transformers.trainer_utils import get_last_checkpoint

from distily.errors import DistilyConfigError
from distily.experiments.results import ERROR_FILE, gather_results, write_results
from distily.experiments.runs import Run
from distily.experiments.sweep_file import Sweep
from distily.outputs import write_json_atomic
from distily.training.distill import METRICS_FILE, run_distillation

RUN_FILE = "run.json"  # what the run is: its name and overrides


def one_line(error: Exception) -> str:
    """A user error's own message; any other exception's type and first line."""
    message = (str(error).strip().splitlines() or [""])[0]
    return message if isinstance(error, DistilyConfigError) else f"{type(error).__name__}: {message}"


def _run(sweep: Sweep, run: Run) -> None:
    run_dir = sweep.run_dir(run)
    resume = run_dir.is_dir() and get_last_checkpoint(str(run_dir)) is not None
    write_json_atomic(run_dir / RUN_FILE, {"name": run.name, "overrides": run.overrides, "sweep": sweep.source})
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    config = sweep.config(run, **({"resume_from_checkpoint": "true"} if resume else {}))
    run_distillation(config, command=f"distily sweep {sweep.source} (run {run.name})")


def run_sweep(sweep: Sweep) -> list[dict]:
    """Run what is left of ``sweep``, write results.csv, results.md and plots, and return the ranked rows."""
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    progress = tqdm(sweep.runs, desc=f"sweep {sweep.output_dir.name}", unit="run")
    try:
        for run in progress:
            progress.set_postfix_str(run.name)
            if (sweep.run_dir(run) / METRICS_FILE).exists():
                tqdm.write(f"{run.name}: finished earlier, skipped")
                continue
            try:
                _run(sweep, run)
            except Exception as error:  # recorded; the other runs go on
                (sweep.run_dir(run) / ERROR_FILE).write_text(f"{one_line(error)}\n\n{traceback.format_exc()}")
                tqdm.write(f"{run.name}: failed: {one_line(error)}")
            gc.collect()
    finally:
        progress.close()
        rows = gather_results(sweep)
        write_results(sweep, rows)
    return rows
