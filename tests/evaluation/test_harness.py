"""lm-evaluation-harness on models in memory: a local task (YAML + local data) runs offline, for teacher and
student, and the teacher's results come from the cache the second time."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

from distily.config import EvaluationArguments
from distily.errors import DistilyConfigError
from distily.evaluation import harness
from distily.evaluation.harness import cached_teacher_results, run_tasks, task_manager, task_results
from tiny import save_tiny_model

TASK = "distily_tiny_choice"


def write_local_task(directory) -> str:
    """A multiple-choice task over the tiny grammar: which continuation the data would have."""
    directory.mkdir()
    rows = [
        {"context": "The cat sees", "choices": [" a book today.", " sees sees sees."], "label": 0},
        {"context": "My friend reads", "choices": [" reads the.", " the river again."], "label": 1},
    ] * 4
    data = directory / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (directory / "tiny_choice.yaml").write_text(yaml.safe_dump(task))
    return str(directory)


def test_a_local_task_runs_offline_for_teacher_and_student(teacher_dirs, tokenizer, tmp_path, monkeypatch):
    args = EvaluationArguments(
        lm_eval_tasks=[TASK],
        lm_eval_include_path=write_local_task(tmp_path / "tasks"),
        lm_eval_limit=6,
        lm_eval_bootstrap_iters=10,
        lm_eval_cache_dir=str(tmp_path / "cache"),
    )
    manager = task_manager(args)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    student = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "student", "gpt2", tokenizer, layers=2))
    student_results = run_tasks(student, tokenizer, args, manager, batch_size=4)
    teacher_results = cached_teacher_results(teacher, teacher_dirs["gpt2"], tokenizer, args, manager, batch_size=4)
    for results in (student_results, teacher_results):
        assert set(results) == {TASK}
        assert 0.0 <= results[TASK]["acc"] <= 1.0
        assert results[TASK]["samples"] == 6  # lm_eval_limit
        assert "acc_stderr" in results[TASK]
    monkeypatch.setattr(harness, "run_tasks", lambda *a, **k: pytest.fail("the teacher ran again"))
    again = cached_teacher_results(teacher, teacher_dirs["gpt2"], tokenizer, args, manager, batch_size=4)
    assert again == teacher_results


def test_results_keep_requested_tasks_and_groups_not_group_members():
    raw = {
        "results": {
            "suite": {"alias": "suite", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "suite_a": {"alias": "a", "acc,none": 0.25},
            "other": {"alias": "other", "exact_match,strict-match": 1.0},
        },
        "group_subtasks": {"suite": ["suite_a"]},
        "n-samples": {"other": {"original": 9, "effective": 3}},
    }
    assert task_results(raw, ["suite", "other"]) == {
        "suite": {"acc": 0.5},
        "other": {"exact_match_strict-match": 1.0, "samples": 3},
    }


def test_a_missing_harness_is_named_before_training(monkeypatch):
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DistilyConfigError, match=r"needs lm-evaluation-harness.*pip install distily\[eval\]"):
        task_manager(EvaluationArguments(lm_eval_tasks=["hellaswag"]))
