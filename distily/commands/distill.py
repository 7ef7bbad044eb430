"""``distily distill CONFIG.yaml [--key value ...]``: distill a teacher into a student (distily.training.distill)."""

from distily.config import DistillConfig, config_from_command_line
from distily.training.distill import run_distillation


def main(args: list[str], command_line: str) -> int:
    config = config_from_command_line(DistillConfig, args)
    if config is not None:
        run_distillation(config, command=command_line)
    return 0
