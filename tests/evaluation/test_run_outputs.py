"""A run end to end: eval-set metrics at every evaluation, metrics.json, the table, plots, tensorboard scalars,
and the model card that push_to_hub uploads (the Hub itself replaced by a recorder: the tests are offline)."""

import json
import math
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.config import parse_config
from distily.data import chat
from distily.training.distill import run_distillation
from hub_recorder import RecordingHub
from tiny import make_documents, save_tiny_model, write_jsonl


def test_a_run_reports_eval_sets_during_and_after_training_and_pushes_its_card(
    teacher_dirs, run_values, tmp_path, monkeypatch
):
    hub = RecordingHub(tmp_path / "hub")
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(30, seed=5))
    values = run_values(
        teacher_dirs["gpt2"],
        student_config_overrides={"n_layer": 2},
        eval_datasets={"recent": recent},
        max_eval_samples=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=4,
        report_to="tensorboard",
        push_to_hub=True,
        hub_model_id="someone/tiny-student",
        hub_strategy="end",
    )
    metrics = run_distillation(parse_config(**values), command="distily distill run.yaml")
    out = Path(values["output_dir"])

    teacher, student = metrics["teacher"], metrics["student"]
    for key in ("lm_loss", "perplexity", "bits_per_byte", "parameters", "size_on_disk_bytes", "recent_perplexity",
                "recent_bits_per_byte"):
        assert key in teacher, key
    for key in ("loss", "lm_loss", "perplexity", "bits_per_byte", "nats_per_byte", "kl_to_teacher", "top1_agreement",
                "recent_perplexity", "recent_bits_per_byte", "recent_kl_to_teacher", "recent_top1_agreement"):
        assert f"before_{key}" in student and f"after_{key}" in student, key
    # the same held-out targets (so the same bytes) under both models: bits per byte scale with the loss
    assert teacher["bits_per_byte"] / teacher["lm_loss"] == pytest.approx(
        student["after_bits_per_byte"] / student["after_lm_loss"], rel=1e-9)
    assert student["after_nats_per_byte"] == pytest.approx(student["after_bits_per_byte"] * math.log(2), rel=1e-12)
    # a byte-level token spells 1 to a few bytes of this ASCII text: more than one byte per token on average
    assert 1 < teacher["lm_loss"] / (teacher["bits_per_byte"] * math.log(2)) < 8
    assert student["architecture"]["layers"] == 2 and teacher["architecture"]["layers"] == 4
    assert set(metrics["eval_overlap"]) == {"heldout", "recent"}
    assert metrics["train"]["wall_seconds"] > 0 and metrics["train"]["tokens_seen"] == 4 * 4 * 32
    assert json.loads((out / "metrics.json").read_text())["student"]["after_recent_perplexity"] > 0

    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    evaluated = [entry["step"] for entry in history if "eval_recent_top1_agreement" in entry]
    assert evaluated == [2, 4] and all("eval_kl_to_teacher" in e for e in history if "eval_loss" in e)

    assert "| recent: perplexity |" in (out / "results.md").read_text()
    assert "| recent: bits per byte (UTF-8) |" in (out / "results.md").read_text()
    for name in ("losses", "eval_metrics", "teacher_vs_student"):
        with Image.open(out / "plots" / f"{name}.png") as image:
            image.verify()
    assert list((out / "runs" / "results").glob("events.out.tfevents.*"))
    assert not (tmp_path / "runs").exists()  # the evaluation before training logs into output_dir too

    card = ModelCard.load(out / "README.md")
    assert "distillation" in card.data.tags and "Finetuned from" not in str(card)
    assert f"| heldout: bits per byte (UTF-8) | {teacher['bits_per_byte']:.4f} |" in card.text
    card_bpb = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert card_bpb[("recent", "bits_per_byte")] == pytest.approx(student["after_recent_bits_per_byte"])
    assert [upload["repo_id"] for upload in hub.uploads] == ["someone/tiny-student"]
    assert (hub.uploads[0]["folder"] / "README.md").read_text() == (out / "README.md").read_text()  # as pushed


def test_a_checkpoint_pushes_the_student_as_the_repositorys_model(teacher_dirs, run_values, tmp_path, monkeypatch):
    """hub_strategy checkpoint (every_save, the Trainer's default, alike): at each save the Trainer copied the
    checkpoint's weights into output_dir and pushed them as the model: the DistillationModel's, every key under
    ``student.``, without the student's config, with the staged checkpoint (optimizer state and all) beside them."""
    hub = RecordingHub(tmp_path / "hub")
    for module in ("transformers.trainer", "distily.training.trainer_internals"):
        monkeypatch.setattr(f"{module}.hf_api", lambda: hub)
    values = run_values(teacher_dirs["gpt2"], student_config_overrides={"n_layer": 2}, save_strategy="steps",
                        save_steps=2, push_to_hub=True, hub_model_id="someone/tiny-student", hub_strategy="checkpoint")
    run_distillation(parse_config(**values))
    out = Path(values["output_dir"])
    assert [upload["message"] for upload in hub.uploads] == [
        "Training in progress, step 2", "Training in progress, step 2, checkpoint",
        "Training in progress, step 4", "Training in progress, step 4, checkpoint", "End of training"]
    assert not [path for upload in hub.uploads for path in upload["paths"] if path.startswith((".", "_"))]
    at_step_2 = AutoModelForCausalLM.from_pretrained(hub.uploads[0]["folder"]).state_dict()
    with safe_open(out / "checkpoint-2" / "model.safetensors", "pt") as checkpoint:  # the tied LM head left out
        assert all(key.startswith("student.") for key in checkpoint.keys())
        for key in checkpoint.keys():
            assert torch.equal(at_step_2[key.removeprefix("student.")], checkpoint.get_tensor(key)), key
    assert (hub.repo / "last-checkpoint" / "optimizer.pt").is_file()
    assert (hub.repo / "README.md").read_text() == (out / "README.md").read_text()


def test_distily_eval_compares_a_model_with_its_teacher(teacher_dirs, tokenizer, tmp_path, capsys):
    student = save_tiny_model(tmp_path / "student", "gpt2", tokenizer, seed=1, layers=2)
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(30, seed=5))
    code = main([
        "eval", student, "--teacher_model_name_or_path", teacher_dirs["gpt2"],
        "--eval_datasets", json.dumps({"recent": recent}), "--max_seq_length", "32", "--max_eval_samples", "8",
        "--tokenization_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "eval"),
    ])
    assert code == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| metric | teacher | student |"
    assert "| recent: top-1 agreement with the teacher | — |" in table
    columns = json.loads((tmp_path / "eval" / "eval.json").read_text())["columns"]
    assert columns["student"]["recent_perplexity"] > 0 and columns["teacher"]["recent_perplexity"] > 0
    assert columns["student"]["recent_bits_per_byte"] > 0 and columns["teacher"]["recent_bits_per_byte"] > 0
    assert "| recent: bits per byte (UTF-8) |" in table
    assert table.splitlines()[-1] == f"wrote eval.json, results.md, teacher_vs_student.png to {tmp_path / 'eval'}"


def test_distily_eval_keeps_the_teachers_column_beside_a_model_in_a_folder_named_teacher(
    teacher_dirs, tokenizer, tmp_path
):
    """The model's column is named by its folder: a run saved in ``.../teacher`` used to replace the teacher's."""
    model = save_tiny_model(tmp_path / "run" / "teacher", "gpt2", tokenizer, seed=1, layers=2)
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(30, seed=5))
    assert main([
        "eval", model, "--teacher_model_name_or_path", teacher_dirs["gpt2"],
        "--eval_datasets", json.dumps({"recent": recent}), "--max_seq_length", "32", "--max_eval_samples", "8",
        "--tokenization_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "eval"),
    ]) == 0
    columns = json.loads((tmp_path / "eval" / "eval.json").read_text())["columns"]
    assert list(columns) == ["teacher", "teacher (model)"]
    assert "recent_top1_agreement" in columns["teacher (model)"] and "recent_top1_agreement" not in columns["teacher"]
    assert (tmp_path / "eval" / "results.md").read_text().splitlines()[0] == "| metric | teacher | teacher (model) |"


def _with_remote_code_tokenizer(model_dir: str) -> str:
    """``model_dir`` whose tokenizer is a class of its own code (``auto_map``) that adds a token: without
    trust_remote_code, transformers falls back to the plain tokenizer of tokenizer.json, without that token."""
    (Path(model_dir) / "remote_tokenizer.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\nclass RemoteTokenizer(PreTrainedTokenizerFast):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        self.add_tokens(['<remote>'], special_tokens=True)\n"
    )
    settings = Path(model_dir) / "tokenizer_config.json"
    config = json.loads(settings.read_text())
    config.update(tokenizer_class="RemoteTokenizer",
                  auto_map={"AutoTokenizer": [None, "remote_tokenizer.RemoteTokenizer"]})
    settings.write_text(json.dumps(config))
    return model_dir


def test_distily_eval_loads_the_teachers_tokenizer_with_trust_remote_code(tokenizer, tmp_path, capsys):
    """The teacher's tokenizer used to be loaded without trust_remote_code: a teacher with its own tokenizer code got
    the plain one, refused as another tokenizer than the model's, though --trust_remote_code true was given."""
    student = _with_remote_code_tokenizer(save_tiny_model(tmp_path / "student", "gpt2", tokenizer, seed=1, layers=2))
    teacher = _with_remote_code_tokenizer(save_tiny_model(tmp_path / "teacher", "gpt2", tokenizer, layers=2))
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(30, seed=5))
    assert main([
        "eval", student, "--teacher_model_name_or_path", teacher, "--trust_remote_code", "true",
        "--eval_datasets", json.dumps({"recent": recent}), "--max_seq_length", "32", "--max_eval_samples", "8",
        "--tokenization_cache_dir", str(tmp_path / "cache"),
    ]) == 0
    assert "| recent: top-1 agreement with the teacher | — |" in capsys.readouterr().out


def test_distily_eval_gives_its_chat_template_to_lm_evals_chat_prompts(tokenizer, tmp_path, monkeypatch, capsys):
    """A model whose tokenizer has no chat template: lm_eval_apply_chat_template is refused in one line, and
    runs with the template --chat_template gives."""
    import distily.commands.eval as eval_command

    student = save_tiny_model(tmp_path / "student", "gpt2", tokenizer, seed=1, layers=2)
    template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    seen = []
    monkeypatch.setattr(eval_command, "run_tasks", lambda model, tok, *args: seen.append(tok.chat_template) or {})
    monkeypatch.setattr(eval_command, "task_manager", lambda evaluation: object())
    arguments = ["eval", student, "--lm_eval_tasks", "hellaswag", "--lm_eval_apply_chat_template", "true",
                 "--max_seq_length", "32", "--tokenization_cache_dir", str(tmp_path / "cache")]
    assert main(arguments) != 0
    assert "lm_eval_apply_chat_template=true, but the tokenizer" in capsys.readouterr().err and seen == []
    assert main(arguments + ["--chat_template", template]) == 0
    assert seen == [template]


def test_distily_eval_renders_lm_evals_chat_prompts_with_its_chat_template_date(tokenizer, tmp_path, monkeypatch,
                                                                               capsys):
    """A dated template's prompts take --chat_template_date (a student's run's, to evaluate it as it was trained),
    else today; a value that is not a date is refused in one line."""
    import distily.commands.eval as eval_command

    student = save_tiny_model(tmp_path / "student", "gpt2", tokenizer, seed=1, layers=2)
    dates = []
    monkeypatch.setattr(eval_command, "run_tasks", lambda *args: dates.append(args[-1]) or {})
    monkeypatch.setattr(eval_command, "task_manager", lambda evaluation: object())
    monkeypatch.setattr(chat, "today", lambda: "2024-07-27")
    arguments = ["eval", student, "--lm_eval_tasks", "hellaswag", "--lm_eval_apply_chat_template", "true",
                 "--chat_template", "{{ strftime_now('%d %b %Y') }}", "--max_seq_length", "32"]
    assert main(arguments) == 0 and main(arguments + ["--chat_template_date", "2024-07-26"]) == 0
    assert dates == ["2024-07-27", "2024-07-26"]
    assert main(arguments + ["--chat_template_date", "26/07/2024"]) == 2
    assert "chat_template_date='26/07/2024' is not a date; expected YYYY-MM-DD" in capsys.readouterr().err


def test_distily_eval_never_replaces_a_runs_own_results(teacher_dirs, tokenizer, tmp_path, capsys):
    """eval --output_dir RUN_DIR wrote over the run's results.md; it now refuses before evaluating, and replaces only
    an earlier evaluation's files."""
    student = save_tiny_model(tmp_path / "student", "gpt2", tokenizer, seed=1, layers=2)
    (Path(student) / "results.md").write_text("the run's own results\n")
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(10, seed=5))
    arguments = ["--eval_datasets", json.dumps({"recent": recent}), "--max_seq_length", "32", "--max_eval_samples",
                 "4", "--tokenization_cache_dir", str(tmp_path / "cache")]
    assert main(["eval", student, *arguments, "--output_dir", student]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"output_dir '{student}' holds results.md, which no earlier distily eval wrote (a training run's?); expected "
        f"a new folder, e.g. '{Path(student) / 'eval'}', or an earlier evaluation's")
    assert (Path(student) / "results.md").read_text() == "the run's own results\n"
    for _ in range(2):  # an earlier evaluation's folder is replaced
        assert main(["eval", student, *arguments, "--output_dir", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "results.md").read_text().startswith("| metric |")


def test_distily_eval_leaves_no_plot_of_an_earlier_evaluation(tokenizer, tmp_path, monkeypatch, capsys):
    """An evaluation that draws no plot (its lm-eval task reported no number) used to leave the earlier evaluation's
    teacher_vs_student.png beside its own results."""
    import distily.commands.eval as eval_command

    student = save_tiny_model(tmp_path / "student", "gpt2", tokenizer, seed=1, layers=2)
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(10, seed=5))
    arguments = ["--max_seq_length", "32", "--max_eval_samples", "4", "--tokenization_cache_dir",
                 str(tmp_path / "cache"), "--output_dir", str(tmp_path / "eval")]
    assert main(["eval", student, "--eval_datasets", json.dumps({"recent": recent}), *arguments]) == 0
    assert (tmp_path / "eval" / "teacher_vs_student.png").is_file()
    monkeypatch.setattr(eval_command, "run_tasks", lambda *args: {})
    monkeypatch.setattr(eval_command, "task_manager", lambda evaluation: object())
    capsys.readouterr()
    assert main(["eval", student, "--lm_eval_tasks", "hellaswag", *arguments]) == 0
    assert sorted(path.name for path in (tmp_path / "eval").iterdir()) == ["eval.json", "results.md"]
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote eval.json, results.md to {tmp_path / 'eval'}"
