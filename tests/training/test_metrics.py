"""``RunMetrics`` reads a real run's metrics.json and writes it back unchanged (same keys, nesting, types and
values), for a live teacher with a named eval set and for a recorded one without a token count."""

import json
from pathlib import Path

from distily.config import parse_config, parse_record_config
from distily.metrics import RunMetrics
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir
from store_values import store_values
from tiny import make_documents, write_jsonl


def _round_trip(returned: dict, output_dir: str) -> RunMetrics:
    """The typed metrics of the run in ``output_dir``, after checking they write back as its metrics.json."""
    written = json.loads(RunDir(output_dir).metrics.read_text())
    metrics = RunDir(output_dir).read_metrics()
    assert json.dumps(metrics.to_dict(), sort_keys=True) == json.dumps(written, sort_keys=True)  # 1.0 is not 1
    assert json.loads(json.dumps(returned)) == written  # run_distillation returns what it wrote
    return metrics


def test_a_live_teachers_metrics_round_trip(teacher_dirs, run_values, tmp_path):
    recent = write_jsonl(tmp_path / "recent.jsonl", make_documents(30, seed=5))
    values = run_values(teacher_dirs["llama"], eval_datasets={"recent": {"path": recent, "max_samples": 8}},
                        max_steps=2)
    metrics = _round_trip(run_distillation(parse_config(**values), command="distily distill run.yaml"),
                          values["output_dir"])
    teacher, student = metrics.teacher, metrics.student
    assert teacher.recording is None and teacher.memory_bytes > 0
    assert teacher.evaluation.get("perplexity", "recent") == teacher.evaluation.values["recent_perplexity"] > 1
    assert student.after.get("top1_agreement", "recent") == student.evaluations["after_recent_top1_agreement"]
    assert student.before.loss == student.evaluations["before_loss"] == 0.0  # the student starts as the teacher
    # the evaluations' own figures alone: the Trainer's log added its epoch and token count, which train holds
    assert all(key.startswith(("before_", "after_")) for key in student.evaluations), sorted(student.evaluations)
    assert metrics.train.trainer["epoch"] > 0
    assert metrics.train.global_step == 2 and metrics.train.tokens_seen == 2 * 4 * 32
    assert metrics.eval_sets["recent"].sequences == 8 and metrics.eval_sets["recent"].path == recent
    assert set(metrics.eval_overlap) == {"heldout", "recent"}
    assert metrics.framing.teacher_lm_loss_packed is not None and metrics.command == "distily distill run.yaml"


def test_the_students_evaluation_of_the_best_checkpoint_holds_its_own_figures_alone(teacher_dirs, run_values):
    """With load_best_model_at_end the student's evaluation after training is the Trainer's under after_, to which
    its log added the epoch and the token count, written into metrics.json's student."""
    values = run_values(teacher_dirs["llama"], max_steps=2, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                        save_steps=1, load_best_model_at_end=True, metric_for_best_model="loss")
    student = run_distillation(parse_config(**values))["student"]
    assert "after_loss" in student and not {"epoch", "num_input_tokens_seen"} & set(student)


def test_a_recorded_teachers_metrics_round_trip(teacher_dirs, text_file, tmp_path):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, max_steps=2,
                          include_num_input_tokens_seen="no")
    run_recording(parse_record_config(**values))
    run = {**values, "output_dir": str(tmp_path / "recorded"), "teacher_source": "recorded"}
    metrics = _round_trip(run_distillation(parse_config(**run)), run["output_dir"])
    written = json.loads(Path(run["output_dir"], RunDir.METRICS).read_text())
    assert "memory_bytes" not in written["teacher"] and "tokens_seen" not in written["train"]
    assert metrics.teacher.memory_bytes is None and metrics.train.tokens_seen is None
    recording = metrics.teacher.recording
    assert (recording.record_top_k, recording.teacher_store) == (16, values["teacher_store"])
    assert metrics.teacher.model_name_or_path == teacher_dirs["llama"]
    assert metrics.teacher.evaluation.perplexity > 1 and metrics.command is None
    assert metrics.eval_sets == {} and metrics.framing.teacher_lm_loss_packed is None
