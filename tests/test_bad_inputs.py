"""Each bad input: one line naming the problem, exit code 2, nothing overwritten."""

import errno
import importlib.util
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from distily.cli import main
from distily.config import parse_config
from distily.data.store import StoreWriter
from distily.training.checkpoints import write_checksums
from distily.training.run_dir import RunDir, pin_chat_template_date, run_settings
from distily.training.trainer_internals import CHECKPOINT_STAGING_DIR
from file_tree import tree
from interrupts import ctrl_c_at_training_step
from small_filesystem import remount, small_filesystem
from tiny import make_documents, make_tokenizer, save_tiny_masked_lm, write_jsonl


def run_cli(tmp_path, values, *extra):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    return main(["distill", str(config), *extra])


def snapshot(directory: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def previous_run(out: Path) -> None:
    """An output_dir a Distily run wrote its student into (it recorded its settings), which nothing may overwrite."""
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"precious weights")
    (out / RunDir.SETTINGS).write_text(json.dumps({"settings": {}}))


def case_unknown_key(values, tmp_path):
    values["teacher_modle"] = "x"
    return "unknown config key 'teacher_modle'"


def case_wrong_type(values, tmp_path):
    values["max_steps"] = "many"
    return "invalid int value: 'many'"


def case_missing_teacher(values, tmp_path):
    values["teacher_model_name_or_path"] = str(tmp_path / "no-such-teacher")
    return "teacher path"


def case_teacher_folder_without_a_config(values, tmp_path):
    (tmp_path / "teacher-empty").mkdir()
    values["teacher_model_name_or_path"] = str(tmp_path / "teacher-empty")
    return "key in its config.json; expected a saved model's directory (its config.json names its model_type)"


def case_teacher_with_code_of_its_own(values, tmp_path):
    teacher = tmp_path / "teacher-custom"
    shutil.copytree(values["teacher_model_name_or_path"], teacher)
    config = json.loads((teacher / "config.json").read_text())
    config.update(model_type="custom_llama", auto_map={"AutoConfig": "custom.CustomConfig"})
    (teacher / "config.json").write_text(json.dumps(config))
    (teacher / "custom.py").write_text("from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n"
                                       "    model_type = 'custom_llama'\n")
    values["teacher_model_name_or_path"] = str(teacher)
    return "it runs code of its own; expected trust_remote_code=true"


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


def case_output_dir_is_a_file(values, tmp_path):
    values["output_dir"] = str(Path(values["output_dir"]) / "model.safetensors")
    return "model.safetensors' is an existing file; expected a directory"


def case_empty_data_file(values, tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    values["dataset_name"] = str(tmp_path / "empty.jsonl")
    return "empty.jsonl' is empty (0 bytes); expected documents in it"


def _data_file(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def case_malformed_jsonl_line(values, tmp_path):
    good = [json.dumps({"text": text}) for text in make_documents(20)]
    values["dataset_name"] = _data_file(tmp_path, good[:6] + ['{"text": "an unfinished line'] + good[6:])
    return "data.jsonl' line 7 is not valid JSON (Unterminated string starting at, column 10); expected one JSON object"


def case_jsonl_line_not_an_object(values, tmp_path):
    good = [json.dumps({"text": text}) for text in make_documents(20)]
    values["dataset_name"] = _data_file(tmp_path, good[:2] + ['["a", "list"]'] + good[2:])
    return "data.jsonl' line 3 holds a JSON list; expected one JSON object per line"


def _token_rows(tmp_path, bad_row: int, bad_id: int) -> str:
    rows = [[(row * 7 + i) % 300 for i in range(40)] for row in range(30)]
    rows[1] = []  # an empty row, dropped before training, still counted
    rows[bad_row][5] = bad_id
    return _data_file(tmp_path, [json.dumps({"input_ids": row}) for row in rows])


def case_token_id_out_of_range(values, tmp_path):
    values["dataset_name"] = _token_rows(tmp_path, bad_row=3, bad_id=320)
    return "row 3 (counting from 0) holds token id 320; expected ids in 0..319 (the models' vocabulary)"


def case_token_id_out_of_range_in_an_eval_set(values, tmp_path):
    path = _token_rows(tmp_path, bad_row=2, bad_id=320)
    values["eval_datasets"] = {"tokens": path}
    return (f"eval_datasets['tokens']: dataset '{path}' row 2 (counting from 0) holds token id 320; expected ids in "
            "0..319")


def case_negative_token_id(values, tmp_path):
    values["dataset_name"] = _token_rows(tmp_path, bad_row=17, bad_id=-1)
    return "row 17 (counting from 0) holds token id -1; expected ids in 0..319"


def case_dataset_too_short(values, tmp_path):
    values["dataset_name"] = write_jsonl(tmp_path / "short.jsonl", ["A cat.", "A dog.", "A bird."])
    return (
        "gives no train sequence of 32 tokens; expected more text, a smaller max_seq_length or a smaller eval_fraction"
    )


def case_missing_dataset_without_dot_slash(values, tmp_path):
    values["dataset_name"] = "no-such-data/train.jsonl"  # a file suffix: a local path, not a Hub id
    return "dataset_name='no-such-data/train.jsonl' does not exist; expected an existing local path or a Hub id"


def case_missing_teacher_without_dot_slash(values, tmp_path):
    values["teacher_model_name_or_path"] = "no/such/teacher"  # two slashes: a local path, not a Hub id
    return "teacher path 'no/such/teacher' does not exist"


def case_bidirectional_teacher(values, tmp_path):
    values["teacher_model_name_or_path"] = save_tiny_masked_lm(tmp_path / "bert", make_tokenizer())
    return "the teacher (BertLMHeadModel) is not causal: its logits at a position change with later tokens"


def case_bidirectional_student(values, tmp_path):
    values["student_model_name_or_path"] = save_tiny_masked_lm(tmp_path / "bert", make_tokenizer())
    del values["student_config_overrides"]
    return "the student (BertLMHeadModel) is not causal"


def _lock(values, **holder):
    (Path(values["output_dir"]) / RunDir.LOCK).write_text(json.dumps({"since": "2026-01-01 00:00:00", **holder}))


def case_output_dir_in_use(values, tmp_path):
    _lock(values, pid=os.getppid(), host=socket.gethostname())  # a live process of this host
    return f"is in use by another run (process {os.getppid()} on {socket.gethostname()} since 2026-01-01 00:00:00)"


def case_output_dir_in_use_on_another_host(values, tmp_path):
    _lock(values, pid=12345, host="another-machine")  # its process cannot be checked from here
    return "is in use by another run (process 12345 on another-machine"


def _checkpoint(values, step: int) -> Path:
    checkpoint = Path(values["output_dir"]) / f"checkpoint-{step}"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def case_resume_a_finished_run(values, tmp_path):
    _checkpoint(values, 4)
    (Path(values["output_dir"]) / "metrics.json").write_text(json.dumps({"train": {"global_step": 4}}))
    values["resume_from_checkpoint"] = "true"
    return "holds a finished run of 4 steps and max_steps=4 trains no further; expected max_steps above 4"


def case_resume_and_overwrite(values, tmp_path):
    _checkpoint(values, 2)
    values.update(resume_from_checkpoint="true", overwrite_output_dir=True)
    return "overwrite_output_dir=true are both set; expected one"


def case_resume_below_its_checkpoint(values, tmp_path):
    _checkpoint(values, 6)
    values["resume_from_checkpoint"] = "true"
    return "max_steps=4 is below the step of resume_from_checkpoint"


def case_resume_below_its_checkpoint_by_epochs(values, tmp_path):  # trained nothing and reported 6 steps
    _checkpoint(values, 6)
    values.update(resume_from_checkpoint="true", max_steps=-1, num_train_epochs=0.004)
    return ("num_train_epochs=0.004 (1 optimizer steps) is below the step of resume_from_checkpoint="
            f"{str(Path(values['output_dir']) / 'checkpoint-6')!r} (6); expected more num_train_epochs or max_steps "
            "of at least 6")


def case_resume_a_finished_run_by_epochs(values, tmp_path):
    _checkpoint(values, 1)
    (Path(values["output_dir"]) / "metrics.json").write_text(json.dumps({"train": {"global_step": 1}}))
    values.update(resume_from_checkpoint="true", max_steps=-1, num_train_epochs=0.004)
    return ("holds a finished run of 1 steps and num_train_epochs=0.004 (1 optimizer steps) trains no further; "
            "expected more num_train_epochs or max_steps above 1 to train it longer")


def case_resume_from_a_directory_that_is_no_checkpoint(values, tmp_path):
    values["resume_from_checkpoint"] = str(tmp_path)
    return "is not a checkpoint; expected a checkpoint-* directory with trainer_state.json"


def _teacher_in_output_dir(values) -> Path:
    """The teacher's files copied into output_dir, and the run told to read its teacher from there."""
    out = Path(values["output_dir"])
    shutil.copytree(values["teacher_model_name_or_path"], out, dirs_exist_ok=True)
    values["teacher_model_name_or_path"] = str(out)
    return out


def case_output_dir_holds_weights_no_distily_run_wrote(values, tmp_path):
    (Path(values["output_dir"]) / RunDir.SETTINGS).unlink()
    return (f"output_dir={values['output_dir']!r} holds model.safetensors but no run_settings.json, so no Distily run "
            "wrote it and the run would write over them; expected another output_dir, or --overwrite_output_dir true "
            "to replace them")


def case_output_dir_is_a_model_repository_no_distily_run_wrote(values, tmp_path):
    """A clone of the user's model repository, before any weights: its card and config are theirs."""
    out = Path(values["output_dir"])
    for name in (RunDir.SETTINGS, "model.safetensors"):
        (out / name).unlink()
    for name in ("README.md", "config.json", "tokenizer_config.json", ".gitattributes", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    return (f"output_dir={values['output_dir']!r} holds README.md, config.json, tokenizer_config.json but no "
            "run_settings.json, so no Distily run wrote it")


def case_output_dir_is_the_teacher(values, tmp_path):
    out = _teacher_in_output_dir(values)
    (out / RunDir.SETTINGS).unlink()  # a model folder, not a run's: named as the teacher, not advised to overwrite
    return f"output_dir={str(out)!r} is teacher_model_name_or_path={str(out)!r}; expected an output_dir that neither"


def case_output_dir_is_the_teacher_with_overwrite(values, tmp_path):
    out = _teacher_in_output_dir(values)
    values["overwrite_output_dir"] = True
    return (f"output_dir={str(out)!r} is teacher_model_name_or_path={str(out)!r}; expected an output_dir that neither "
            "is nor contains an input of the run")


def case_output_dir_contains_the_student_with_overwrite(values, tmp_path):
    student = Path(values["output_dir"]) / "student"
    shutil.copytree(values["teacher_model_name_or_path"], student)
    values.update(student_model_name_or_path=str(student), student_config_overrides=None, overwrite_output_dir=True)
    return f"output_dir={values['output_dir']!r} contains student_model_name_or_path={str(student)!r}"


def _other_runs_checkpoint(tmp_path, step: int) -> str:
    checkpoint = tmp_path / "other-run" / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return str(checkpoint)


def case_resume_from_another_directory_over_an_unfinished_run(values, tmp_path):
    _checkpoint(values, 2)
    values["resume_from_checkpoint"] = _other_runs_checkpoint(tmp_path, 1)
    return (f"resume_from_checkpoint={values['resume_from_checkpoint']!r} is not in output_dir="
            f"{values['output_dir']!r}, which holds checkpoints of an unfinished run; expected an output_dir without "
            "checkpoints or a finished run")


def case_resume_from_another_directory_over_a_finished_run(values, tmp_path):
    _checkpoint(values, 4)
    (Path(values["output_dir"]) / "metrics.json").write_text(json.dumps({"train": {"global_step": 4}}))
    values.update(resume_from_checkpoint=_other_runs_checkpoint(tmp_path, 6), max_steps=8)  # once accepted
    return "which holds a finished run; expected an output_dir without checkpoints or a finished run"


def _started_with(values, **changes):
    """A checkpoint of a run started with ``values``; the resume is asked with ``changes``."""
    _checkpoint(values, 2)
    config = parse_config(**values)
    pin_chat_template_date(config, None)  # as a run does before it records its settings
    settings = run_settings(config)
    (Path(values["output_dir"]) / RunDir.SETTINGS).write_text(json.dumps({"settings": settings}))
    values.update(resume_from_checkpoint="true", **changes)


def case_resume_with_another_max_seq_length(values, tmp_path):
    _started_with(values, max_seq_length=64)
    return "continues a run started with max_seq_length=32, not 64; expected the settings it was started with"


def case_resume_with_another_dataset(values, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", make_documents(50, seed=3))
    was = values["dataset_name"]
    _started_with(values, dataset_name=other)
    return f"continues a run started with dataset_name={was!r}, not {other!r}"


def case_resume_with_another_lmbda(values, tmp_path):
    _started_with(values, lmbda=0.5)
    return "continues a run started with lmbda=0.0, not 0.5; expected the settings it was started with"


def case_auto_resume_with_another_lmbda(values, tmp_path):
    _started_with(values, lmbda=0.5)
    values["resume_from_checkpoint"] = "auto"
    return "continues a run started with lmbda=0.0, not 0.5; expected the settings it was started with"


def case_auto_restart_with_another_max_seq_length(values, tmp_path):  # killed before its first checkpoint
    _started_with(values, max_seq_length=64)
    shutil.rmtree(Path(values["output_dir"]) / "checkpoint-2")
    values["resume_from_checkpoint"] = "auto"
    return ("resume_from_checkpoint=auto would start again the unfinished run in "
            f"{values['output_dir']!r} (no checkpoint yet), started with max_seq_length=32, not 64")


def case_resume_with_no_intact_checkpoint(values, tmp_path):
    (_checkpoint(values, 2) / "trainer_state.json").write_text('{"global_st')  # cut off
    values["resume_from_checkpoint"] = "true"
    return (f"resume_from_checkpoint='true' but no checkpoint in {values['output_dir']!r} is intact (checkpoint-2 is "
            "not intact (trainer_state.json is missing or unreadable)); expected an intact checkpoint, or "
            "--overwrite_output_dir true to start over")


def case_resume_from_a_checkpoint_that_fails_its_checksums(values, tmp_path):
    checkpoint = _checkpoint(values, 2)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    write_checksums(checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"changed")
    values["resume_from_checkpoint"] = str(checkpoint)
    return (f"resume_from_checkpoint={str(checkpoint)!r} is not intact (model.safetensors fails its sha256 check); "
            "expected an intact checkpoint")


def case_output_dir_below_a_file(values, tmp_path):
    values["output_dir"] = str(Path(values["output_dir"]) / "model.safetensors" / "run")
    return (f"cannot write in output_dir '{values['output_dir']}': Not a directory; expected a path whose parents are "
            "directories")


def _store(values, tmp_path, edit) -> Path:
    """A finished (empty) store, its manifest then changed by ``edit``; the run is to train from it."""
    StoreWriter(tmp_path / "store", {"record_top_k": 4}).finish({})
    manifest = tmp_path / "store" / "manifest.json"
    manifest.write_text(edit(manifest.read_text()))
    values.update(teacher_source="recorded", teacher_store=str(tmp_path / "store"))
    return manifest


def case_edited_store_manifest(values, tmp_path):
    manifest = _store(values, tmp_path, lambda text: text.replace('"record_top_k": 4', '"record_top_k": 8'))
    return f"teacher store manifest '{manifest}' was changed after recording: its content hashes to"


def case_store_manifest_not_json(values, tmp_path):
    manifest = _store(values, tmp_path, lambda text: text[:-10])
    return f"teacher store manifest '{manifest}' is not valid JSON"


CASES = [
    case_unknown_key,
    case_wrong_type,
    case_missing_teacher,
    case_teacher_folder_without_a_config,
    case_teacher_with_code_of_its_own,
    case_missing_column,
    case_empty_dataset,
    case_heads_not_dividing,
    case_finished_output_dir,
    case_sequence_too_long,
    case_unknown_loss,
    case_unfinished_run_without_resume,
    case_cannot_fit_in_memory,
    case_output_dir_is_a_file,
    case_empty_data_file,
    case_malformed_jsonl_line,
    case_jsonl_line_not_an_object,
    case_token_id_out_of_range,
    case_token_id_out_of_range_in_an_eval_set,
    case_negative_token_id,
    case_dataset_too_short,
    case_missing_dataset_without_dot_slash,
    case_missing_teacher_without_dot_slash,
    case_bidirectional_teacher,
    case_bidirectional_student,
    case_output_dir_in_use,
    case_output_dir_in_use_on_another_host,
    case_resume_a_finished_run,
    case_resume_and_overwrite,
    case_resume_below_its_checkpoint,
    case_resume_below_its_checkpoint_by_epochs,
    case_resume_a_finished_run_by_epochs,
    case_resume_from_a_directory_that_is_no_checkpoint,
    case_resume_with_another_max_seq_length,
    case_resume_with_another_dataset,
    case_resume_with_no_intact_checkpoint,
    case_resume_from_a_checkpoint_that_fails_its_checksums,
    case_output_dir_below_a_file,
    case_output_dir_holds_weights_no_distily_run_wrote,
    case_output_dir_is_a_model_repository_no_distily_run_wrote,
    case_output_dir_is_the_teacher,
    case_output_dir_is_the_teacher_with_overwrite,
    case_output_dir_contains_the_student_with_overwrite,
    case_resume_from_another_directory_over_an_unfinished_run,
    case_resume_from_another_directory_over_a_finished_run,
    case_resume_with_another_lmbda,
    case_auto_resume_with_another_lmbda,
    case_auto_restart_with_another_max_seq_length,
    case_edited_store_manifest,
    case_store_manifest_not_json,
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__[5:])
def test_bad_input(case, tmp_path, teacher_dirs, run_values, capsys):
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2})
    out = Path(values["output_dir"])
    previous_run(out)
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


def test_a_registry_typo_is_refused_before_the_teacher_loads(tmp_path, teacher_dirs, run_values, capsys,
                                                               monkeypatch):
    monkeypatch.setattr("distily.training.distill.open_teacher", lambda config: pytest.fail("the teacher was loaded"))
    values = run_values(teacher_dirs["llama"], hidden_states_weight=1.0, hidden_states_projector="linera")
    assert run_cli(tmp_path, values) == 2
    assert "hidden_states_projector='linera' is not a registered projector" in capsys.readouterr().err
    assert not Path(values["output_dir"]).exists()


# Cases that are a change of config values: (id, values to set, expected text of the error line).
VALUE_CASES = [
    ("bad_json_overrides", {"student_config_overrides": "{n_layer: 2"}, "is not valid JSON"),
    ("overrides_not_an_object", {"student_config_overrides": "[2]"}, "is a JSON list; expected a JSON object"),
    ("unknown_override_key", {"student_config_overrides": {"num_layerz": 2}}, "'num_layerz' is not a field"),
    ("kv_heads_not_dividing", {"student_config_overrides": {"num_key_value_heads": 3}}, "num_key_value_heads=3"),
    ("teacher_layer_out_of_range", {"student_layers_from_teacher": [0, 7]}, "index 7 is out of range"),
    ("teacher_layer_count", {"student_layers_from_teacher": [0, 1, 2]},
     "has 3 entries; expected one per student layer"),
    ("narrow_student_from_teacher_layers", {"student_config_overrides": {"hidden_size": 32, "num_attention_heads": 2,
                                            "num_key_value_heads": 1}}, "use student_init=random"),
    ("copy_unknown_module", {"copy_teacher_modules": ["model.embedz"]}, "no module named 'model.embedz'"),
    ("freeze_unknown_module", {"freeze_student_modules": ["model.nope"]}, "no module named 'model.nope'"),
    ("bad_teacher_dtype", {"teacher_torch_dtype": "int4"}, "teacher_torch_dtype='int4' is not supported"),
    ("bad_student_init", {"student_init": "copy"}, "student_init='copy' is not supported"),
    ("two_student_sources", {"student_model_name_or_path": "a", "student_config_name_or_path": "b"}, "both set"),
    ("eval_fraction_out_of_range", {"eval_fraction": 0}, "eval_fraction=0"),
    ("empty_text_document_delimiter", {"text_document_delimiter": ""},
     "text_document_delimiter='' is empty; expected blank_line, line, file or a regular expression"),
    ("bad_eval_split_by", {"eval_split_by": "row"},
     "eval_split_by='row' is not supported; expected one of prompt, conversation"),
    ("negative_weight", {"logits_weight": -1}, "logits_weight=-1.0 must be >= 0"),
    ("no_component", {"logits_weight": 0}, "expected"),
    ("zero_temperature", {"logits_temperature": 0}, "logits_temperature=0.0 must be > 0"),
    ("fp16_on_the_cpu", {"fp16": True}, "fp16=true on the CPU: no float16 autocast runs there"),
    ("loss_kwargs_mismatch", {"logits_loss_kwargs": {"gamma": 2}}, "do not fit loss 'forward_kl'"),
    ("bitnet_schedule_without_bitnet", {"bitnet_schedule": True}, "needs a BitNet student"),
    ("nonfinite_limit", {"max_nonfinite_steps": 0}, "max_nonfinite_steps=0 must be a positive integer"),
    ("resume_without_checkpoint", {"resume_from_checkpoint": "true"}, "holds no checkpoint"),
    ("missing_dataset_path", {"dataset_name": "./no/such/data.jsonl"}, "does not exist"),
    ("negative_eval_samples", {"max_eval_samples": -1}, "max_eval_samples=-1 must be a positive integer"),
    ("zero_max_samples", {"max_samples": 0}, "max_samples=0 must be a positive integer"),
    ("zero_batch_size", {"per_device_train_batch_size": 0}, "per_device_train_batch_size=0 must be a positive integer"),
    ("zero_eval_batch_size", {"per_device_eval_batch_size": 0}, "per_device_eval_batch_size=0 must be a positive"),
    ("zero_accumulation", {"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0 must be a positive"),
    ("zero_learning_rate", {"learning_rate": 0}, "learning_rate=0.0 must be > 0"),
    ("negative_learning_rate", {"learning_rate": -1e-4}, "learning_rate=-0.0001 must be > 0"),
    ("zero_max_steps", {"max_steps": 0}, "max_steps=0 trains nothing (an untrained student would be written as a "
                                         "finished run); expected a positive number of optimizer steps"),
    ("zero_epochs", {"max_steps": -1, "num_train_epochs": 0}, "num_train_epochs=0.0 with max_steps=-1 trains nothing"),
    ("negative_weight_decay", {"weight_decay": -0.1}, "weight_decay=-0.1 must be >= 0"),
    ("teacher_neither_local_nor_on_the_hub", {"teacher_model_name_or_path": "no-such-org/no-such-teacher"},
     "cannot load teacher 'no-such-org/no-such-teacher': no local directory 'no-such-org/no-such-teacher', and from "
     "the Hub: "),
    ("bad_tokens_seen_setting", {"include_num_input_tokens_seen": "some"},
     "include_num_input_tokens_seen='some' is not"),
    # NaN passed every range check (nan <= 0 is False): a run 'finished' with a NaN loss and an untrained student
    ("nan_temperature", {"logits_temperature": float("nan")}, "logits_temperature=nan is not finite; expected a"),
    ("temperature_squared_overflows", {"logits_temperature": 1e300}, "logits_temperature=1e+300 is too large"),
    ("nan_weight_decay", {"weight_decay": float("nan")}, "weight_decay=nan is not finite"),  # saved NaN weights
    ("nan_weight", {"logits_weight": float("nan")}, "logits_weight=nan is not finite"),  # an AttributeError
    ("infinite_epochs", {"max_steps": -1, "num_train_epochs": float("inf")}, "num_train_epochs=inf is not finite"),
    ("negative_seed", {"seed": -1}, "seed=-1 is out of range; expected an integer 0 <= x < 2**32"),
    ("seed_too_large", {"seed": 2**32}, "seed=4294967296 is out of range"),
    ("negative_dataloader_workers", {"dataloader_num_workers": -1}, "dataloader_num_workers=-1 must be >= 0"),
    ("negative_tokenizing_workers", {"preprocessing_num_workers": -1}, "preprocessing_num_workers=-1 must be >= 0"),
    ("unknown_logger", {"report_to": "tensorbord"}, "report_to='tensorbord' is not a logger; expected none, all or "
                                                    "among azure_ml, comet_ml"),
    ("null_logger", {"report_to": None}, "report_to is null; expected a value of type str"),
    ("teacher_layers_with_random_init", {"student_init": "random", "student_layers_from_teacher": [0, 3]},
     "student_layers_from_teacher=[0, 3] is set with student_init='random', which copies no teacher layer"),
    ("teacher_layers_with_a_student_checkpoint", {"student_model_name_or_path": "student", "student_config_overrides":
                                                  None, "student_layers_from_teacher": [0, 3]},
     "student_layers_from_teacher=[0, 3] is set with student_model_name_or_path"),
    # metrics.json recorded quantization '8bit' and the card's config kept it, though no teacher ran quantized
    ("quantized_recorded_teacher", {"teacher_source": "recorded", "teacher_store": "store", "teacher_quantization":
                                    "8bit"}, "teacher_quantization='8bit' with teacher_source=recorded: the teacher"),
    ("bitnet_norm_without_bitnet", {"bitnet_input_norm": True}, "bitnet_input_norm=true needs a BitNet student"),
    ("bitnet_subln_without_bitnet", {"bitnet_subln": True}, "bitnet_subln=true needs a BitNet student"),
    ("bitnet_warmup_past_its_second_stage", {"student_as_bitnet": True, "bitnet_schedule": True, "max_steps": 1},
     "warmup_steps=0.05 (1 of them) and bitnet_stage_boundary=0.5: the warmup does not end before the second stage "
     "starts (step 0)"),  # was refused as training started, the models loaded and the run's folder written
    # by epochs the steps are known from the data: it was refused as training started, the run's folder written
    ("bitnet_warmup_past_its_second_stage_by_epochs",
     {"student_as_bitnet": True, "bitnet_schedule": True, "max_steps": -1, "num_train_epochs": 0.004},
     "num_train_epochs=0.004 (1 optimizer steps), warmup_steps=0.05 (1 of them) and bitnet_stage_boundary=0.5: the "
     "warmup does not end before the second stage starts (step 0)"),
    # each of these was a traceback (ValueError, TypeError, RuntimeError, AttributeError, FileNotFoundError) after the
    # models had loaded, or while TrainingArguments read the setting
    ("negative_data_seed", {"data_seed": -1}, "data_seed=-1 is out of range; expected an integer 0 <= x < 2**32"),
    ("adam_beta_out_of_range", {"adam_beta2": 1.5}, "adam_beta2=1.5 is out of range; expected 0 <= x < 1"),
    ("negative_adam_epsilon", {"adam_epsilon": -1e-8}, "adam_epsilon=-1e-08 must be >= 0"),
    ("neftune", {"neftune_noise_alpha": 5.0}, "neftune_noise_alpha=5.0 is not supported by distill"),
    ("unknown_scheduler_parameter", {"lr_scheduler_kwargs": {"num_cycle": 1}},
     "lr_scheduler_kwargs sets 'num_cycle', which the cosine schedule does not take; expected among num_cycles"),
    ("scheduler_kwargs_not_an_object", {"lr_scheduler_kwargs": "[]"},
     "lr_scheduler_kwargs='[]' is a JSON list; expected a JSON object"),
    ("freeze_the_whole_student", {"freeze_student_modules": [""]},
     "freeze_student_modules=[''] freezes every parameter of the student, which would not train"),
    ("missing_accelerator_config", {"accelerator_config": "no-such.json"},
     "accelerator_config='no-such.json' is not a file; expected a JSON file or a JSON object"),
    ("unknown_accelerator_config_field", {"accelerator_config": {"split_batch": True}},
     "accelerator_config sets 'split_batch', which is not a field of transformers' AcceleratorConfig"),
    ("optim_args_not_pairs", {"optim_args": "beta1"}, "optim_args='beta1' is not usable; expected key=value pairs"),
    ("empty_dataset_name", {"dataset_name": ""}, "dataset_name='' is empty; expected a Hub dataset id or a local path"),
    ("empty_eval_set_path", {"eval_datasets": {"a": ""}}, "eval_datasets['a'] path='' is empty"),
    ("percent_of_a_stream", {"dataset_streaming": True, "dataset_split": "train[:1%]"},
     "dataset_split='train[:1%]' cannot be read as a stream (dataset_streaming=true): 'train[:1%]' counts in percent"),
    # accepted and ignored: Distily's loss replaces the Trainer's, which applies it (the same loss with and without)
    ("label_smoothing", {"label_smoothing_factor": 0.1}, "label_smoothing_factor=0.1 is not applied by distill"),
]


@pytest.mark.parametrize("changes, expected", [case[1:] for case in VALUE_CASES], ids=[c[0] for c in VALUE_CASES])
def test_bad_value(changes, expected, tmp_path, teacher_dirs, run_values, capsys):
    values = {**run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}), **changes}
    out = Path(values["output_dir"])
    previous_run(out)
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
        (lambda path: path.write_text("learning_rate: 1e-3\nmax_steps: 5\nlearning_rate: 1e-4\n"),
         "sets 'learning_rate' twice (lines 1 and 3); expected each key once"),
        (lambda path: path.write_text("student_config_overrides:\n  n_layer: 2\n  n_layer: 4\n"),
         "sets 'n_layer' twice (lines 2 and 3)"),
        (lambda path: path.write_bytes(b"max_steps: 5\n# caf\xe9\n"),
         "is not UTF-8 at byte 18; expected UTF-8 YAML or JSON"),
        (lambda path: path.write_text("max_steps: 5\n1: 2\n"),
         "has the key 1, which is not a name; expected key names such as max_steps"),
        (lambda path: path.mkdir(), "is a directory; expected a YAML or JSON file"),
    ],
    ids=["missing", "invalid_yaml", "not_a_mapping", "key_given_twice", "nested_key_given_twice", "not_utf8",
         "key_not_a_name", "a_directory"],
)
def test_bad_config_file(write, expected, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    write(path)
    assert main(["distill", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    "args, stray",
    [(["{config}", "{config}"], "{config}"), (["--max_steps", "5", "{config}"], "{config}"),
     (["{config}", "--max_steps", "5", "6"], "6")],
    ids=["two_config_files", "config_file_after_flags", "one_value_too_many"],
)
def test_a_stray_argument_is_named_as_such(args, stray, tmp_path, capsys):
    """Once reported as "unknown config key '<the path>'"."""
    config = tmp_path / "config.yaml"
    config.write_text("max_steps: 5\n")
    assert main(["distill", *(arg.format(config=config) for arg in args)]) == 2
    assert capsys.readouterr().err == (f"distily distill: error: unexpected argument {stray.format(config=config)!r}; "
                                       "expected one config file first, then --key value pairs\n")


@pytest.mark.parametrize(
    "command, flags, expected",
    [
        ("record", ["--teacher_store", "{tmp}/store", "--seed", "-1"], "seed=-1 is out of range"),
        ("record", ["--teacher_store", "{tmp}/store", "--logits_temperature", "nan"], "logits_temperature=nan is not "
                                                                                     "finite"),  # a NaN store
        ("record", ["--teacher_store", "{tmp}/store", "--data_seed", "-1"], "data_seed=-1 is out of range"),
        ("record", ["--teacher_store", ""], "teacher_store='' is empty"),  # a store written into the current directory
        ("record", ["--teacher_store", "{tmp}/store", "--dataset_streaming", "true"],  # dataset_split: train
         "dataset_split='train' cannot be read as a stream (dataset_streaming=true): 'train' names a whole split"),
        ("generate", ["--generate_output", ""], "generate_output='' is empty"),  # a ValueError
        ("generate", ["--generate_output", "{tmp}/samples.jsonl", "--generate_temperature", "nan"],
         "generate_temperature=nan is not finite"),  # a ValueError from transformers' sampling
    ],
    ids=["record_negative_seed", "record_nan_temperature", "record_negative_data_seed", "record_empty_store",
         "record_whole_split_streamed", "generate_empty_output", "generate_nan_temperature"],
)
def test_a_bad_record_or_generate_value_is_refused_before_the_teacher_loads(command, flags, expected, tmp_path,
                                                                           teacher_dirs, text_file, capsys,
                                                                           monkeypatch):
    monkeypatch.setattr("distily.recording.run._teacher_for", lambda config: pytest.fail("the teacher was loaded"))
    monkeypatch.setattr("distily.recording.generate.load_teacher", lambda *args: pytest.fail("the teacher was loaded"))
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    assert main([command, "--teacher_model_name_or_path", teacher_dirs["llama"], "--dataset_name", text_file,
                 *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"distily {command}: error: {expected}") and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "output_dir, expected",
    [("notes.txt", "is an existing file"), ("notes.txt/eval", "is below the file '{tmp}/notes.txt'")],
    ids=["a_file", "below_a_file"],
)
def test_eval_refuses_an_output_dir_it_cannot_make_before_evaluating(output_dir, expected, tmp_path, capsys,
                                                                    monkeypatch):
    """Once a FileExistsError after the whole evaluation."""
    (tmp_path / "notes.txt").write_text("a user's file")
    monkeypatch.setattr("distily.commands.eval.load_model", lambda *args: pytest.fail("the model was loaded"))
    output_dir, eval_set = str(tmp_path / output_dir), json.dumps({"a": str(tmp_path / "notes.txt")})
    assert main(["eval", "some/model", "--eval_datasets", eval_set, "--output_dir", output_dir]) == 2
    assert capsys.readouterr().err == (f"distily eval: error: output_dir={output_dir!r} "
                                       f"{expected.format(tmp=tmp_path)}; expected a directory\n")
    assert (tmp_path / "notes.txt").read_text() == "a user's file"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_its_package_is_one_line(tmp_path, capsys):
    """Once a PackageNotFoundError, raised as TrainingArguments read the setting."""
    assert main(["distill", "--teacher_model_name_or_path", "t", "--output_dir", str(tmp_path / "run"),
                 "--deepspeed", "ds.json"]) == 2
    assert capsys.readouterr().err == ("distily distill: error: deepspeed='ds.json' needs the deepspeed package, which "
                                       "is not installed; expected `pip install deepspeed`, or no deepspeed\n")
    assert list(tmp_path.iterdir()) == []


def test_eval_refuses_a_nan_limit(capsys):
    assert main(["eval", "some/model", "--lm_eval_tasks", "t", "--lm_eval_limit", "nan"]) == 2
    assert capsys.readouterr().err == "distily eval: error: lm_eval_limit=nan is not finite; expected a finite number\n"


@pytest.mark.parametrize("below", [False, True], ids=["file", "below_a_file"])
def test_a_teacher_store_that_is_a_file_is_refused_before_the_teacher_loads(below, tmp_path, teacher_dirs, text_file,
                                                                            capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("a user's file")
    store = tmp_path / "notes.txt" / "store" if below else tmp_path / "notes.txt"
    monkeypatch.setattr("distily.recording.run._teacher_for", lambda config: pytest.fail("the teacher was loaded"))
    before = tree(tmp_path)
    assert main(["record", "--teacher_model_name_or_path", teacher_dirs["llama"], "--dataset_name", text_file,
                 "--teacher_store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    where = f"is below the file '{tmp_path / 'notes.txt'}'" if below else "is an existing file"
    assert err == (f"distily record: error: teacher_store='{store}' {where}; expected a directory (new, or a store "
                   "to resume)")
    assert tree(tmp_path) == before


def test_a_teacher_store_in_a_users_folder_is_refused_before_the_teacher_loads(tmp_path, teacher_dirs, text_file,
                                                                             capsys, monkeypatch):
    """Once the store's manifest, shards, teacher/ and tokenizer/ were written among the folder's files (with
    teacher_store '.', into the current directory)."""
    (tmp_path / "notes.txt").write_text("a user's file")
    monkeypatch.setattr("distily.recording.run._teacher_for", lambda config: pytest.fail("the teacher was loaded"))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert main(["record", "--teacher_model_name_or_path", teacher_dirs["llama"], "--dataset_name", text_file,
                 "--teacher_store", "."]) == 2
    assert capsys.readouterr().err == ("distily record: error: teacher_store='.' holds 'notes.txt', which no store "
                                       "writes; expected a directory (new, or a store to resume)\n")
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--format", "zip"], "export format 'zip' is not supported"),
        (["--format", "packed"], "expected a BitNet student"),
        ([], "the following arguments are required: --format"),
        (["--format", "gguf", "--gguf_type", "TQ3_0"], "GGUF ternary type 'TQ3_0' is not supported"),
        (["--format", "packed", "--gguf_type", "TQ1_0"], "--gguf_type TQ1_0 is a GGUF setting but --format is "
                                                          "'packed'; expected --format gguf, or no --gguf_type"),
    ],
    ids=["unknown_format", "dense_student", "no_format", "unknown_gguf_type", "gguf_type_for_packed"],
)
def test_bad_export(args, expected, teacher_dirs, capsys):
    before = snapshot(Path(teacher_dirs["llama"]))
    assert main(["export", teacher_dirs["llama"], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert snapshot(Path(teacher_dirs["llama"])) == before


def test_export_of_a_missing_run_dir(tmp_path, capsys):
    """A folder that does not exist is named so (it was said to have no config.json); a file is not a folder; a folder
    without a checkpoint has no config.json."""
    assert main(["export", str(tmp_path / "nothing"), "--format", "packed"]) == 2
    assert capsys.readouterr().err.strip() == (f"distily export: error: run directory '{tmp_path / 'nothing'}' does "
                                               "not exist; expected a run's output_dir (a saved student checkpoint)")
    (tmp_path / "file").write_text("")
    assert main(["export", str(tmp_path / "file"), "--format", "packed"]) == 2
    assert f"run directory '{tmp_path / 'file'}' is not a directory; expected" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "packed"]) == 2
    assert f"run directory '{tmp_path}' has no config.json; expected" in capsys.readouterr().err


def test_ctrl_c_during_training_is_one_line_with_the_resume_command(tmp_path, teacher_dirs, run_values, capsys,
                                                                   monkeypatch):
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2},
                        save_strategy="steps", save_steps=2)
    out = Path(values["output_dir"])
    previous_run(out)
    ctrl_c_at_training_step(monkeypatch, 3)
    assert run_cli(tmp_path, values) == 130
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert "Traceback" not in err and [line for line in err.splitlines() if "interrupted" in line] == [last]
    assert last == (f"distily distill: interrupted; the last checkpoint is '{out / 'checkpoint-2'}', resume with: "
                    f"distily distill {tmp_path / 'config.yaml'} --resume_from_checkpoint true")
    assert (out / "model.safetensors").read_bytes() == b"precious weights"  # a plain run replaces it at its end only
    assert not (out / RunDir.LOCK).exists() and not (out / "metrics.json").exists()


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
def test_export_never_replaces_what_it_did_not_write(output, flags, cwd, expected, tmp_path, teacher_dirs, capsys,
                                                     monkeypatch):
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


@pytest.mark.parametrize("filesystem", ["read-only", "full"])
def test_a_read_only_or_full_filesystem_is_one_line_and_the_run_resumable(filesystem, tmp_path, teacher_dirs,
                                                                         run_values, capsys):
    """A real tmpfs: read-only, the run stops before training; full, the run is refused before it writes (the disk
    check), and told to try anyway (disk_check: false) stops when it saves the student, leaving nothing
    half-written. Once there is room, the same command finishes the run."""
    with small_filesystem(tmp_path / "mnt", "8m" if filesystem == "read-only" else "96k") as mnt:
        values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2},
                            output_dir=str(mnt / "run"))
        out = Path(values["output_dir"])
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
        if filesystem == "read-only":
            remount(mnt, "ro")
        before = tree(mnt)
        if filesystem == "full":
            assert run_cli(tmp_path, values) == 2
            last = capsys.readouterr().err.strip().splitlines()[-1]
            assert last.startswith("distily distill: error: run output of ~") and tree(mnt) == before
            assert f" free for '{out}': it cannot fit; expected a smaller save_total_limit" in last
        assert run_cli(tmp_path, values, "--disk_check", "false") == 2
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]
        assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line.lower()] == [last]
        if filesystem == "read-only":
            assert last == (f"distily distill: error: cannot write in output_dir '{out / RunDir.LOCK}': Read-only file "
                            "system; expected a writable filesystem")
            assert tree(mnt) == before
            remount(mnt, "rw")
        else:
            assert last == (f"distily distill: error: cannot write the student '{out}': No space left on device; "
                            "expected free space on its filesystem")
            assert tree(mnt) == {**before, "run/run_settings.json": tree(mnt)["run/run_settings.json"]}
            remount(mnt, "size=8m")
        assert run_cli(tmp_path, values) == 0
        assert RunDir(out).finished_step() == 4 and (out / "notes.txt").read_text() == "the user's"


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_checkpoint(tmp_path, teacher_dirs, run_values,
                                                                                    capsys, monkeypatch):
    """Where no tmpfs can be mounted too: the optimizer's torch.save fails as on a full disk."""
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2},
                        save_strategy="steps", save_steps=2)
    out = Path(values["output_dir"])

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half an optimizer")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("torch.save", full_disk)
    assert run_cli(tmp_path, values) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"distily distill: error: cannot write in output_dir '{out}': No space left on device; "
        "expected free space on its filesystem"
    )
    # what was staged of the checkpoint is set aside, never taken for one (as a killed save's: test_reliability)
    assert sorted(path.name for path in out.iterdir()) == [CHECKPOINT_STAGING_DIR, RunDir.SETTINGS]
    assert RunDir(out).last_checkpoint() is None


def test_weights_a_learning_rate_overflowed_are_one_line_and_no_student_is_written(tmp_path, teacher_dirs, run_values,
                                                                                  capsys):
    """learning_rate 1e300: the first step's gradients are finite (the guard lets it through), the weights it writes
    are not, and the later steps are skipped as non-finite; the run used to finish (exit 0) and save a student of NaN
    weights beside metrics.json. Now it stops before the evaluation after training: unfinished, no student."""
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=2,
                        learning_rate=1e300)
    assert run_cli(tmp_path, values) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("distily distill: error: parameter ") and last.endswith(
        "holds non-finite values; expected finite weights (a lower learning_rate?), so no student is written")
    out = Path(values["output_dir"])
    assert not (out / RunDir.METRICS).exists() and not list(out.glob("*.safetensors"))
