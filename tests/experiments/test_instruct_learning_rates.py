"""experiments/instruct_learning_rates.py: one setting (learning rate, KD temperature) per student, chosen by its
median over the seeds."""

import json

import pytest

import instruct_learning_rates as script

SETTINGS = {"heldout": 256, "references": 256, "student_steps": 1500, "work_dir": "w", "json": "j", "report": "r"}


def write_run(directory, seed, rate, scores, names=script.STUDENTS, **settings):
    varied = "-".join(f"{key}{value}" for key, value in settings.items())
    path = directory / f"seed{seed}-lr{rate}-{varied}-{len(names)}.json"
    students = {name: {"exact_match": score} for name, score in zip(names, scores)}
    path.write_text(json.dumps({"settings": {**SETTINGS, "seed": seed, "learning_rate": rate, **settings,
                                             "work_dir": f"runs/{seed}-{rate}"},
                                "students": students}))
    return str(path)


def test_each_student_gets_the_rate_of_its_best_median_and_the_goals_are_checked_at_every_seed(tmp_path):
    scores = {  # (a) best at 3e-3, (b) to (e) at 1e-3
        (0, 1e-3): [1.0, 60.0, 80.0, 70.0, 75.0], (1, 1e-3): [0.0, 2.0, 50.0, 50.0, 3.0],
        (2, 1e-3): [40.0, 45.0, 60.0, 77.0, 57.0],
        (0, 3e-3): [30.0, 10.0, 1.0, 1.0, 1.0], (1, 3e-3): [44.0, 17.0, 1.0, 0.0, 1.0],
        (2, 3e-3): [50.0, 20.0, 2.0, 0.0, 0.0],
        (1, 3e-4): [90.0, 90.0, 90.0, 90.0, 90.0],  # at one seed only: not a candidate
    }
    paths = [write_run(tmp_path, seed, rate, values) for (seed, rate), values in scores.items()]
    runs, settings = script.read_runs(paths)
    chosen = script.best_settings(runs)
    assert {name: found["setting"][0] for name, found in chosen.items()} == {
        "a-fine-tune": 3e-3, "b-kd-references": 1e-3, "c-kd-responses": 1e-3, "d-on-policy": 1e-3, "e-mixed": 1e-3}
    assert chosen["a-fine-tune"]["medians"] == {(1e-3, 1.0): 1.0, (3e-3, 1.0): 44.0}
    goals = script.goals_at(runs, chosen, settings["heldout"])
    assert goals[0]["exact_match"]["a-fine-tune"] == 30.0 and goals[0]["exact_match"]["b-kd-references"] == 60.0
    assert [found["every_kd_student_beats_fine_tuning"] for found in goals.values()] == [True, False, False]
    assert [found["on_policy_or_mixed_over_kd_references_points"] for found in goals.values()] == [15.0, 48.0, 32.0]
    script.main([*paths, "--report", str(tmp_path / "out" / "r.md"), "--json", str(tmp_path / "out" / "r.json")])
    assert (tmp_path / "out" / "r.png").stat().st_size > 0
    report = (tmp_path / "out" / "r.md").read_text()
    assert "| 0 | 30.0 | 60.0 | 80.0 | 70.0 | 75.0 | yes | +15.0 |" in report
    assert "each seed and constant learning rate:" in report  # the runs record no schedule: constant


def test_the_report_names_the_runs_schedule(tmp_path):
    paths = [write_run(tmp_path, seed, 1e-3, [0.0] * 5, lr_scheduler_type="cosine", warmup_steps=150)
             for seed in (0, 1)]
    script.main([*paths, "--report", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json")])
    report = (tmp_path / "r.md").read_text()
    assert "each seed and peak learning rate (150 warmup steps, then cosine):" in report
    assert report.startswith("# Instruction distillation at 256 references")


def test_runs_that_differ_in_more_than_seed_and_rate_are_refused(tmp_path):
    paths = [write_run(tmp_path, 0, 1e-3, [0.0] * 5), write_run(tmp_path, 1, 1e-3, [0.0] * 5, student_steps=600)]
    with pytest.raises(SystemExit, match="differs from the runs before it in student_steps; expected runs that"):
        script.read_runs(paths)
    with pytest.raises(SystemExit, match="runs a-fine-tune a second time at seed 0, 0.001; expected once"):
        script.read_runs([paths[0], paths[0]])


def test_a_student_run_alone_at_another_temperature_competes_for_its_setting(tmp_path):
    """(b) rerun alone (instruct.py --students) at temperature 2 at every seed: chosen where its median is best;
    a temperature run at one seed only is no candidate."""
    full = {0: [10.0, 5.0, 50.0, 60.0, 55.0], 1: [20.0, 1.0, 40.0, 50.0, 45.0]}
    paths = [write_run(tmp_path, seed, 1e-3, scores) for seed, scores in full.items()]
    paths += [write_run(tmp_path, seed, 1e-3, [score], names=["b-kd-references"], logits_temperature=2.0)
              for seed, score in ((0, 30.0), (1, 25.0))]
    paths.append(write_run(tmp_path, 0, 1e-3, [90.0], names=["c-kd-responses"], logits_temperature=4.0))
    runs, _ = script.read_runs(paths)
    chosen = script.best_settings(runs)
    assert chosen["b-kd-references"]["setting"] == (1e-3, 2.0)
    assert chosen["b-kd-references"]["medians"] == {(1e-3, 1.0): 3.0, (1e-3, 2.0): 27.5}
    assert chosen["c-kd-responses"]["medians"] == {(1e-3, 1.0): 45.0}  # T 4 at seed 0 only
    goals = script.goals_at(runs, chosen, 256)
    assert goals[1]["exact_match"]["b-kd-references"] == 25.0 and goals[1]["exact_match"]["a-fine-tune"] == 20.0
    results = script.main([*paths, "--report", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json")])
    assert results["chosen"]["b-kd-references"]["logits_temperature"] == 2.0
    report = (tmp_path / "r.md").read_text()
    assert "| 0 | 0.001, T 2 | - | 30.0 | - | - | - |" in report and "T: the KD students' loss temperature" in report
    assert "| 0.001, T 2 | - | **27.5** | - | - | - |" in report


def test_a_run_from_before_an_option_existed_counts_as_run_at_its_default(tmp_path):
    older = write_run(tmp_path, 0, 1e-3, [0.0] * 5)  # records no lr_scheduler_type: it ran at the constant rate
    runs, settings = script.read_runs([older, write_run(tmp_path, 1, 1e-3, [0.0] * 5, lr_scheduler_type="constant")])
    assert len(runs) == 2 and settings["lr_scheduler_type"] == "constant"
    with pytest.raises(SystemExit, match="differs from the runs before it in lr_scheduler_type"):
        script.read_runs([older, write_run(tmp_path, 2, 1e-3, [0.0] * 5, lr_scheduler_type="cosine")])


def test_fixed_settings_from_other_seeds_are_scored_not_chosen(tmp_path):
    """The settings chosen on seeds 0 and 1 are scored on seed 2, even where another setting does better there."""
    first = [write_run(tmp_path, seed, rate, [10.0 if rate == 3e-3 else 0.0, *[50.0 if rate == 1e-3 else 5.0] * 4])
             for seed in (0, 1) for rate in (1e-3, 3e-3)]
    chosen_json = tmp_path / "chosen.json"
    script.main([*first, "--report", str(tmp_path / "chosen.md"), "--json", str(chosen_json)])
    new = [write_run(tmp_path, 2, 1e-3, [90.0, 20.0, 30.0, 40.0, 50.0]),
           write_run(tmp_path, 2, 3e-3, [5.0, 80.0, 80.0, 80.0, 80.0])]
    results = script.main([*new, "--fixed_settings", str(chosen_json), "--report", str(tmp_path / "fixed.md"),
                           "--json", str(tmp_path / "fixed.json")])
    assert {name: found["learning_rate"] for name, found in results["chosen"].items()} == {
        "a-fine-tune": 3e-3, "b-kd-references": 1e-3, "c-kd-responses": 1e-3, "d-on-policy": 1e-3, "e-mixed": 1e-3}
    assert results["goals"][2]["exact_match"] == {"a-fine-tune": 5.0, "b-kd-references": 20.0,
                                                  "c-kd-responses": 30.0, "d-on-policy": 40.0, "e-mixed": 50.0}
    assert results["fixed_by"] == str(chosen_json)
    report = (tmp_path / "fixed.md").read_text()
    assert f"the setting fixed by `{chosen_json}` (chosen on its seeds) in bold" in report
    assert report.startswith("# Instruction distillation at 256 references: each student at the setting chosen on "
                             "other seeds")
    assert "fixed_by" not in json.loads(chosen_json.read_text())  # a choosing run's JSON is as before

    lone = [write_run(tmp_path, 3, 1e-3, [90.0, 20.0, 30.0, 40.0, 50.0])]  # (a)'s fixed 3e-3 not run at seed 3
    with pytest.raises(SystemExit, match=r"a-fine-tune was not run at 0.003 \(the fixed setting\) at every seed"):
        script.main([*lone, "--fixed_settings", str(chosen_json), "--json", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="chose settings for no student; expected this script's JSON"):
        script.main([*new, "--fixed_settings", new[0], "--json", str(tmp_path / "x.json")])


def test_fixed_settings_chosen_on_runs_of_another_schedule_are_refused(tmp_path):
    """Settings chosen on cosine runs say nothing of the best rate at a constant one: scoring them there is
    refused, naming what differs, before anything is written."""
    cosine = [write_run(tmp_path, seed, 1e-3, [0.0] * 5, lr_scheduler_type="cosine", warmup_steps=150)
              for seed in (0, 1)]
    chosen_json = tmp_path / "chosen.json"
    script.main([*cosine, "--report", str(tmp_path / "chosen.md"), "--json", str(chosen_json)])
    constant = [write_run(tmp_path, 2, 1e-3, [0.0] * 5)]
    with pytest.raises(SystemExit, match="chose on runs that differ from these in lr_scheduler_type, warmup_steps; "
                                         "expected runs that differ only in seed"):
        script.main([*constant, "--fixed_settings", str(chosen_json), "--report", str(tmp_path / "fixed.md"),
                     "--json", str(tmp_path / "fixed.json")])
    assert not (tmp_path / "fixed.json").exists() and not (tmp_path / "fixed.md").exists()
