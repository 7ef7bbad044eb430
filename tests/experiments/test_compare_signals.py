"""experiments/compare_signals.py end to end at a toy scale: teacher, students, evaluation, report."""

import json

import pytest

import compare_signals as script
from tiny import make_documents, wikitext_like


@pytest.mark.slow
@pytest.mark.parametrize("student_init", ["teacher", "random_blocks", "random"])
def test_compare_signals_writes_its_table_plot_and_numbers(student_init, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.txt").write_text(wikitext_like(make_documents(300, seed=2)))
    (data / "test.txt").write_text(wikitext_like(make_documents(60, seed=3)))
    report, numbers = tmp_path / "docs" / "compare.md", tmp_path / "compare.json"
    toy = ["--vocab_size", "300", "--hidden_size", "64", "--teacher_layers", "2", "--student_layers", "1",
           "--seq_length", "32", "--batch_size", "4", "--teacher_steps", "2", "--student_steps", "2", "--eval_blocks", "4", "--budget_steps", "1"]  # fmt: skip
    argv = ["--data", str(data), "--work_dir", str(tmp_path / "work"), "--report", str(report), "--json", str(numbers),
            "--student_init", student_init]  # fmt: skip
    results = script.main(argv + toy)

    expected = [name for name, _, _ in script.VARIANTS]
    assert list(results["students"]) == expected
    assert {name: list(points) for name, points in results["budgets"].items()} == {"hard-labels": [1, 2], "logits": [1, 2]}
    assert results["budgets"]["logits"][2] == results["students"]["logits"]  # the full budget is the main table's run
    assert results["budgets"]["logits"][1]["tokens"] == 4 * 32
    assert json.loads(numbers.read_text())["students"].keys() == set(expected)
    table = report.read_text()
    assert all(f"| {name} |" in table for name in expected) and "compare_signals.py --data" in table
    assert "| 1 | 128 |" in table and "| 2 | 256 |" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
