"""The ``distily`` command: parses, dispatches, and turns user errors into one line and exit code 2 (Ctrl-C: one
line and 130)."""

import argparse
import logging
import shlex
import sys
from typing import Callable, Optional

from distily import __version__
from distily.errors import DistilyConfigError

USAGE = """usage: distily COMMAND [ARGS] [--debug]

commands:
  distill CONFIG.yaml [--key value ...]   distill a teacher into a student (see `distily distill --help`)
  record CONFIG.yaml [--key value ...]    run the teacher once and store its top-k outputs (teacher_store)
  generate CONFIG.yaml [--key value ...]  sample synthetic text from the teacher (generate_output)
  sweep SWEEP.yaml [--key value ...]      run a grid, a list of runs or a layer search (docs/experiments.md)
  eval MODEL [--teacher_model_name_or_path T] [--key value ...]
                                          perplexity sets, agreement, lm-eval tasks (see `distily eval --help`)
  export RUN_DIR --format packed|gguf [--output PATH] [--overwrite]
                                          export a BitNet student (2-bit packed checkpoint or GGUF) and verify it
  demo [--output_dir DIR]                 offline demo: distill the bundled teacher on Python's own docs

record and generate read the same config as distill (output_dir is not needed); see docs/recording.md.

--debug shows the full traceback of an error instead of one line; --version prints the version."""


def _config(args: list[str], prog: str, **defaults):
    """The config from a file (the first argument, unless a flag) and flags; None after printing help."""
    from distily.config import make_parser, parse_config

    if "-h" in args or "--help" in args:
        make_parser(prog).print_help()
        return None
    config_path = args[0] if args and not args[0].startswith("-") else None
    flags = args[1:] if config_path else args
    return parse_config(config_path, flags, defaults=defaults)


def _distill(args: list[str], command_line: str) -> int:
    from distily.training.distill import run_distillation

    config = _config(args, "distily distill")
    if config is not None:
        run_distillation(config, command=command_line)
    return 0


def _record(args: list[str], command_line: str) -> int:
    from rich.console import Console

    from distily.recording.run import run_recording, summary_table

    config = _config(args, "distily record", output_dir=".")  # record writes only teacher_store
    if config is not None:
        Console().print(summary_table(run_recording(config)))
    return 0


def _generate(args: list[str], command_line: str) -> int:
    from rich.console import Console

    from distily.recording.generate import run_generation
    from distily.recording.run import summary_table

    config = _config(args, "distily generate", output_dir=".")  # generate writes generate_output (teacher_store)
    if config is not None:
        result = run_generation(config)
        print(f"wrote {result['samples']} samples ({result['tokens']} tokens) to {result['generate_output']}")
        if "manifest" in result:
            Console().print(summary_table(result["manifest"]))
    return 0


def _sweep(args: list[str], command_line: str) -> int:
    """Exit status 1 when a run failed (the others still ran)."""
    from distily.experiments import sweep_file
    from distily.experiments.results import print_ranking
    from distily.experiments.sweep import run_sweep

    if not args or args[0] in ("-h", "--help"):
        print(f"usage: distily sweep SWEEP.yaml [--output_dir DIR] [--key value ...]\n\n{sweep_file.__doc__}")
        return 0
    sweep = sweep_file.load_sweep(args[0], args[1:])
    rows = run_sweep(sweep)
    print_ranking(sweep, rows)
    return int(any(row["status"] == "failed" for row in rows))


def _eval(args: list[str], command_line: str) -> int:
    from distily.config import make_eval_parser, parse_eval_config
    from distily.evaluation.command import run_evaluation

    if "-h" in args or "--help" in args:
        make_eval_parser().print_help()
        return 0
    flags = ["--model_name_or_path", *args] if args and not args[0].startswith("-") else args
    print(run_evaluation(*parse_eval_config(flags))["table"], end="")
    return 0


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one-line ``DistilyConfigError``s."""

    def error(self, message):
        raise DistilyConfigError(message)


def _export(args: list[str], command_line: str) -> int:
    from distily.export.api import EXPORT_FORMATS, export_run
    from distily.export.report import read_export_report

    parser = _ArgumentParser(
        prog="distily export", description="Export a BitNet student and verify what was written."
    )
    parser.add_argument("run_dir", help="a run's output_dir (or any saved BitNet student)")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(EXPORT_FORMATS)}")
    parser.add_argument("--output", default=None, help="where to write (default: inside RUN_DIR)")
    parser.add_argument("--gguf_type", default="TQ2_0", help="GGUF ternary type: TQ2_0 or TQ1_0")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output, if it is a previous export of this format (never the run "
                             "directory, the current directory or a directory containing them)")
    options = parser.parse_args(args)
    path = export_run(options.run_dir, options.format, options.output, qtype=options.gguf_type, overwrite=options.overwrite)
    print(read_export_report(path).line(path))  # says which checks did not run, if any
    return 0


def _demo(args: list[str], command_line: str) -> int:
    from distily.demo.run import run_demo

    parser = _ArgumentParser(prog="distily demo", description="Offline demo on the bundled teacher.")
    parser.add_argument("--output_dir", default="distily-demo", help="where the demo run is written")
    parser.add_argument("--max_steps", type=int, default=None, help="training steps (default: the demo's own)")
    options = parser.parse_args(args)
    run_demo(options.output_dir, max_steps=options.max_steps)
    return 0


COMMANDS: dict[str, Callable[[list[str], str], int]] = {
    "distill": _distill,
    "record": _record,
    "generate": _generate,
    "sweep": _sweep,
    "eval": _eval,
    "export": _export,
    "demo": _demo,
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(f"distily {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"distily: error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("distily").setLevel(logging.INFO)
    try:
        return COMMANDS[command](args, shlex.join(["distily", *argv]))
    except DistilyConfigError as err:
        if debug:
            raise
        print(f"distily {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line (a run's says how to resume), 128 + SIGINT
        if debug:
            raise
        print(f"distily {command}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
