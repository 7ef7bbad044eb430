"""``distily sweep``: run each run of a sweep that has not finished, record failures, gather the results.

A run is finished when its ``metrics.json`` exists without an ``error.txt``, and running the sweep again skips it;
a finished or resumable run whose settings (config keys and flags, recorded in its ``run.json``) differ from the
sweep's now is an error before anything runs, rather than a stale result in the table. A run that
was killed resumes from its last checkpoint (or starts again without one); a failed run is tried
again. A failure (any exception, also one after ``metrics.json`` was written, which is then removed) goes to
the run's ``error.txt`` and one line of the results, and the sweep goes on. Results are written when the sweep
ends, also when it is interrupted; Ctrl-C names the command that continues the sweep.
"""

import gc
import json
import shlex
import traceback

from tqdm.auto import tqdm

from distily.errors import DistilyConfigError, RunInterrupted
from distily.experiments import sweep_file
from distily.experiments.results import ERROR_FILE, check_ranked, gather_results, run_finished
from distily.experiments.runs import Run
from distily.experiments.sweep_file import Sweep, flag_keys
from distily.outputs import write_json_atomic
from distily.preemption import stopped_on
from distily.reporting.sweep import print_ranking, write_results
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir

RUN_FILE = "run.json"  # what the run is: its name, overrides and settings


def one_line(error: Exception) -> str:
    """A user error's own message; any other exception's type and first line."""
    message = (str(error).strip().splitlines() or [""])[0]
    return message if isinstance(error, DistilyConfigError) else f"{type(error).__name__}: {message}"


def sweep_command(sweep: Sweep) -> str:
    """The command line that runs ``sweep`` (its flags and output_dir included): what continues it."""
    return shlex.join(["distily", "sweep", sweep.source, *sweep.flags, "--output_dir", str(sweep.output_dir)])


def _resumable(run_dir) -> bool:
    return RunDir(run_dir).last_checkpoint() is not None


def _settings(sweep: Sweep, run: Run) -> dict:
    """What a run is started with, as it reads back from JSON; output_dir left out so a sweep can move."""
    values = {key: value for key, value in sweep.values(run).items() if key != "output_dir"}
    return json.loads(json.dumps({"values": values, "flags": sweep.flags}))


def _shown(settings: dict, key: str) -> str:
    if key in settings["values"]:
        return repr(settings["values"][key])
    return "set by a flag" if key in flag_keys(settings["flags"]) else "not set"


def check_started_runs(sweep: Sweep) -> None:
    """Refuse a sweep whose finished or resumable runs were started with other settings than it would use now."""
    for run in sweep.runs:
        run_dir = sweep.run_dir(run)
        kept = run_finished(run_dir) or _resumable(run_dir)
        if not kept or not (run_dir / RUN_FILE).exists():
            continue
        was = json.loads((run_dir / RUN_FILE).read_text()).get("settings")
        now = _settings(sweep, run)
        if was is None or was == now:
            continue
        differences = [
            f"{key}: {_shown(was, key)} then, {_shown(now, key)} now"
            for key in sorted(set(was["values"]) | set(now["values"]))
            if was["values"].get(key) != now["values"].get(key)
        ]
        if was["flags"] != now["flags"]:
            differences.append(f"flags: {was['flags']} then, {now['flags']} now")
        raise DistilyConfigError(
            f"run {run.name!r} in {sweep.output_dir} was started with other settings ({differences[0]}); expected the "
            "settings it ran with, or a new output_dir for the changed sweep"
        )


def _run(sweep: Sweep, run: Run) -> None:
    run_dir = sweep.run_dir(run)
    resume = _resumable(run_dir)
    record = {"name": run.name, "overrides": run.overrides, "sweep": sweep.source, "settings": _settings(sweep, run)}
    write_json_atomic(run_dir / RUN_FILE, record)
    if (run_dir / ERROR_FILE).exists():  # failed: a metrics.json beside its error is the failed attempt's
        RunDir(run_dir).unmark_finished()
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    config = sweep.config(run, **({"resume_from_checkpoint": "true"} if resume else {}))
    run_distillation(config, command=f"{sweep_command(sweep)} (run {run.name})")


def run_sweep(sweep: Sweep) -> list[dict]:
    """Run what is left of ``sweep``, write results.csv, results.md and plots, and return the ranked rows (a
    DistilyConfigError, after they are written, when no finished run measured the sweep's metric)."""
    check_started_runs(sweep)
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    progress = tqdm(sweep.runs, desc=f"sweep {sweep.output_dir.name}", unit="run")
    try:
        for run in progress:
            progress.set_postfix_str(run.name)
            if run_finished(sweep.run_dir(run)):
                tqdm.write(f"{run.name}: finished earlier, skipped")
                continue
            try:
                _run(sweep, run)
            except Exception as error:  # recorded; the other runs go on
                RunDir(sweep.run_dir(run)).unmark_finished()  # a failure after metrics.json: failed, tried again
                (sweep.run_dir(run) / ERROR_FILE).write_text(f"{one_line(error)}\n\n{traceback.format_exc()}")
                tqdm.write(f"{run.name}: failed: {one_line(error)}")
            gc.collect()
    except KeyboardInterrupt as interrupt:  # the sweep, not its run, is what to start again
        number = RunInterrupted.of(interrupt).signal_number
        raise RunInterrupted(
            f"{stopped_on(number)}; `{sweep_command(sweep)}` continues the sweep (an unfinished run from its last "
            "checkpoint, or from the start without one)", number,
        ) from interrupt
    finally:
        progress.close()
        rows = gather_results(sweep)
        write_results(sweep, rows)
    check_ranked(sweep, rows)  # after the results are written: the finished runs' figures are kept
    return rows


def main(args: list[str], command_line: str) -> int:
    """Exit status 1 when a run failed (the others still ran)."""
    if args and args[0] in ("-h", "--help"):
        print(f"usage: distily sweep SWEEP.yaml [--output_dir DIR] [--key value ...]\n\n{sweep_file.__doc__}")
        return 0
    if not args or args[0].startswith("-"):
        given = f"{args[0]!r} first" if args else "nothing"
        raise DistilyConfigError(f"got {given}; expected a sweep file first: distily sweep SWEEP.yaml [--key value ...]"
                                 " (distily sweep --help describes the file)")
    sweep = sweep_file.load_sweep(args[0], args[1:])
    rows = run_sweep(sweep)
    print_ranking(sweep, rows)
    return int(any(row["status"] == "failed" for row in rows))
