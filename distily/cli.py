"""The ``distily`` command: finds the command (each a module of ``distily.commands``, imported on use), hands it
the arguments, and turns user errors into one line and exit code 2 (Ctrl-C: one line and 130; a stop signal,
SIGTERM or SIGUSR1: one line and 128 + its number)."""

import importlib
import logging
import shlex
import sys
from typing import Optional

from distily import __version__
from distily.errors import DistilyConfigError, RunInterrupted
from distily.logs import close_progress_bars

USAGE = """usage: distily COMMAND [ARGS] [--debug]

commands:
  distill CONFIG.yaml [--key value ...]   distill a teacher into a student (see `distily distill --help`)
  record CONFIG.yaml [--key value ...]    run the teacher once and store its top-k outputs (teacher_store)
  generate CONFIG.yaml [--key value ...]  sample synthetic text from the teacher (generate_output)
  sweep SWEEP.yaml [--key value ...]      run a grid, a list of runs or a layer search (docs/experiments.md)
  eval MODEL [--teacher_model_name_or_path T] [--key value ...]
                                          perplexity sets, agreement, lm-eval tasks (see `distily eval --help`)
  export RUN_DIR --format packed|gguf [--output PATH] [--gguf_type TQ2_0|TQ1_0] [--overwrite]
                                          export a BitNet student (2-bit packed checkpoint or GGUF) and verify it
  demo [--output_dir DIR] [--max_steps N] offline demo: distill the bundled teacher on Python's own docs

record and generate read the same config file as distill, each using its own keys (see `distily record --help`,
`distily generate --help` and docs/recording.md).

--debug (no value) shows the full traceback of an error instead of one line; --version prints the version."""


COMMANDS = ("distill", "record", "generate", "sweep", "eval", "export", "demo")  # each a module of distily.commands
WITHOUT_POSITIONAL = ("demo",)  # the commands whose first argument is no file, model or run directory
DEBUG = "--debug"


def debug_value(argv: list[str]) -> Optional[str]:
    """A value given after ``--debug`` (``--debug true``), which takes none: the word after it that is neither the
    command (``distily --debug distill``) nor the command's first argument (``distily distill --debug run.yaml``)."""
    for index, arg in enumerate(argv[:-1]):
        after = argv[index + 1]
        first_argument = index == 1 and argv[0] not in WITHOUT_POSITIONAL
        if arg == DEBUG and not after.startswith("-") and index != 0 and not first_argument:
            return after
    return None


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    value = debug_value(argv)
    if value is not None:
        print(f"distily: error: --debug takes no value, got {value!r} after it; expected --debug alone (it shows an "
              "error's full traceback), or --debug=VALUE for the Trainer's debug key (`distily distill --help`)",
              file=sys.stderr)
        return 2
    debug = DEBUG in argv
    argv = [arg for arg in argv if arg != DEBUG]
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
        run = importlib.import_module(f"distily.commands.{command}").main
        return run(args, shlex.join(["distily", *argv]))
    except DistilyConfigError as err:
        close_progress_bars()  # the error starts a line of its own and is the last one: an open bar is drawn at exit
        if debug:
            raise
        print(f"distily {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # one line (a run's says how to resume), 128 + the signal's number
        close_progress_bars()  # the line starts a line of its own, not the end of the bar Ctrl-C stopped
        if debug:
            raise
        print(f"distily {command}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return RunInterrupted.of(interrupt).exit_status


if __name__ == "__main__":
    sys.exit(main())
