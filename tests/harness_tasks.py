"""Local lm-evaluation-harness tasks over the tiny grammar (YAML and local data, offline), shared by the harness
tests."""

import json

import yaml

TASK = "distily_tiny_choice"


def choice_task(name: str, **dataset) -> dict:
    """A multiple-choice task definition over rows of context, choices and label, its data as ``dataset`` says."""
    return {
        "task": name,
        **dataset,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def write_local_task(directory) -> str:
    """A multiple-choice task over the tiny grammar: which continuation the data would have."""
    directory.mkdir()
    rows = [
        {"context": "The cat sees", "choices": [" a book today.", " sees sees sees."], "label": 0},
        {"context": "My friend reads", "choices": [" reads the.", " the river again."], "label": 1},
    ] * 4
    data = directory / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = choice_task(TASK, dataset_path="json", dataset_kwargs={"data_files": {"test": str(data)}})
    (directory / "tiny_choice.yaml").write_text(yaml.safe_dump(task))
    return str(directory)
