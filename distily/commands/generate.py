"""``distily generate CONFIG.yaml [--key value ...]``: sample synthetic text from the teacher, or its responses to
prompts (distily.recording.generate), and with ``generate_record`` record the teacher over what it wrote."""

from rich.console import Console

from distily.commands.record import summary_table
from distily.config import GenerateConfig, config_from_command_line
from distily.recording.generate import run_generation


def main(args: list[str], command_line: str) -> int:
    config = config_from_command_line(GenerateConfig, args)
    if config is not None:
        result = run_generation(config)
        if result.get("resumed"):
            print(f"resumed the recording of {result['generate_output']}, which a stopped run wrote")
        elif "conversations" in result:
            print(f"wrote {result['conversations']} conversations with the teacher's responses to "
                  f"{result['generate_output']} (dropped: {result['empty_dropped']} empty responses, "
                  f"{result['unfinished_dropped']} without a stop token)")
            if "chat_template_date" in result:
                print(f"the chat template dated the prompts {result['chat_template_date']}: distill with "
                      f"chat_template_date={result['chat_template_date']} to frame them as the teacher answered them")
        else:
            print(f"wrote {result['samples']} samples ({result['tokens']} tokens) to {result['generate_output']}")
        if "manifest" in result:
            Console().print(summary_table(result["manifest"]))
    return 0
