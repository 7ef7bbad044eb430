"""The instruction-distillation comparison with each way of learning at its own best learning rate.

    python experiments/instruct_learning_rates.py benchmarks/results/instruct_references256_seed*.json

``experiments/instruct.py`` trains the five students (a) to (e) at one learning rate. How fast a 2-layer student
takes off on the reversal task depends on the learning rate differently for each signal, so one shared rate can
leave a method (the baseline included) below its best. This script reads ``instruct.py``'s JSON results of runs
that differ only in ``--seed`` and ``--learning_rate``, and picks for each student the rate with the highest median
held-out exact match over the seeds (one rate per method, the same at every seed: choosing per seed would fit the
held-out prompts), then checks ``instruct.py``'s goals at every seed with those rates. The held-out prompts both
choose the rate and score it, for every method alike: the rates are few (a grid of three), the choice is coarse.

Writes the tables to ``docs/results/instruct-references256-learning-rates.md``, exact match against the rate beside
it (``.png``) and every number to ``benchmarks/results/instruct_references256_learning_rates.json``.
"""

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import matplotlib

from distily.outputs import write_json_atomic

from instruct import GOAL_MARGIN, VARIANTS, goals, parse_args as parse_instruct_args, schedule_text
from wikitext import REPO, markdown_head, markdown_row, save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIED = ("seed", "learning_rate")
UNCOMPARED = ("json", "report", "work_dir")  # where a run wrote its files, not how it trained
STUDENTS = [name for name, *_ in VARIANTS]
DEFAULTS = vars(parse_instruct_args([]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="instruct.py JSON results (--json) of the seeds and rates")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "instruct-references256-learning-rates.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "instruct_references256_learning_rates.json"))
    return parser.parse_args(argv)


def read_runs(paths: list[str]) -> tuple[dict, dict]:
    """{(seed, learning rate): {student: final held-out exact match}} and the settings the runs share; runs that
    differ in anything else, or two runs of one seed and rate, are refused."""
    runs, shared = {}, None
    for path in paths:
        result = json.loads(Path(path).read_text())
        settings = {**DEFAULTS, **result["settings"]}  # a run from before an option existed ran at its default
        same = {key: value for key, value in settings.items() if key not in VARIED + UNCOMPARED}
        if shared is not None and same != shared:
            other = sorted(key for key in same.keys() | shared.keys() if same.get(key) != shared.get(key))
            raise SystemExit(f"{path} differs from the runs before it in {', '.join(other)}; expected runs that "
                             "differ only in seed and learning_rate")
        shared = same
        key = (settings["seed"], settings["learning_rate"])
        if key in runs:
            raise SystemExit(f"{path} is a second run of seed {key[0]} at learning rate {key[1]}; expected one")
        runs[key] = {name: result["students"][name]["exact_match"] for name in STUDENTS}
    return runs, shared


def best_rates(runs: dict) -> dict[str, dict]:
    """Per student: the median exact match over the seeds at each rate run at every seed, and the best rate."""
    seeds = sorted({seed for seed, _ in runs})
    rates = sorted(rate for rate in {rate for _, rate in runs} if all((seed, rate) in runs for seed in seeds))
    if not rates:
        raise SystemExit("no learning rate was run at every seed; expected each rate run at the same seeds")
    chosen = {}
    for name in STUDENTS:
        medians = {rate: statistics.median(runs[seed, rate][name] for seed in seeds) for rate in rates}
        chosen[name] = {"medians": medians, "rate": max(rates, key=lambda rate: medians[rate])}
    return chosen


def goals_at(runs: dict, chosen: dict, prompts: int) -> dict[int, dict]:
    """instruct.py's goals at each seed, every student at its chosen rate."""
    found = {}
    for seed in sorted({seed for seed, _ in runs}):
        scores = {name: runs[seed, chosen[name]["rate"]][name] for name in STUDENTS}
        students = {name: {"exact_match": score} for name, score in scores.items()}
        found[seed] = {"exact_match": scores, **goals({"students": students}, prompts)}
    return found


def rate_words(settings: dict) -> str:
    """The runs' learning rate as the report words it: constant, or the peak of a schedule."""
    schedule = schedule_text(argparse.Namespace(**settings))
    return f"peak learning rate{schedule}" if schedule else "constant learning rate"


def write_report(path: Path, runs: dict, settings: dict, chosen: dict, goals: dict, command: str) -> None:
    rates = sorted({rate for _, rate in runs})
    letters = [f"({name[0]}) {name[2:]}" for name in STUDENTS]
    lines = [f"# Instruction distillation at {settings['references']} references: each student at its best learning "
             "rate", "", f"Command: `{command}`.", "",
             f"Held-out exact match (%) after the run's last step, each seed and {rate_words(settings)}:", "",
             *markdown_head(["seed", "learning rate", *letters])]
    for seed, rate in sorted(runs):
        lines.append(markdown_row([seed, f"{rate:g}", *(f"{runs[seed, rate][name]:.1f}" for name in STUDENTS)]))
    lines += ["", "Median over the seeds, the chosen rate in bold:", "", *markdown_head(["learning rate", *letters])]
    for rate in rates:
        cells = [(f"**{chosen[name]['medians'][rate]:.1f}**" if chosen[name]["rate"] == rate
                  else f"{chosen[name]['medians'][rate]:.1f}") if rate in chosen[name]["medians"] else "-"
                 for name in STUDENTS]
        lines.append(markdown_row([f"{rate:g}", *cells]))
    lines += ["", "Each student at its chosen rate:", "",
              *markdown_head(["seed", *letters, "every KD student beats (a)", "(d) or (e) over (b)"])]
    for seed, found in goals.items():
        lines.append(markdown_row([seed, *(f"{found['exact_match'][name]:.1f}" for name in STUDENTS),
                                   "yes" if found["every_kd_student_beats_fine_tuning"] else "no",
                                   f"{found['on_policy_or_mixed_over_kd_references_points']:+.1f}"]))
    lines += ["", "\"Beats\": by more than two standard errors of the difference on the held-out prompts; the second "
              f"goal asks for at least +{GOAL_MARGIN:.0f} points.", "",
              f"![held-out exact match against the learning rate]({path.with_suffix('.png').name})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def plot(runs: dict, chosen: dict, path: Path) -> None:
    seeds = sorted({seed for seed, _ in runs})
    figure, axes = plt.subplots(1, len(STUDENTS), figsize=(3 * len(STUDENTS), 3.2), sharey=True)
    for ax, name in zip(axes, STUDENTS):
        for seed in seeds:
            rates = sorted(rate for s, rate in runs if s == seed)
            ax.plot(rates, [runs[seed, rate][name] for rate in rates], marker="o", alpha=0.6, label=f"seed {seed}")
        medians = chosen[name]["medians"]
        ax.plot(list(medians), list(medians.values()), color="black", linewidth=2, label="median")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(medians), [f"{rate:g}" for rate in medians])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("learning rate")
    axes[0].set_ylabel("held-out exact match (%)")
    axes[-1].legend(fontsize=7)
    save_figure(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = shlex.join(["python", "experiments/instruct_learning_rates.py", *(sys.argv[1:] if argv is None
                                                                                  else argv)])
    runs, settings = read_runs(args.results)
    chosen = best_rates(runs)
    goals = goals_at(runs, chosen, settings["heldout"])
    results = {"command": command, "settings": settings, "chosen_learning_rates": chosen, "goals": goals,
               "runs": [{"seed": seed, "learning_rate": rate, "exact_match": scores}
                        for (seed, rate), scores in sorted(runs.items())]}
    write_json_atomic(args.json, results)
    write_report(Path(args.report), runs, settings, chosen, goals, command)
    plot(runs, chosen, Path(args.report).with_suffix(".png"))
    for seed, found in goals.items():
        print(f"seed {seed}: every KD student beats (a): {found['every_kd_student_beats_fine_tuning']}; "
              f"(d) or (e) over (b): {found['on_policy_or_mixed_over_kd_references_points']:+.1f}")
    return results


if __name__ == "__main__":
    main()
