"""``distily generate CONFIG.yaml [--key value ...]``: sample synthetic text from the teacher
(distily.recording.generate), and with ``generate_record`` record the teacher over it."""

from rich.console import Console

from distily.commands.record import summary_table
from distily.config import GenerateConfig, config_from_command_line
from distily.recording.generate import run_generation


def main(args: list[str], command_line: str) -> int:
    config = config_from_command_line(GenerateConfig, args)
    if config is not None:
        result = run_generation(config)
        print(f"wrote {result['samples']} samples ({result['tokens']} tokens) to {result['generate_output']}")
        if "manifest" in result:
            Console().print(summary_table(result["manifest"]))
    return 0
