"""``distily distill CONFIG.yaml [--key value ...]``: distill a teacher into a student (distily.training.distill)."""

from accelerate import PartialState

from distily.config import DistillConfig, config_from_command_line
from distily.metrics import RunMetrics
from distily.reporting.model_card import results_table
from distily.reporting.run import REPORT_FILE
from distily.training.distill import run_distillation


def main(args: list[str], command_line: str) -> int:
    config = config_from_command_line(DistillConfig, args)
    if config is not None:
        metrics = RunMetrics.from_dict(run_distillation(config, command=command_line))
        if PartialState().is_main_process:  # the process that wrote them
            print(results_table(metrics))
            print(f"The student, its model card (README.md), {REPORT_FILE}, plots and metrics.json are in "
                  f"{config.training.output_dir}")
    return 0
