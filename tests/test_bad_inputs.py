"""Each bad input: one line naming the problem, exit code 2, nothing overwritten."""

import os
import shutil
from pathlib import Path

import pytest
import yaml

from distily.cli import main
from file_tree import tree
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


# Cases that are a change of config values: (id, values to set, expected text of the error line).
VALUE_CASES = [
    ("bad_json_overrides", {"student_config_overrides": "{n_layer: 2"}, "is not valid JSON"),
    ("overrides_not_an_object", {"student_config_overrides": "[2]"}, "is a JSON list; expected a JSON object"),
    ("unknown_override_key", {"student_config_overrides": {"num_layerz": 2}}, "'num_layerz' is not a field"),
    ("kv_heads_not_dividing", {"student_config_overrides": {"num_key_value_heads": 3}}, "num_key_value_heads=3"),
    ("teacher_layer_out_of_range", {"student_layers_from_teacher": [0, 7]}, "index 7 is out of range"),
    ("teacher_layer_count", {"student_layers_from_teacher": [0, 1, 2]}, "has 3 entries; expected one per student layer"),
    ("narrow_student_from_teacher_layers", {"student_config_overrides": {"hidden_size": 32, "num_attention_heads": 2,
                                            "num_key_value_heads": 1}}, "use student_init=random"),
    ("copy_unknown_module", {"copy_teacher_modules": ["model.embedz"]}, "no module named 'model.embedz'"),
    ("freeze_unknown_module", {"freeze_student_modules": ["model.nope"]}, "no module named 'model.nope'"),
    ("bad_teacher_dtype", {"teacher_torch_dtype": "int4"}, "teacher_torch_dtype='int4' is not supported"),
    ("bad_student_init", {"student_init": "copy"}, "student_init='copy' is not supported"),
    ("two_student_sources", {"student_model_name_or_path": "a", "student_config_name_or_path": "b"}, "both set"),
    ("eval_fraction_out_of_range", {"eval_fraction": 0}, "eval_fraction=0"),
    ("negative_weight", {"logits_weight": -1}, "logits_weight=-1.0 must be >= 0"),
    ("no_component", {"logits_weight": 0}, "expected"),
    ("zero_temperature", {"logits_temperature": 0}, "logits_temperature=0.0 must be > 0"),
    ("loss_kwargs_mismatch", {"logits_loss_kwargs": {"gamma": 2}}, "do not fit loss 'forward_kl'"),
    ("bitnet_schedule_without_bitnet", {"bitnet_schedule": True}, "needs a BitNet student"),
    ("nonfinite_limit", {"max_nonfinite_steps": 0}, "max_nonfinite_steps=0 must be a positive integer"),
    ("resume_without_checkpoint", {"resume_from_checkpoint": "true"}, "holds no checkpoint"),
    ("missing_dataset_path", {"dataset_name": "./no/such/data.jsonl"}, "does not exist"),
    ("negative_eval_samples", {"max_eval_samples": -1}, "max_eval_samples=-1 must be a positive integer"),
    ("zero_max_samples", {"max_samples": 0}, "max_samples=0 must be a positive integer"),
]


@pytest.mark.parametrize("changes, expected", [case[1:] for case in VALUE_CASES], ids=[c[0] for c in VALUE_CASES])
def test_bad_value(changes, expected, tmp_path, teacher_dirs, run_values, capsys):
    values = {**run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}), **changes}
    out = Path(values["output_dir"])
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"precious weights")
    before = snapshot(out)
    assert run_cli(tmp_path, values) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("distily distill: error: ") and expected in last, err
    assert "Traceback" not in err
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "write, expected",
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.write_text("a: [1, 2"), "is not valid YAML"),
        (lambda path: path.write_text("- 1\n- 2\n"), "holds a list; expected a mapping of keys"),
    ],
    ids=["missing", "invalid_yaml", "not_a_mapping"],
)
def test_bad_config_file(write, expected, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    write(path)
    assert main(["distill", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--format", "zip"], "export format 'zip' is not supported"),
        (["--format", "packed"], "expected a BitNet student"),
        ([], "the following arguments are required: --format"),
    ],
    ids=["unknown_format", "dense_student", "no_format"],
)
def test_bad_export(args, expected, teacher_dirs, capsys):
    before = snapshot(Path(teacher_dirs["llama"]))
    assert main(["export", teacher_dirs["llama"], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert snapshot(Path(teacher_dirs["llama"])) == before


def test_export_of_a_missing_run_dir(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--format", "packed"]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, teacher_dirs, run_values):
    from distily.errors import DistilyConfigError

    values = run_values(teacher_dirs["llama"])
    values["teacher_modle"] = "x"
    with pytest.raises(DistilyConfigError):
        run_cli(tmp_path, values, "--debug")


def test_unknown_command(capsys):
    assert main(["distil"]) == 2
    assert "unknown command 'distil'" in capsys.readouterr().err



# Export outputs that must never be replaced: (id, --output, flags, current directory, expected error).
# The work folder holds run/ (the student), mine/ (a user's folder) and here/deeper/ (a user's draft).
EXPORT_OUTPUT_CASES = [
    ("users_folder", "mine", [], ".", "output 'mine' already exists; expected a new path, or --overwrite"),
    ("users_folder_overwrite", "mine", ["--overwrite"], ".",
     "output 'mine' is not a previous packed export (it holds 'notes.txt', which a packed export does not write)"),
    ("users_file_as_gguf", "mine/notes.txt", ["--format", "gguf", "--overwrite"], ".",
     "output 'mine/notes.txt' is not a previous GGUF export (it is not a GGUF file)"),
    ("run_dir", "run", [], ".", "output 'run' is the run directory"),
    ("run_dir_overwrite", "run", ["--overwrite"], ".", "output 'run' is the run directory"),
    ("parent_of_run_dir", "../work", ["--overwrite"], ".", "output '../work' contains the run directory"),
    ("current_dir", ".", ["--overwrite"], "here/deeper", "output '.' is the current directory"),
    ("parent_of_current_dir", "..", ["--overwrite"], "here/deeper", "output '..' contains the current directory"),
]


@pytest.mark.parametrize("output, flags, cwd, expected", [case[1:] for case in EXPORT_OUTPUT_CASES],
                         ids=[case[0] for case in EXPORT_OUTPUT_CASES])
def test_export_never_replaces_what_it_did_not_write(output, flags, cwd, expected, tmp_path, teacher_dirs, capsys, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(teacher_dirs["llama"], work / "run")  # the output checks come before the student is loaded
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("a user's file")
    (work / "here" / "deeper").mkdir(parents=True)
    (work / "here" / "deeper" / "draft.txt").write_text("a user's draft")
    monkeypatch.chdir(work / cwd)
    before = tree(tmp_path)
    assert main(["export", os.path.relpath(work / "run"), "--format", "packed", "--output", output, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("distily export: error: ") and expected in err, err
    assert tree(tmp_path) == before
