"""experiments/cross_tokenizer_chat.py end to end at a toy scale: teacher, students' tokenizer, students, report."""

import json

import pytest

import cross_tokenizer_chat as script


@pytest.mark.slow
def test_cross_tokenizer_chat_writes_its_table_plot_and_numbers(tmp_path):
    report, numbers = tmp_path / "docs" / "chat.md", tmp_path / "chat.json"
    toy = ["--teacher_conversations", "300", "--teacher_steps", "10", "--student_steps", "4", "--eval_every", "2",
           "--transfer_conversations", "24", "--heldout_conversations", "16", "--batch_size", "8"]  # fmt: skip
    results = script.main(["--work_dir", str(tmp_path / "work"), "--report", str(report), "--json", str(numbers),
                           *toy])
    names = [name for name, _, _ in script.STUDENTS]
    assert list(results["students"]) == names and 0 < results["teacher_bits_per_byte"] < 20
    for row in results["students"].values():  # before training, then every --eval_every steps
        assert [point["step"] for point in row["curve"]] == [0, 2, 4]
        assert row["best"] == min(row["curve"][1:], key=lambda point: point["bits_per_byte"])
    baseline = results["students"][script.BASELINE]
    assert results["baseline_best_step"] == baseline["best"]["step"] and baseline["best_over_baseline_best"] == 1.0
    for row in results["students"].values():
        assert row["best_over_baseline_best"] == pytest.approx(
            row["best"]["bits_per_byte"] / baseline["best"]["bits_per_byte"])
    assert json.loads(numbers.read_text())["students"].keys() == set(names)
    table = report.read_text()
    assert all(f"| {name} |" in table for name in names) and "cross_tokenizer_chat.py --work_dir" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    again = script.main(["--work_dir", str(tmp_path / "work"), "--report", str(report), "--json", str(numbers), *toy])
    assert again["students"] == results["students"]  # finished students are read back, not trained again
