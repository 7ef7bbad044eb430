"""Each bad input: one line naming the problem, exit code 2, nothing overwritten."""

import json
from pathlib import Path

import pytest
import yaml

from distily.cli import main
from tiny import write_jsonl


def run_cli(tmp_path, values, *extra):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    return main(["distill", str(config), *extra])


def snapshot(directory: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def case_unknown_key(values, tmp_path):
    values["teacher_modle"] = "x"
    return "unknown config key 'teacher_modle'"


def case_wrong_type(values, tmp_path):
    values["max_steps"] = "many"
    return "invalid int value: 'many'"


def case_missing_teacher(values, tmp_path):
    values["teacher_model_name_or_path"] = str(tmp_path / "no-such-teacher")
    return "teacher path"


def case_missing_column(values, tmp_path):
    values["dataset_text_column"] = "body"
    return "dataset_text_column='body' is not a column"


def case_empty_dataset(values, tmp_path):
    values["dataset_name"] = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    return "0 non-empty documents after filtering"


def case_heads_not_dividing(values, tmp_path):
    values["student_config_overrides"] = {"num_attention_heads": 3}
    return "num_attention_heads=3 does not divide hidden_size=64"


def case_finished_output_dir(values, tmp_path):
    out = Path(values["output_dir"])
    (out / "metrics.json").write_text("{}")
    return "holds a finished run"


def case_sequence_too_long(values, tmp_path):
    values["max_seq_length"] = 4096
    return "max_seq_length=4096 exceeds the models' position limit 256"


def case_unknown_loss(values, tmp_path):
    values["logits_loss"] = "kl"
    return "logits_loss='kl' is not a registered loss"


def case_unfinished_run_without_resume(values, tmp_path):
    (Path(values["output_dir"]) / "checkpoint-3").mkdir()
    return "holds checkpoints of an unfinished run"


def case_cannot_fit_in_memory(values, tmp_path):
    values["per_device_train_batch_size"] = 10**6
    return "the run cannot fit"


CASES = [
    case_unknown_key,
    case_wrong_type,
    case_missing_teacher,
    case_missing_column,
    case_empty_dataset,
    case_heads_not_dividing,
    case_finished_output_dir,
    case_sequence_too_long,
    case_unknown_loss,
    case_unfinished_run_without_resume,
    case_cannot_fit_in_memory,
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__[5:])
def test_bad_input(case, tmp_path, teacher_dirs, run_values, capsys):
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2})
    out = Path(values["output_dir"])
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"precious weights")
    expected = case(values, tmp_path)
    before = snapshot(out)
    code = run_cli(tmp_path, values)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err
    error_lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert error_lines == [err.splitlines()[-1]], err  # progress bars aside, one line, no traceback
    assert "Traceback" not in err
    assert error_lines[0].startswith("distily distill: error: ") and expected in error_lines[0]
    assert snapshot(out) == before


def test_debug_shows_the_traceback(tmp_path, teacher_dirs, run_values):
    from distily.errors import DistilyConfigError

    values = run_values(teacher_dirs["llama"])
    values["teacher_modle"] = "x"
    with pytest.raises(DistilyConfigError):
        run_cli(tmp_path, values, "--debug")


def test_unknown_command(capsys):
    assert main(["distil"]) == 2
    assert "unknown command 'distil'" in capsys.readouterr().err
