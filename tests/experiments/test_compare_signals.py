"""experiments/compare_signals.py end to end at a toy scale: teacher, students, evaluation, report; and the
students each ``--student_init`` builds."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import compare_signals as script
from distily.models.arguments import ModelArguments
from distily.models.student import build_student
from tiny import make_documents, wikitext_like
from wikitext import STUDENT_INITS


@pytest.mark.parametrize("student_init", list(STUDENT_INITS))
def test_each_student_init_copies_what_it_says_from_the_experiments_teacher(student_init):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(LlamaConfig(  # the experiments' teacher, small
        vocab_size=300, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=1,
        tie_word_embeddings=True)).eval()
    with torch.no_grad():  # as if trained: no weight (norms included) left at its initial value
        for weight in teacher.parameters():
            weight.normal_()
    student = build_student(ModelArguments(student_config_overrides={"num_hidden_layers": 1},
                                           **STUDENT_INITS[student_init][1]), teacher)
    student_weights, teacher_weights = student.state_dict(), teacher.state_dict()
    copied = {name for name, weight in student_weights.items() if torch.equal(weight, teacher_weights[name])}
    outside_blocks = {name for name in student_weights if not name.startswith("model.layers.")}
    first_block = {name for name in student_weights if name.startswith("model.layers.0.")}
    if student_init == "teacher":  # the single student block is the teacher's last (evenly spaced, ends kept)
        last = {name.replace("layers.1.", "layers.0."): weight for name, weight in teacher_weights.items()
                if name.startswith("model.layers.1.")}
        assert all(torch.equal(student_weights[name], weight) for name, weight in last.items())
        assert outside_blocks <= copied
    elif student_init == "random_blocks":
        assert outside_blocks <= copied and not first_block & copied
    else:
        assert not (outside_blocks | first_block) & copied


@pytest.mark.slow
def test_compare_signals_writes_its_table_plot_and_numbers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.txt").write_text(wikitext_like(make_documents(300, seed=2)))
    (data / "test.txt").write_text(wikitext_like(make_documents(60, seed=3)))
    report, numbers = tmp_path / "docs" / "compare.md", tmp_path / "compare.json"
    toy = ["--vocab_size", "300", "--hidden_size", "64", "--teacher_layers", "2", "--student_layers", "1",
           "--seq_length", "32", "--batch_size", "4", "--teacher_steps", "2", "--student_steps", "2",
           "--eval_blocks", "4", "--budget_steps", "1"]  # fmt: skip
    argv = ["--data", str(data), "--work_dir", str(tmp_path / "work"), "--report", str(report), "--json", str(numbers),
            "--student_init", "random_blocks"]  # fmt: skip
    results = script.main(argv + toy)

    expected = [name for name, _, _ in script.VARIANTS]
    assert list(results["students"]) == expected
    assert ({name: list(points) for name, points in results["budgets"].items()}
            == {"hard-labels": [1, 2], "logits": [1, 2]})
    assert results["budgets"]["logits"][2] == results["students"]["logits"]  # the full budget is the main table's run
    assert results["budgets"]["logits"][1]["tokens"] == 4 * 32
    assert json.loads(numbers.read_text())["students"].keys() == set(expected)
    table = report.read_text()
    assert all(f"| {name} |" in table for name in expected) and "compare_signals.py --data" in table
    assert "| 1 | 128 |" in table and "| 2 | 256 |" in table
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
