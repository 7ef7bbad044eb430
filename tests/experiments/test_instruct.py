"""experiments/instruct.py: the task and its chat tokenization, and the whole comparison at a toy scale."""

import argparse
import json
import random

import pytest

import instruct as script


def test_reversal_prompts_are_answered_reversed_and_held_out_prompts_are_new():
    prompt, answer = script.reversal(random.Random(3), 5, 12)
    letters = prompt.removeprefix("reverse ")
    assert answer == letters[::-1] and 5 <= len(letters) <= 12 and letters.isalpha() and letters.islower()
    args = script.parse_args(["--prompts", "40", "--references", "8", "--heldout", "30"])
    splits = script.task_splits(args)
    assert len(splits["prompts"]) == 40 and len(splits["heldout"]) == 30
    assert not {p for p, _ in splits["prompts"]} & {p for p, _ in splits["heldout"]}


def test_chat_tokenizer_masks_exactly_the_answer_and_its_end_of_turn():
    tokenizer = script.chat_tokenizer()
    batch = script.tokenized_batch([script.conversation("reverse abcde", "edcba")], tokenizer)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert tokenizer.decode(ids) == ("<|im_start|>user\nreverse abcde<|im_end|>\n"
                                     "<|im_start|>assistant\nedcba<|im_end|>\n")
    assert tokenizer.decode(labels[labels != -100]) == "edcba<|im_end|>"  # one token per letter, then end of turn
    assert (labels != -100).sum() == 6


def test_goals_compare_every_kd_student_with_fine_tuning_and_on_policy_with_kd_on_references():
    students = {"a-fine-tune": 10.0, "b-kd-references": 20.0, "c-kd-responses": 30.0, "d-on-policy": 24.0,
                "e-mixed": 26.0}  # fmt: skip
    met = script.goals({"students": {name: {"exact_match": value} for name, value in students.items()}}, 256)
    assert met == {"every_kd_student_beats_fine_tuning": True, "on_policy_or_mixed_over_kd_references_points": 6.0,
                   "on_policy_or_mixed_beats_kd_references_by_5_points": True}  # fmt: skip
    students["d-on-policy"], students["e-mixed"] = 10.0, 24.0
    met = script.goals({"students": {name: {"exact_match": value} for name, value in students.items()}}, 256)
    assert (not met["every_kd_student_beats_fine_tuning"]
            and not met["on_policy_or_mixed_beats_kd_references_by_5_points"])


def test_a_student_beats_another_only_beyond_two_standard_errors_of_the_difference():
    """1 prompt of 256 against 2 is noise; 10% against 20% of 256 is not (two standard errors: 6.25 points), nor of
    64 prompts (12.5 points)."""
    one, two = 100 / 256, 200 / 256
    assert not script.beats(two, one, 256) and script.beats(20.0, 10.0, 256) and not script.beats(20.0, 10.0, 64)
    assert script.beats(20.0, 13.0, 256) and not script.beats(20.0, 14.0, 256)  # two standard errors: 6.53, 6.62


@pytest.mark.slow
def test_instruct_writes_its_table_curves_and_numbers(tmp_path):
    report, numbers = tmp_path / "docs" / "instruct.md", tmp_path / "instruct.json"
    toy = ["--prompts", "24", "--references", "6", "--heldout", "8", "--hidden_size", "32", "--teacher_steps", "40",
           "--teacher_batch_size", "8", "--student_steps", "4", "--eval_every", "2", "--batch_size", "4"]  # fmt: skip
    results = script.main(["--work_dir", str(tmp_path / "work"), "--report", str(report), "--json", str(numbers), *toy])

    expected = [name for name, *_ in script.VARIANTS]
    assert list(results["students"]) == expected
    for row in results["students"].values():
        assert row["steps"] == 4 and list(row["curve"]) == [2, 4]
        assert 0.0 <= row["exact_match"] <= 100.0 and row["kl_to_teacher"] >= 0.0
        assert 0.0 <= row["reference_exact_match"] <= 100.0  # on the 6 reference prompts: a multiple of 100 / 6
        assert round(row["reference_exact_match"] * 6 / 100, 6).is_integer()
    assert len((tmp_path / "work" / "data" / "responses.jsonl").read_text().splitlines()) <= 24
    assert json.loads(numbers.read_text())["goals"].keys() == results["goals"].keys()
    table = report.read_text()
    assert all(f"| {name} |" in table for name in expected) and "instruct.py --work_dir" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_instruct_trains_only_the_students_asked_for_and_checks_no_goal_without_all_five(tmp_path):
    report = tmp_path / "instruct.md"
    toy = ["--prompts", "24", "--references", "6", "--heldout", "8", "--hidden_size", "32", "--teacher_steps", "20",
           "--teacher_batch_size", "8", "--student_steps", "2", "--eval_every", "2", "--batch_size", "4"]  # fmt: skip
    results = script.main(["--work_dir", str(tmp_path / "work"), "--report", str(report), "--json",
                           str(tmp_path / "instruct.json"), "--students", "b-kd-references", *toy])
    assert list(results["students"]) == ["b-kd-references"] and results["goals"] == {}
    trained = [path.name.rsplit("-", 1)[0] for path in (tmp_path / "work" / "students").iterdir() if path.is_dir()]
    assert trained == ["b-kd-references"]
    assert "not checked" in report.read_text()


def test_a_kept_teacher_of_another_seed_is_refused(tmp_path):
    """The seed draws the held-out prompts the teacher must not train on: a teacher kept in WORK_DIR from another
    seed is refused, one of the same seed (or of a run before seeds were recorded) kept."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"")
    (teacher / "training.json").write_text('{"train_seconds": 1.0, "steps": 10, "seed": 0}')
    with pytest.raises(SystemExit, match="trained with --seed 0, not 1"):
        script.train_teacher(argparse.Namespace(work_dir=str(tmp_path), seed=1), set())
    assert script.train_teacher(argparse.Namespace(work_dir=str(tmp_path), seed=0), set()) == teacher
    (teacher / "training.json").write_text('{"train_seconds": 1.0, "steps": 10}')
    assert script.train_teacher(argparse.Namespace(work_dir=str(tmp_path), seed=1), set()) == teacher


def test_the_students_schedule_reaches_their_runs_and_the_report(tmp_path):
    args = script.parse_args(["--lr_scheduler_type", "cosine", "--warmup_steps", "60", "--work_dir", str(tmp_path)])
    keys = script.student_keys(args, tmp_path / "teacher")
    assert (keys["lr_scheduler_type"], keys["warmup_steps"], keys["learning_rate"]) == ("cosine", 60, 1e-3)
    assert script.schedule_text(args) == " (60 warmup steps, then cosine)"
    assert script.schedule_text(script.parse_args([])) == ""  # constant from the first step, as before
    assert script.student_keys(script.parse_args([]), tmp_path)["lr_scheduler_type"] == "constant"


def test_the_kd_students_temperature_reaches_their_runs_and_the_report(tmp_path):
    args = script.parse_args(["--logits_temperature", "2", "--work_dir", str(tmp_path)])
    assert script.student_keys(args, tmp_path / "teacher")["logits_temperature"] == 2.0
    assert script.temperature_text(args) == ", temperature 2"
    assert script.temperature_text(script.parse_args([])) == ""


@pytest.mark.parametrize("flags, message", [
    (["--warmup_steps", "600"], "--warmup_steps 600: expected 0 <= it < --student_steps 600"),
    (["--warmup_steps", "10"], "--warmup_steps 10 with --lr_scheduler_type constant: expected constant_with_warmup"),
    (["--logits_temperature", "0"], "--logits_temperature 0.0: expected a positive number"),
    (["--students", "b-kd"], "argument --students: invalid choice: 'b-kd'"),
])  # fmt: skip
def test_a_schedule_or_temperature_the_students_cannot_use_is_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(flags)
    assert message in capsys.readouterr().err
