"""A run's output_dir: no phantom step after a kill, finished runs kept, overwrites that cannot leave a false
"finished", one writer at a time, resumes with the settings the run started with, Ctrl-C's way back."""

import json
import math
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.config import parse_config
from distily.data import chat
from distily.data.arguments import DataArguments
from distily.errors import DistilyConfigError
from distily.recording.arguments import TeacherSourceArguments
from distily.training import run_dir
from distily.training.distill import run_distillation
from distily.training.output_lock import output_dir_lock
from distily.training.run_dir import RunDir
from distily.training.trainer import DistillationTrainer
from distily.training.trainer_internals import CHECKPOINT_STAGING_DIR
from file_tree import tree
from interrupts import ctrl_c_at_training_step
from tiny import make_documents, write_jsonl


def _values(run_values, teacher_dirs, **overrides):
    return run_values(
        teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, save_strategy="steps", save_steps=2,
        **overrides,
    )


def _steps(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def _kill_after_training(monkeypatch):
    """A kill after the last checkpoint, before metrics.json: the evaluation after training raises."""
    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(DistillationTrainer, "evaluate_after_training", killed)


def test_a_run_killed_after_its_last_checkpoint_resumes_without_a_phantom_step(teacher_dirs, run_values, monkeypatch):
    values = _values(run_values, teacher_dirs)  # 4 steps; checkpoints at 2 and 4
    out = Path(values["output_dir"])
    with monkeypatch.context() as patch:
        _kill_after_training(patch)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(parse_config(**values))
    assert not (out / RunDir.METRICS).exists() and _steps(out / "checkpoint-4") == 4

    metrics = run_distillation(parse_config(**values, resume_from_checkpoint="true"))
    assert metrics["train"]["global_step"] == 4
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert _steps(out / "checkpoint-4") == 4
    assert json.loads((out / RunDir.METRICS).read_text())["train"]["global_step"] == 4


def test_a_finished_run_is_resumed_only_to_train_it_longer(teacher_dirs, run_values):
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    run_distillation(parse_config(**values))
    before = tree(out)
    for changes in ({}, {"max_steps": 3}, {"resume_from_checkpoint": str(out / "checkpoint-2"), "max_steps": 6}):
        with pytest.raises(DistilyConfigError) as refused:
            run_distillation(parse_config(**{**values, "resume_from_checkpoint": "true", **changes}))
        assert ("finished run of 4 steps" in str(refused.value)
                or "before the end of the finished run" in str(refused.value))
    assert tree(out) == before  # nothing written, the lock released

    # more steps, with other logging and evaluation settings: trained on from checkpoint-4
    longer = {**values, "max_steps": 6, "logging_steps": 1, "max_eval_samples": 8, "resume_from_checkpoint": "true"}
    metrics = run_distillation(parse_config(**longer))
    assert metrics["train"]["global_step"] == 6 and _steps(out / "checkpoint-6") == 6
    assert not (out / RunDir.LOCK).exists()


def test_a_finished_run_by_epochs_is_trained_longer_with_more_epochs(teacher_dirs, run_values):
    values = _values(run_values, teacher_dirs, max_steps=-1, num_train_epochs=0.015)  # 4 of 208 steps an epoch
    out = Path(values["output_dir"])
    first = run_distillation(parse_config(**values))["train"]
    per_epoch = round(first["global_step"] / first["epoch"])
    assert first["global_step"] == math.ceil(0.015 * per_epoch) == 4 and _steps(out / "checkpoint-4") == 4

    # the Trainer's count for 0.025 epochs, past the 4 steps trained: it was refused as "max_steps=-1 trains no
    # further"
    metrics = run_distillation(parse_config(**{**values, "num_train_epochs": 0.025, "resume_from_checkpoint": "true"}))
    assert metrics["train"]["global_step"] == math.ceil(0.025 * per_epoch) == 6
    assert metrics["train"]["resumed_from_step"] == 4 and _steps(out / "checkpoint-6") == 6
    assert metrics["train"]["epoch"] == pytest.approx(6 / per_epoch)


@pytest.mark.parametrize("fault", ["removing the old checkpoints", "the first training step"])
def test_an_interrupted_overwrite_never_leaves_a_false_finished_run(fault, teacher_dirs, run_values, monkeypatch,
                                                                     capsys):
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    run_distillation(parse_config(**values))
    assert (out / RunDir.METRICS).exists() and (out / "checkpoint-4").is_dir()

    with monkeypatch.context() as patch:
        if fault == "removing the old checkpoints":  # right after the marker is deleted
            patch.setattr(run_dir, "_remove", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
        else:
            patch.setattr(DistillationTrainer, "training_step", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run_distillation(parse_config(**{**values, "overwrite_output_dir": True, "max_steps": 8}))
    assert not (out / RunDir.METRICS).exists()
    if fault == "the first training step":  # the old run's checkpoints and weights went before it
        assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
        assert not (out / RunDir.REPLACED).exists()

    config = out.parent / "plain.yaml"
    config.write_text(yaml.safe_dump({**values, "max_steps": 2}))
    capsys.readouterr()
    code = main(["distill", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("holds a finished run" in line for line in err), err[-3:]
    if fault == "removing the old checkpoints":  # the old run's checkpoints are still there: resumable, not finished
        assert code == 2 and "holds checkpoints of an unfinished run" in err[-1]
    else:  # the old run's checkpoints and weights went before training: a plain run starts
        assert code == 0 and json.loads((out / RunDir.METRICS).read_text())["train"]["global_step"] == 2


def test_one_run_at_a_time_and_a_dead_runs_lock_is_taken_over(teacher_dirs, run_values, tmp_path):
    directory = tmp_path / "out"
    with output_dir_lock(str(directory)):
        holder = json.loads((directory / RunDir.LOCK).read_text())
        with pytest.raises(DistilyConfigError, match="is in use by another run"):
            with output_dir_lock(str(directory)):
                pass
    assert not directory.exists()  # made for the lock, removed with it

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    values = _values(run_values, teacher_dirs, max_steps=2)
    out = Path(values["output_dir"])
    out.mkdir()
    (out / RunDir.LOCK).write_text(json.dumps({**holder, "pid": int(dead.stdout)}))
    assert run_distillation(parse_config(**values))["train"]["global_step"] == 2
    assert not (out / RunDir.LOCK).exists()
    assert holder["host"] == socket.gethostname()


def test_ctrl_c_prints_the_resume_command_and_it_finishes_the_run(teacher_dirs, run_values, tmp_path, monkeypatch,
                                                                   capsys):
    values = _values(run_values, teacher_dirs, max_steps=6)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    with monkeypatch.context() as patch:
        ctrl_c_at_training_step(patch, 3)
        assert main(["distill", str(config), "--logging_steps", "1"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    out = Path(values["output_dir"])
    assert last.startswith(f"distily distill: interrupted; the last checkpoint is '{out / 'checkpoint-2'}'"), last
    command = last.split("resume with: ")[1]
    assert command == f"distily distill {config} --logging_steps 1 --resume_from_checkpoint true"
    assert not (out / RunDir.LOCK).exists()
    assert main(shlex.split(command)[1:]) == 0
    assert json.loads((out / RunDir.METRICS).read_text())["train"]["global_step"] == 6
    assert json.loads((out / RunDir.SETTINGS).read_text())["settings"]["max_seq_length"] == 32


@pytest.mark.parametrize(
    "flags, kept",
    [
        ("--overwrite_output_dir --max_steps 10", "--max_steps 10"),  # a bare flag, then another flag
        ("--overwrite_output_dir --max_steps=10", "--max_steps=10"),  # then a key=value
        ("--max_steps 10 --overwrite_output_dir", "--max_steps 10"),  # last
        ("--overwrite_output_dir true --max_steps 10", "--max_steps 10"),
        ("--overwrite_output_dir=true --resume_from_checkpoint false --max_steps 10", "--max_steps 10"),
    ],
)
def test_the_resume_command_drops_the_overwrite_flag_and_its_value_only(flags, kept, teacher_dirs, tmp_path):
    command = run_dir._resume_command(f"distily distill config.yaml {flags}", overwrite=True)
    assert command == f"distily distill config.yaml {kept} --overwrite_output_dir false --resume_from_checkpoint true"
    config = parse_config(argv=[*shlex.split(command)[3:], "--teacher_model_name_or_path", teacher_dirs["llama"],
                                "--dataset_name", "data.jsonl", "--output_dir", str(tmp_path / "run")])
    assert config.training.max_steps == 10 and config.training.resume_from_checkpoint == "true"
    assert not config.training.overwrite_output_dir


@pytest.mark.parametrize(
    "key, value",
    [("lmbda", 0.5), ("on_policy_temperature", 0.5), ("on_policy_top_p", 0.9), ("on_policy_max_new_tokens", 16),
     ("student_chat_template", "{{ messages }}"), ("train_sampling_strategy", "sequential"),
     ("dataloader_drop_last", True)],
)
def test_a_resume_that_changes_on_policy_sampling_the_data_order_or_the_chat_template_is_refused(key, value,
                                                                                               teacher_dirs,
                                                                                               run_values):
    values = run_values(teacher_dirs["llama"])
    checkpoint = Path(values["output_dir"]) / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    same = parse_config(**values)
    RunDir(values["output_dir"]).record_settings(run_dir.run_settings(same))
    run_dir.check_resume(same.training, str(checkpoint), run_dir.run_settings(same))  # unchanged: accepted

    changed = parse_config(**values, **{key: value})
    was = run_dir.run_settings(same)[key]
    refusal = re.escape(f"continues a run started with {key}={was!r}, not {value!r}")
    with pytest.raises(DistilyConfigError, match=refusal):
        run_dir.check_resume(changed.training, str(checkpoint), run_dir.run_settings(changed))


def test_a_run_recorded_before_a_setting_was_recorded_resumes_with_a_warning(teacher_dirs, run_values, caplog):
    """run_settings.json written by an older Distily lacks the settings recorded since (lmbda, ...): those are not
    checked, the others still are."""
    values = run_values(teacher_dirs["llama"])
    checkpoint = Path(values["output_dir"]) / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    config = parse_config(**values)
    older = {key: value for key, value in run_dir.run_settings(config).items() if key != "lmbda"}
    RunDir(values["output_dir"]).record_settings(older)
    with caplog.at_level("WARNING"):
        run_dir.check_resume(config.training, str(checkpoint), run_dir.run_settings(config))
    assert "does not record lmbda" in caplog.text
    changed = parse_config(**{**values, "learning_rate": 0.5})
    with pytest.raises(DistilyConfigError, match="continues a run started with learning_rate="):
        run_dir.check_resume(changed.training, str(checkpoint), run_dir.run_settings(changed))


def _killed_after_its_last_checkpoint(values: dict, monkeypatch) -> tuple[Path, dict]:
    """The run of ``values`` killed after its last checkpoint: its output_dir and each file's mtime there."""
    with monkeypatch.context() as patch:
        _kill_after_training(patch)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(parse_config(**values))
    out = Path(values["output_dir"])
    return out, {path: path.stat().st_mtime_ns for path in out.rglob("*")}


def _refused_untouched(values: dict, refusal: str, out: Path, written: dict) -> None:
    """Its resume is refused with the one line ``refusal`` (a regular expression), every file left as it was."""
    with pytest.raises(DistilyConfigError, match=f"^{refusal}$"):
        run_distillation(parse_config(**values, resume_from_checkpoint="true"))
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == written


def test_a_resume_on_data_rewritten_under_its_name_is_refused_and_writes_nothing(teacher_dirs, run_values, tmp_path,
                                                                                   monkeypatch):
    """The same dataset_name with other documents in it: the run took the checkpoint's model and optimizer on into
    another data order, a student neither run would give. The training rows' digest, recorded when it started, refuses
    it once the data loads, before anything is written."""
    data = tmp_path / "data.jsonl"
    write_jsonl(data, make_documents(400))
    values = _values(run_values, teacher_dirs, dataset_name=str(data))
    out, written = _killed_after_its_last_checkpoint(values, monkeypatch)
    write_jsonl(data, make_documents(400, seed=5))
    digests = r"\(train_rows_sha256 [0-9a-f]{12}\.\.\., now [0-9a-f]{12}\.\.\.: " + re.escape(
        "the data, or how a newer Distily frames it, changed since)")
    refusal = (re.escape(f"resume_from_checkpoint='{out / 'checkpoint-4'}' continues a run started on other training "
                         f"rows than dataset_name='{data}' gives now ") + digests
               + re.escape("; expected the data it was started with, or --overwrite_output_dir true to start over"))
    _refused_untouched(values, refusal, out, written)

    write_jsonl(data, make_documents(400))  # the data it started with: the run finishes
    assert run_distillation(parse_config(**values, resume_from_checkpoint="true"))["train"]["global_step"] == 4


def test_a_resume_on_a_teacher_saved_again_at_its_path_is_refused_and_writes_nothing(teacher_dirs, run_values,
                                                                                      tmp_path, monkeypatch):
    """The teacher trained on and saved to the same folder: the run took the checkpoint's student on against another
    teacher without a word. Its weights' sampled digest, recorded when the run started, refuses it once the teacher
    loads, before anything is written; the teacher it started with finishes the run."""
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dirs["llama"], teacher)
    original = (teacher / "model.safetensors").read_bytes()
    values = _values(run_values, teacher_dirs, teacher_model_name_or_path=str(teacher))
    out, written = _killed_after_its_last_checkpoint(values, monkeypatch)
    trained = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1e-3)  # a step of training: every weight moves, the file's size and header stay
    trained.save_pretrained(teacher)
    assert (teacher / "model.safetensors").stat().st_size == len(original)
    refusal = (re.escape(f"resume_from_checkpoint='{out / 'checkpoint-4'}' continues a run started with other weights "
                         f"than teacher_model_name_or_path='{teacher}' holds now (teacher_weights ")
               + r"[0-9a-f]{12}\.\.\., now [0-9a-f]{12}\.\.\.: " + re.escape(
                   "the checkpoint there (or its Hub revision) changed since); expected the teacher it was started "
                   "with, or --overwrite_output_dir true to start over"))
    _refused_untouched(values, refusal, out, written)

    (teacher / "model.safetensors").write_bytes(original)  # the teacher it started with: the run finishes
    assert run_distillation(parse_config(**values, resume_from_checkpoint="true"))["train"]["global_step"] == 4


@pytest.mark.parametrize(
    "key, path, refused",
    [
        ("teacher_model_name_or_path", "models/out", "is"),
        ("student_model_name_or_path", "models/out/student", "contains"),
        ("student_tokenizer_name_or_path", "models/out/tokenizer", "contains"),
        ("student_config_name_or_path", "models/out/config.json", "contains"),
        ("teacher_store", "models/out/store", "contains"),
        ("teacher_model_name_or_path", "models/teacher", None),  # beside output_dir
        ("teacher_model_name_or_path", "models", None),  # output_dir inside it only adds a folder there
        ("teacher_model_name_or_path", "org/model", None),  # no such local path: a Hub id
    ],
)
def test_output_dir_neither_is_nor_contains_an_input_of_the_run(key, path, refused, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for directory in ("models/out/student", "models/out/tokenizer", "models/out/store", "models/teacher"):
        Path(directory).mkdir(parents=True)
    Path("models/out/config.json").write_text("{}")
    if refused is None:
        run_dir.check_inputs_outside("models/out", {key: path})
        return
    with pytest.raises(DistilyConfigError) as error:
        run_dir.check_inputs_outside("models/out", {key: path})
    assert str(error.value).startswith(f"output_dir='models/out' {refused} {key}={path!r}; expected an output_dir")


def test_a_resume_from_another_directory_records_the_settings_of_the_run_that_runs(tmp_path):
    """An output_dir without checkpoints keeps the run_settings.json of a run killed before its first checkpoint:
    resumed into from elsewhere, it records the resumed run's; resumed from its own checkpoint, it keeps its own."""
    out, other = tmp_path / "run", tmp_path / "other" / "checkpoint-2"
    other.mkdir(parents=True)
    out.mkdir()
    run = RunDir(out)
    run.record_settings({"seed": 7})
    training = SimpleNamespace(output_dir=str(out), should_save=True, overwrite_output_dir=False)
    run_dir.prepare_output_dir(training, str(other), {"seed": 1})
    assert run.recorded_settings() == {"seed": 1}

    (out / "checkpoint-2").mkdir()
    run_dir.prepare_output_dir(training, str(out / "checkpoint-2"), {"seed": 3})
    assert run.recorded_settings() == {"seed": 1}


def test_a_run_pins_the_chat_template_date_and_a_resume_renders_with_the_one_recorded(tmp_path, monkeypatch):
    """A dated chat template renders a run with the day it started, which run_settings.json records and a resume on
    another day takes; a date given is kept; a run that recorded none resumes with today's; a run on a recorded
    store takes the date the store's rows were rendered with."""
    monkeypatch.setattr(chat, "today", lambda: "2024-07-27")
    RunDir(tmp_path / "dated").record_settings({"chat_template_date": "2024-07-26"})
    RunDir(tmp_path / "older").record_settings({"seed": 1})
    store = tmp_path / "store"
    store.mkdir()
    (store / "progress.json").write_text(json.dumps({"settings": {"chat_template_date": "2024-07-20"}, "shards": {}}))
    dated, older = RunDir(tmp_path / "dated"), RunDir(tmp_path / "older")
    recorded = TeacherSourceArguments(teacher_source="recorded", teacher_store=str(store))
    cases = [(None, None, None, "2024-07-27"), (None, dated, None, "2024-07-26"),
             ("2024-07-25", dated, None, "2024-07-25"), (None, older, None, "2024-07-27"),
             (None, None, recorded, "2024-07-20"), ("2024-07-25", None, recorded, "2024-07-25"),
             (None, older, recorded, "2024-07-20"), (None, None, TeacherSourceArguments(), "2024-07-27")]
    for given, continued, record, pinned in cases:
        config = SimpleNamespace(data=DataArguments(chat_template_date=given),
                                 record=record or TeacherSourceArguments())
        run_dir.pin_chat_template_date(config, continued)
        assert config.data.chat_template_date == pinned
    assert "chat_template_date" in run_dir.DATA_KEYS


def test_a_folder_no_run_wrote_is_refused_only_for_files_the_run_would_write_over(tmp_path):
    """A folder of the user's own files (notes, data, a repository's .gitattributes) takes a run; one holding a file
    the run writes (the card, the config, a tokenizer file, the report's plots) is refused until a run recorded its
    settings there."""
    run = RunDir(tmp_path)
    for name in ("notes.txt", ".gitattributes", "data.jsonl", "runs"):
        (tmp_path / name).write_text("the user's")
    assert run.foreign_files() == []
    for name in ("README.md", "tokenizer.json", "vocab.json", "spiece.model", "plots"):
        (tmp_path / name).write_text("the user's")
    assert run.foreign_files() == ["README.md", "plots", "spiece.model", "tokenizer.json", "vocab.json"]
    run.record_settings({"seed": 1})
    assert run.foreign_files() == []


def _auto(values: dict) -> dict:
    return run_distillation(parse_config(**values, resume_from_checkpoint="auto"))


def _state(out: Path) -> dict:
    """Every path under ``out`` with its mtime and a file's bytes."""
    return {path: (path.stat().st_mtime_ns, path.is_file() and path.read_bytes()) for path in out.rglob("*")}


def test_auto_starts_a_new_run_then_leaves_it_finished_with_exit_0(teacher_dirs, run_values, tmp_path, caplog):
    """--resume_from_checkpoint auto in a new output_dir starts the run (true is refused there: no checkpoint); run
    again once the run finished (a requeued job), it prints one line and exits 0, every file as it was."""
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    train = _auto(values)["train"]
    assert train["global_step"] == 4 and "resumed_from_step" not in train
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**values, "max_steps": 6}))
    written = _state(out)
    with caplog.at_level("INFO", logger="distily"):
        assert main(["distill", str(config), "--resume_from_checkpoint", "auto"]) == 0
    assert (f"output_dir={str(out)!r} holds a finished run of 4 steps: resume_from_checkpoint=auto leaves it as it is "
            "(--resume_from_checkpoint true with max_steps above 4 trains it longer)") in caplog.messages
    assert _state(out) == written
    empty = tmp_path / "empty"
    empty.mkdir()
    auto = parse_config(**{**values, "output_dir": str(empty)}, resume_from_checkpoint="auto")
    assert run_dir.resolve_resume(auto.training) is None


def test_auto_resumes_an_unfinished_run_as_true_does(teacher_dirs, run_values, tmp_path, monkeypatch):
    """A run stopped at step 3 (checkpoint-2): auto resumes it from checkpoint-2 to the student true's resume gives."""
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    with monkeypatch.context() as patch:
        ctrl_c_at_training_step(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(parse_config(**values))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert _auto(values)["train"]["resumed_from_step"] == 2
    run_distillation(parse_config(**{**values, "output_dir": str(copy)}, resume_from_checkpoint="true"))
    assert (out / "model.safetensors").read_bytes() == (copy / "model.safetensors").read_bytes()


def test_auto_starts_again_a_run_stopped_before_its_first_checkpoint(teacher_dirs, run_values, monkeypatch):
    """A run that recorded its settings and stopped before its first checkpoint (half-way through writing it): auto
    starts it again from step 0, on another day with the date it recorded, its half-written checkpoint removed, the
    user's files kept; with other settings it is refused (a resume's rule) and nothing is touched."""
    values = _values(run_values, teacher_dirs)
    out = Path(values["output_dir"])
    config = parse_config(**values)
    run_dir.pin_chat_template_date(config, None)  # as a run does before it records its settings
    RunDir(out).record_settings(run_dir.run_settings(config))
    staged = out / CHECKPOINT_STAGING_DIR / "checkpoint-3"
    staged.mkdir(parents=True)
    (staged / "optimizer.pt").write_bytes(b"half")
    (out / "notes.txt").write_text("the user's")
    monkeypatch.setattr(chat, "today", lambda: "2099-01-01")  # requeued the next day
    before = tree(out)
    with pytest.raises(DistilyConfigError, match=re.escape(
            f"resume_from_checkpoint=auto would start again the unfinished run in {str(out)!r} (no checkpoint yet), "
            "started with learning_rate=0.0001, not 0.5; expected the settings it was started with")):
        _auto({**values, "learning_rate": 0.5})
    assert tree(out) == before
    train = _auto(values)["train"]
    assert train["global_step"] == 4 and "resumed_from_step" not in train
    assert not (out / CHECKPOINT_STAGING_DIR).exists() and (out / "notes.txt").read_text() == "the user's"
