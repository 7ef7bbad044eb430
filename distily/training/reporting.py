"""What a run measures besides its loss, and what it leaves for people to read.

Before training: the named eval sets, loaded like the training data, and the check that they (and the
held-out split) are disjoint from the training sequences. After training: the lm-eval benchmarks, then
in ``output_dir`` a markdown table (``results.md``), PNG plots (``plots/``), tensorboard scalars
(``runs/results``) and the model card (``README.md``, the one ``push_to_hub`` uploads).
"""

from pathlib import Path
from typing import Optional

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.config import HELDOUT_SET, DistillConfig
from distily.data.text import default_cache_dir
from distily.evaluation.harness import cached_teacher_results, run_tasks
from distily.evaluation.overlap import training_overlap
from distily.evaluation.perplexity import load_eval_sets
from distily.evaluation.report import plot_comparison, plot_eval_metrics, plot_losses, run_columns, write_tensorboard
from distily.export.modelcard import build_model_card, results_section
from distily.objectives.objective import DistillationObjective
from distily.training.trainer import DistillationTrainer

REPORT_FILE = "results.md"
PLOTS_DIR = "plots"
TENSORBOARD_RESULTS_DIR = Path("runs") / "results"


def named_eval_sets(
    config: DistillConfig, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> dict[str, datasets.Dataset]:
    cache_dir = config.data.tokenization_cache_dir or default_cache_dir()
    return load_eval_sets(
        config.evaluation.eval_datasets, tokenizer, max_seq_length, cache_dir, config.data.max_eval_samples,
        config.data.packing, config.data.text_document_delimiter,
    )


def eval_set_metrics(config: DistillConfig, eval_sets: dict[str, datasets.Dataset], train, heldout, max_seq_length):
    """``metrics.json``'s ``eval_sets`` (where each came from, how many sequences) and ``eval_overlap`` (the
    content check against the training sequences; empty when ``eval_overlap_ngram`` is 0)."""
    specs = config.evaluation.eval_datasets
    sources = {name: {**specs[name], "sequences": len(dataset)} for name, dataset in eval_sets.items()}
    n = config.evaluation.eval_overlap_ngram
    overlap = training_overlap(train, {HELDOUT_SET: heldout, **eval_sets}, n, max_seq_length) if n else {}
    return {"eval_sets": sources, "eval_overlap": overlap}


def benchmark(
    metrics: dict,
    config: DistillConfig,
    student: PreTrainedModel,
    teacher: Optional[PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    manager,
) -> None:
    """lm-eval results of the student and (from the cache when it ran before) the teacher, into ``metrics``.
    ``teacher`` is None when only its recorded outputs are at hand."""
    batch_size = config.training.per_device_eval_batch_size
    metrics["student"]["lm_eval"] = run_tasks(student, tokenizer, config.evaluation, manager, batch_size)
    if teacher is not None:
        metrics["teacher"]["lm_eval"] = cached_teacher_results(
            teacher, config.model.teacher_model_name_or_path, tokenizer, config.evaluation, manager, batch_size
        )


def write_reports(
    trainer: DistillationTrainer, config: DistillConfig, metrics: dict, objective: DistillationObjective
) -> None:
    """``results.md``, the plots, tensorboard scalars (when tensorboard is a logger) and the model card."""
    output_dir = Path(config.training.output_dir)
    (output_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    columns = run_columns(metrics)
    drawn = [
        plot_losses(trainer.state.log_history, output_dir / PLOTS_DIR / "losses.png"),
        plot_eval_metrics(trainer.state.log_history, metrics, output_dir / PLOTS_DIR / "eval_metrics.png"),
        plot_comparison(columns, output_dir / PLOTS_DIR / "teacher_vs_student.png"),
    ]
    plots = [str(path.relative_to(output_dir)) for path in drawn if path is not None]
    if "tensorboard" in config.training.report_to:
        write_tensorboard(columns, output_dir / TENSORBOARD_RESULTS_DIR, metrics["train"].get("global_step", 0))
    name = (config.training.hub_model_id or output_dir.resolve().name).split("/")[-1]
    (output_dir / REPORT_FILE).write_text(f"# {name}\n\n" + results_section(config, metrics, plots) + "\n")
    trainer.model_card = build_model_card(config, metrics, objective, name, plots)
    trainer.create_model_card()
