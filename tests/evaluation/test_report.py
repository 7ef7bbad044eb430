"""The side-by-side table and the plots: valid PNGs, drawn from a log history and metrics.json."""

from types import SimpleNamespace

import pytest
from PIL import Image

from distily.config import parse_config
from distily.data.tokenization_cache import tokenizer_fingerprint
from distily.objectives.objective import build_objective
from distily.reporting.plots import comparison_keys, plot_comparison, plot_eval_metrics, plot_losses
from distily.reporting.run import PLOTS_DIR, TENSORBOARD_RESULTS_DIR, write_reports, write_tensorboard
from distily.reporting.tables import markdown_table, row_keys, run_columns
from tiny import make_sentencepiece_tokenizer, make_tokenizer, tiny_config

LOG_HISTORY = [
    {"step": 10, "loss": 1.0, "loss_logits": 0.8, "loss_hidden_states": 0.4},
    {"step": 20, "eval_loss": 0.9, "eval_loss_logits": 0.7, "eval_perplexity": 12.0, "eval_recent_perplexity": 14.0,
     "eval_runtime": 1.0},
    {"step": 20, "loss": 0.7, "loss_logits": 0.6, "loss_hidden_states": 0.2},
]


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()


def test_plots_are_valid_pngs(tmp_path, run_metrics):
    metrics = run_metrics()
    for draw, path in (
        (lambda p: plot_losses(LOG_HISTORY, p), tmp_path / "losses.png"),
        (lambda p: plot_eval_metrics(LOG_HISTORY, metrics, p), tmp_path / "eval_metrics.png"),
        (lambda p: plot_comparison(run_columns(metrics), p), tmp_path / "teacher_vs_student.png"),
    ):
        assert draw(path) == path
        assert_png(path)
    assert plot_losses([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_the_comparison_plot_follows_the_tables_order_bits_per_byte_first_across_tokenizers(run_metrics):
    columns = run_columns(run_metrics())
    for differ in (False, True):
        table_order = [key for key in row_keys(columns, differ) if key in comparison_keys(columns, differ)]
        assert comparison_keys(columns, differ) == table_order
    assert comparison_keys(columns, True)[0].endswith("bits_per_byte")
    assert not comparison_keys(columns, False)[0].endswith("bits_per_byte")


def test_the_table_puts_teacher_and_student_side_by_side(run_metrics):
    table = markdown_table(run_columns(run_metrics()))
    lines = table.splitlines()
    assert lines[0] == "| metric | teacher | student (before) | student (after) |"
    assert "| recent: perplexity | 9.50 | — | 12.25 |" in lines
    assert "| hellaswag: acc (n=100) | 0.4100 ± 0.0100 | — | 0.3300 ± 0.0100 |" in lines
    assert "| parameters | 400,000 | — | 200,000 |" in lines


def test_bits_per_byte_lead_the_table_when_the_tokenizers_differ():
    """Per-token loss and perplexity do not compare a byte-level BPE teacher with a SentencePiece student."""
    columns = {
        "teacher": {"lm_loss": 2.0, "perplexity": 7.39, "bits_per_byte": 1.2, "nats_per_byte": 0.83,
                    "recent_perplexity": 9.5, "recent_bits_per_byte": 1.25, "parameters": 400_000},
        "student": {"loss": 0.3, "lm_loss": 1.5, "perplexity": 4.48, "bits_per_byte": 1.3, "nats_per_byte": 0.9,
                    "kl_to_teacher": 0.2, "recent_perplexity": 5.0, "recent_bits_per_byte": 1.35, "parameters": 9},
    }
    same = [make_tokenizer(), make_tokenizer()]
    differ = [make_tokenizer(), make_sentencepiece_tokenizer()]
    for tokenizers, expected in (
        (same, ["loss", "lm_loss", "perplexity", "bits_per_byte", "nats_per_byte", "kl_to_teacher",
                "recent_perplexity", "recent_bits_per_byte", "parameters"]),
        (differ, ["bits_per_byte", "nats_per_byte", "recent_bits_per_byte", "loss", "lm_loss", "perplexity",
                  "kl_to_teacher", "recent_perplexity", "parameters"]),
    ):
        tokenizers_differ = len({tokenizer_fingerprint(tokenizer) for tokenizer in tokenizers}) > 1
        assert row_keys(columns, tokenizers_differ) == expected
        rows = markdown_table(columns, tokenizers_differ).splitlines()[2:]
        assert rows[0].startswith("| heldout: bits per byte (UTF-8) | 1.2000 | 1.3000 |") == tokenizers_differ



def test_the_plots_and_tensorboard_results_are_this_runs_alone(tmp_path, run_metrics):
    """A run that replaced another (overwritten) left the replaced run's plot that it did not draw itself in
    ``plots/``, pushed to the Hub beside the new card, and wrote its final scalars beside the replaced run's in
    ``runs/results``, where TensorBoard drew one line through both (a tiny run overwritten with more steps gave
    [(4, 951.28), (6, 939.43)]; overwritten with max_steps=1, which logs no training loss, it kept the old
    losses.png)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = parse_config(teacher_model_name_or_path="gpt2", dataset_name="data.jsonl", report_to="tensorboard",
                          output_dir=str(tmp_path / "run"))
    objective = build_objective(config.objective, tiny_config("llama"), tiny_config("llama", layers=2), 320)
    run = tmp_path / "run"
    (run / PLOTS_DIR).mkdir(parents=True)
    (run / PLOTS_DIR / "losses.png").write_bytes(b"the replaced run's")
    write_tensorboard({"student (after)": {"perplexity": 951.28}}, run / TENSORBOARD_RESULTS_DIR, step=4)
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[]), model_card=None, create_model_card=lambda: None)
    metrics = run_metrics()  # after 100 steps
    write_reports(trainer, config, metrics, objective)
    assert sorted(path.name for path in (run / PLOTS_DIR).iterdir()) == ["eval_metrics.png", "teacher_vs_student.png"]
    assert "losses.png" not in (run / "results.md").read_text()
    events = EventAccumulator(str(run / TENSORBOARD_RESULTS_DIR))
    events.Reload()
    points = [(event.step, event.value) for event in events.Scalars("results/perplexity/student (after)")]
    assert points == [(100, pytest.approx(metrics.student.after.perplexity))]
