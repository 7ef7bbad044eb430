"""A finished run's ``metrics.json``, as ``run_distillation`` writes it, for the report and card tests."""

import pytest

from distily.metrics import RunMetrics

ARCHITECTURE = {"model_type": "llama", "hidden_size": 64, "attention_heads": 4, "vocab_size": 320, "dtype": "float32"}


def _run_metrics(bitnet=None) -> RunMetrics:
    """``bitnet``: the student's BitNet options (None: a dense student)."""
    return RunMetrics.from_dict({
        "distily_version": "0.1.0",
        "command": "distily distill run.yaml",
        "teacher": {
            "lm_loss": 2.0, "perplexity": 7.389, "bits_per_byte": 1.2, "nats_per_byte": 0.832, "recent_perplexity": 9.5,
            "parameters": 400_000,
            "size_on_disk_bytes": 1_600_000, "quantization": "none", "memory_bytes": 1_600_000,
            "architecture": {**ARCHITECTURE, "layers": 4, "bitnet": None},
            "lm_eval": {"hellaswag": {"acc": 0.41, "acc_stderr": 0.01, "samples": 100}},
        },
        "student": {
            "parameters": 200_000, "size_on_disk_bytes": 800_000,
            "before_loss": 1.5, "before_perplexity": 30.0, "before_top1_agreement": 0.3,
            "after_loss": 0.25, "after_lm_loss": 2.2, "after_perplexity": 9.025, "after_bits_per_byte": 1.3,
            "after_recent_bits_per_byte": 1.4, "after_kl_to_teacher": 0.25,
            "after_top1_agreement": 0.8, "after_recent_perplexity": 12.25, "after_recent_kl_to_teacher": 0.5,
            "architecture": {**ARCHITECTURE, "layers": 2, "bitnet": bitnet},
            "lm_eval": {"hellaswag": {"acc": 0.33, "acc_stderr": 0.01, "samples": 100}},
        },
        "train": {"train_runtime": 58.0, "train_loss": 0.5, "epoch": 1.0, "wall_seconds": 60.0, "global_step": 100,
                  "tokens_seen": 409_600},
        "max_seq_length": 128,
        "framing": {"packing": "stream", "teacher_lm_loss_packed": 2.0, "teacher_lm_loss_documents": 2.1},
        "train_sequences": 3200,
        "eval_sequences": 64,
        "eval_sets": {"recent": {"config": None, "split": "train", "text_column": "text", "max_samples": None,
                                 "path": "data/recent.jsonl", "sequences": 32}},
        "eval_overlap": {
            "heldout": {"sequences": 64, "overlapping_sequences": 0, "ngram": 13},
            "recent": {"sequences": 32, "overlapping_sequences": 2, "ngram": 13},
        },
    })


@pytest.fixture
def run_metrics():
    return _run_metrics
