"""What a finished run leaves for people to read in ``output_dir``: a markdown table (``results.md``), PNG plots
(``plots/``), tensorboard scalars (``runs/results``) and the model card (``README.md``, the one ``push_to_hub``
uploads)."""

from pathlib import Path

from transformers import Trainer

from distily.config import DistillConfig
from distily.metrics import RunMetrics
from distily.objectives.objective import DistillationObjective
from distily.outputs import remove_earlier_outputs
from distily.reporting.model_card import build_model_card, results_section, tokenizers_differ
from distily.reporting.plots import plot_comparison, plot_eval_metrics, plot_losses
from distily.reporting.tables import is_number, row_keys, run_columns

REPORT_FILE = "results.md"
PLOTS_DIR = "plots"
TENSORBOARD_RESULTS_DIR = Path("runs") / "results"


def write_tensorboard(columns: dict[str, dict[str, float]], log_dir: Path, step: int) -> None:
    """Each model's final numbers as scalars ``results/<metric>/<model>`` (one chart per metric)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, values in columns.items():
            for key in row_keys(columns):
                if is_number(values.get(key)):
                    writer.add_scalar(f"results/{key}/{name}", values[key], step)


def write_reports(
    trainer: Trainer, config: DistillConfig, metrics: RunMetrics, objective: DistillationObjective
) -> None:
    """``results.md``, the plots, tensorboard scalars (when tensorboard is a logger) and the model card. The plots and
    scalars are this run's alone: those of a run it replaced (overwritten, or trained longer) are removed first."""
    output_dir = Path(config.training.output_dir)
    remove_earlier_outputs(output_dir, (PLOTS_DIR, TENSORBOARD_RESULTS_DIR))
    (output_dir / PLOTS_DIR).mkdir(parents=True)
    columns = run_columns(metrics)
    drawn = [
        plot_losses(trainer.state.log_history, output_dir / PLOTS_DIR / "losses.png"),
        plot_eval_metrics(trainer.state.log_history, metrics, output_dir / PLOTS_DIR / "eval_metrics.png"),
        plot_comparison(columns, output_dir / PLOTS_DIR / "teacher_vs_student.png", tokenizers_differ(metrics)),
    ]
    plots = [str(path.relative_to(output_dir)) for path in drawn if path is not None]
    if "tensorboard" in config.training.report_to:
        write_tensorboard(columns, output_dir / TENSORBOARD_RESULTS_DIR, metrics.train.global_step)
    name = (config.training.hub_model_id or output_dir.resolve().name).split("/")[-1]
    (output_dir / REPORT_FILE).write_text(f"# {name}\n\n" + results_section(config, metrics, plots) + "\n")
    trainer.model_card = build_model_card(config, metrics, objective, name, plots)
    trainer.create_model_card()
