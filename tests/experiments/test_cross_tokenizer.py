"""experiments/cross_tokenizer.py end to end at a toy scale: teacher, student tokenizer, students, report."""

import json

import pytest

pytest.importorskip("distily.evaluation.bytes")  # bits per byte (#18, built beside this script)

import cross_tokenizer as script  # noqa: E402
from tiny import make_documents, wikitext_like  # noqa: E402


@pytest.mark.slow
def test_cross_tokenizer_writes_its_table_plot_and_numbers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.txt").write_text(wikitext_like(make_documents(300, seed=2)))
    (data / "test.txt").write_text(wikitext_like(make_documents(120, seed=3)))
    report, numbers = tmp_path / "docs" / "cross.md", tmp_path / "cross.json"
    toy = ["--vocab_size", "300", "--student_vocab_size", "350", "--hidden_size", "64", "--teacher_layers", "2",
           "--student_layers", "1", "--seq_length", "32", "--batch_size", "4", "--teacher_steps", "2",
           "--student_steps", "2", "--eval_blocks", "4", "--transfer_fraction", "0.3"]  # fmt: skip
    results = script.main(["--data", str(data), "--work_dir", str(tmp_path / "work"), "--report", str(report),
                           "--json", str(numbers), *toy])
    expected = [name for name, _, _ in script.VARIANTS]
    assert list(results["students"]) == expected
    for row in [results["teacher"], *results["students"].values()]:
        assert 0 < row["bits_per_byte"] < 20 and row["bytes"] > row["targets"] > 0
    assert results["students"]["cross-entropy"]["vs_baseline"] == 1.0
    assert json.loads(numbers.read_text())["students"].keys() == set(expected)
    table = report.read_text()
    assert all(f"| {name} |" in table for name in expected) and "cross_tokenizer.py --data" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
