"""The ``distily`` command: parses, dispatches, and turns user errors into one line and exit code 2."""

import shlex
import sys
from typing import Callable, Optional

from distily.errors import DistilyConfigError

USAGE = """usage: distily COMMAND [ARGS] [--debug]

commands:
  distill CONFIG.yaml [--key value ...]   distill a teacher into a student (see `distily distill --help`)
  demo [--output_dir DIR]                 offline demo: distill the bundled teacher on Python's own docs

--debug shows the full traceback of an error instead of one line."""


def _distill(args: list[str], command_line: str) -> int:
    from distily.config import make_parser, parse_config
    from distily.training.distill import run_distillation

    if "-h" in args or "--help" in args:
        make_parser().print_help()
        return 0
    config_path = args[0] if args and not args[0].startswith("-") else None
    flags = args[1:] if config_path else args
    run_distillation(parse_config(config_path, flags), command=command_line)
    return 0


def _demo(args: list[str], command_line: str) -> int:
    import argparse

    from distily.demo.run import run_demo

    parser = argparse.ArgumentParser(prog="distily demo", description="Offline demo on the bundled teacher.")
    parser.add_argument("--output_dir", default="distily-demo", help="where the demo run is written")
    parser.add_argument("--max_steps", type=int, default=None, help="training steps (default: the demo's own)")
    options = parser.parse_args(args)
    run_demo(options.output_dir, max_steps=options.max_steps)
    return 0


COMMANDS: dict[str, Callable[[list[str], str], int]] = {"distill": _distill, "demo": _demo}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"distily: error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](args, shlex.join(["distily", *argv]))
    except DistilyConfigError as err:
        if debug:
            raise
        print(f"distily {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
