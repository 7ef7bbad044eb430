"""The instruction-distillation comparison with each way of learning at its own best learning rate (and, for the
KD students, temperature).

    python experiments/instruct_learning_rates.py benchmarks/results/instruct_references256_seed*.json

``experiments/instruct.py`` trains the five students (a) to (e) at one learning rate and one KD temperature. How
fast a 2-layer student takes off on the reversal task depends on the learning rate differently for each signal,
so one shared rate can leave a method (the baseline included) below its best. This script reads ``instruct.py``'s
JSON results of runs that differ only in ``--seed``, ``--learning_rate`` and ``--logits_temperature`` (a run may
hold some of the students: ``--students``), and picks for each student the setting (rate, temperature) with the
highest median held-out exact match over the seeds, among those it was run with at every seed (one setting per
method, the same at every seed: choosing per seed would fit the held-out prompts), then checks ``instruct.py``'s
goals at every seed with those settings. The held-out prompts both choose the setting and score it, for every
method alike: the settings are few, the choice is coarse. Fine-tuning (a) has no temperature (its loss reads no
teacher logits).

``--fixed_settings FILE`` takes the settings from an earlier output of this script instead (chosen on its seeds)
and only scores them: run on new seeds, a test of the choice on prompts, data and teachers it never saw. Its runs
must share the settings of the runs scored (schedule, steps, references...), as the runs of one call must.

Writes the tables to ``docs/results/instruct-references256-learning-rates.md``, exact match against the setting
beside it (``.png``) and every number to ``benchmarks/results/instruct_references256_learning_rates.json``.
"""

import argparse
import json
import statistics
from pathlib import Path
from typing import Optional

import matplotlib

from distily.outputs import write_json_atomic

from instruct import GOAL_MARGIN, STUDENTS, goals, parse_args as parse_instruct_args, schedule_text
from wikitext import REPO, command_line, markdown_head, markdown_row, save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIED = ("seed", "learning_rate", "logits_temperature")
UNCOMPARED = ("json", "report", "work_dir", "students")  # where a run wrote its files and which students it trained
DEFAULTS = vars(parse_instruct_args([]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="instruct.py JSON results (--json) of the seeds and settings")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "instruct-references256-learning-rates.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "instruct_references256_learning_rates.json"))
    parser.add_argument("--fixed_settings", metavar="FILE",
                        help="this script's JSON from other seeds: score each student at the setting chosen there")
    return parser.parse_args(argv)


def label(setting: tuple[float, float]) -> str:
    """A setting (learning rate, temperature) as the tables name it: the rate, and the temperature unless 1."""
    rate, temperature = setting
    return f"{rate:g}" if temperature == 1 else f"{rate:g}, T {temperature:g}"


def in_order(settings) -> list[tuple[float, float]]:
    """Settings (learning rate, temperature) as the tables and the plot list them: by temperature, then rate."""
    return sorted(settings, key=lambda setting: (setting[1], setting[0]))


def compared(settings: dict) -> dict:
    """The settings runs must share: all but VARIED and UNCOMPARED, a setting a run does not record (it is from
    before the option existed) at its default."""
    return {key: value for key, value in {**DEFAULTS, **settings}.items() if key not in VARIED + UNCOMPARED}


def differing(first: dict, second: dict) -> str:
    """The keys whose values differ between two ``compared`` settings, as text."""
    return ", ".join(sorted(key for key in first.keys() | second.keys() if first.get(key) != second.get(key)))


def read_runs(paths: list[str]) -> tuple[dict, dict]:
    """{(seed, (learning rate, temperature)): {student: final held-out exact match}} and the settings the runs
    share; runs that differ in anything else, or a student run twice at one seed and setting, are refused."""
    runs, shared = {}, None
    for path in paths:
        result = json.loads(Path(path).read_text())
        settings, same = {**DEFAULTS, **result["settings"]}, compared(result["settings"])
        if shared is not None and same != shared:
            raise SystemExit(f"{path} differs from the runs before it in {differing(same, shared)}; expected runs "
                             f"that differ only in {', '.join(VARIED)}")
        shared = same
        seed, setting = settings["seed"], (settings["learning_rate"], settings["logits_temperature"])
        scores = runs.setdefault((seed, setting), {})
        for name, row in result["students"].items():
            if name in scores:
                raise SystemExit(f"{path} runs {name} a second time at seed {seed}, {label(setting)}; expected once")
            scores[name] = row["exact_match"]
    return runs, shared


def fixed_settings(path: str, shared: dict) -> dict[str, tuple[float, float]]:
    """Per student, the setting (learning rate, temperature) an earlier output of this script chose, on runs that
    shared the ``shared`` settings of the runs now scored (else the setting was chosen for another experiment)."""
    found = json.loads(Path(path).read_text())
    chosen = found.get("chosen", {})
    if set(chosen) != set(STUDENTS):
        raise SystemExit(f"--fixed_settings {path} chose settings for {', '.join(sorted(chosen)) or 'no student'}; "
                         f"expected this script's JSON, with a setting for each of {', '.join(STUDENTS)}")
    earlier = compared(found.get("settings", {}))
    if earlier != shared:
        raise SystemExit(f"--fixed_settings {path} chose on runs that differ from these in {differing(earlier, shared)}"
                         f"; expected runs that differ only in {', '.join(VARIED)}")
    return {name: (setting["learning_rate"], setting["logits_temperature"]) for name, setting in chosen.items()}


def best_settings(runs: dict, fixed: Optional[dict] = None) -> dict[str, dict]:
    """Per student: the median exact match over the seeds at each setting it was run with at every seed, and the
    best of them, or the setting ``fixed`` gives it (``fixed_settings``)."""
    seeds = sorted({seed for seed, _ in runs})
    settings = in_order({setting for _, setting in runs})
    chosen = {}
    for name in STUDENTS:
        medians = {setting: statistics.median(runs[seed, setting][name] for seed in seeds) for setting in settings
                   if all(name in runs.get((seed, setting), {}) for seed in seeds)}
        if not medians:
            raise SystemExit(f"{name} was run at no setting at every seed ({', '.join(map(str, seeds))}); expected "
                             "each student run with some setting at the same seeds")
        best = fixed[name] if fixed is not None else max(medians, key=lambda setting: medians[setting])
        if best not in medians:
            raise SystemExit(f"{name} was not run at {label(best)} (the fixed setting) at every seed "
                             f"({', '.join(map(str, seeds))}); expected a run of it at that setting at each")
        chosen[name] = {"medians": medians, "setting": best}
    return chosen


def goals_at(runs: dict, chosen: dict, prompts: int) -> dict[int, dict]:
    """instruct.py's goals at each seed, every student at its chosen setting."""
    found = {}
    for seed in sorted({seed for seed, _ in runs}):
        scores = {name: runs[seed, chosen[name]["setting"]][name] for name in STUDENTS}
        students = {name: {"exact_match": score} for name, score in scores.items()}
        found[seed] = {"exact_match": scores, **goals({"students": students}, prompts)}
    return found


def rate_words(settings: dict) -> str:
    """The runs' learning rate as the report words it: constant, or the peak of a schedule."""
    schedule = schedule_text(argparse.Namespace(**settings))
    return f"peak learning rate{schedule}" if schedule else "constant learning rate"


def write_report(path: Path, runs: dict, settings: dict, chosen: dict, goals: dict, command: str,
                 fixed_by: Optional[str] = None) -> None:
    letters = [f"({name[0]}) {name[2:]}" for name in STUDENTS]
    ordered = in_order({setting for _, setting in runs})
    at = "the setting chosen on other seeds" if fixed_by else "its best setting"
    lines = [f"# Instruction distillation at {settings['references']} references: each student at {at}",
             "", f"Command: `{command}`.", "",
             f"Held-out exact match (%) after the run's last step, each seed and {rate_words(settings)}:", "",
             *markdown_head(["seed", "learning rate", *letters])]
    for seed, setting in sorted(runs, key=lambda key: (key[0], ordered.index(key[1]))):
        scores = runs[seed, setting]
        lines.append(markdown_row([seed, label(setting), *(f"{scores[name]:.1f}" if name in scores else "-"
                                                           for name in STUDENTS)]))
    if any(setting[1] != 1 for setting in ordered) or any(len(scores) < len(STUDENTS) for scores in runs.values()):
        lines += ["", "T: the KD students' loss temperature, where it is not 1; -: the student was not run."]
    how = f"the setting fixed by `{fixed_by}` (chosen on its seeds)" if fixed_by else "the chosen setting"
    lines += ["", f"Median over the seeds, {how} in bold:", "",
              *markdown_head(["learning rate", *letters])]
    for setting in ordered:
        cells = [(f"**{chosen[name]['medians'][setting]:.1f}**" if chosen[name]["setting"] == setting
                  else f"{chosen[name]['medians'][setting]:.1f}") if setting in chosen[name]["medians"] else "-"
                 for name in STUDENTS]
        lines.append(markdown_row([label(setting), *cells]))
    lines += ["", f"Each student at {'that' if fixed_by else 'its chosen'} setting:", "",
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
    ordered = in_order({setting for _, setting in runs})
    at = {setting: index for index, setting in enumerate(ordered)}  # the settings side by side, evenly
    figure, axes = plt.subplots(1, len(STUDENTS), figsize=(3 * len(STUDENTS), 3.2), sharey=True)
    for ax, name in zip(axes, STUDENTS):
        for seed in seeds:
            ran = [setting for setting in ordered if name in runs.get((seed, setting), {})]
            ax.plot([at[setting] for setting in ran], [runs[seed, setting][name] for setting in ran], marker="o",
                    alpha=0.6, label=f"seed {seed}")
        medians = chosen[name]["medians"]
        ax.plot([at[setting] for setting in medians], list(medians.values()), color="black", linewidth=2,
                marker="_", markersize=18, markeredgewidth=2, label="median")  # a bar: one setting has no line
        ax.set_xticks(range(len(ordered)), [label(setting).replace(", ", "\n") for setting in ordered])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("learning rate")
    axes[0].set_ylabel("held-out exact match (%)")
    axes[-1].legend(fontsize=7)
    save_figure(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("instruct_learning_rates.py", argv)
    runs, settings = read_runs(args.results)
    chosen = best_settings(runs, fixed_settings(args.fixed_settings, settings) if args.fixed_settings else None)
    goals = goals_at(runs, chosen, settings["heldout"])
    results = {
        "command": command, "settings": settings, **({"fixed_by": args.fixed_settings} if args.fixed_settings else {}),
        "chosen": {name: {"learning_rate": found["setting"][0], "logits_temperature": found["setting"][1],
                          "medians": {label(setting): median for setting, median in found["medians"].items()}}
                   for name, found in chosen.items()},
        "goals": goals,
        "runs": [{"seed": seed, "learning_rate": setting[0], "logits_temperature": setting[1], "exact_match": scores}
                 for (seed, setting), scores in sorted(runs.items())],
    }  # fmt: skip
    write_json_atomic(args.json, results)
    write_report(Path(args.report), runs, settings, chosen, goals, command, args.fixed_settings)
    plot(runs, chosen, Path(args.report).with_suffix(".png"))
    for seed, found in goals.items():
        print(f"seed {seed}: every KD student beats (a): {found['every_kd_student_beats_fine_tuning']}; "
              f"(d) or (e) over (b): {found['on_policy_or_mixed_over_kd_references_points']:+.1f}")
    return results


if __name__ == "__main__":
    main()
