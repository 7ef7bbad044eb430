"""The `distily` command itself: --version, the usage text, --debug and Ctrl-C."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import distily
from distily.cli import main
from distily.errors import DistilyConfigError


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"distily {distily.__version__}\n"


def test_version_is_the_one_pyproject_declares():
    declared = re.search(r'^version = "(.+)"$', (Path(__file__).parents[1] / "pyproject.toml").read_text(), re.M)
    assert declared is not None and declared.group(1) == distily.__version__


def test_version_from_the_command_line():
    completed = subprocess.run([sys.executable, "-m", "distily.cli", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stdout == f"distily {distily.__version__}\n", completed.stderr


def test_usage_lists_version_and_export_overwrite(capsys):
    assert main([]) == 0
    usage = capsys.readouterr().out
    assert "--version" in usage and "--overwrite" in usage


def test_ctrl_c_during_training_starts_its_line_after_the_progress_bar(tmp_path, teacher_dirs, run_values, capsys,
                                                                       monkeypatch):
    """The bar Ctrl-C stopped was left open: the message went on the bar's line ("... 2/6 [00:01<00:02, 1.9it/s]distily
    distill: interrupted; ..."), and the bar was drawn again after it at exit."""
    import yaml

    from distily.training.run_dir import RunDir
    from interrupts import ctrl_c_at_training_step

    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=6,
                        save_strategy="steps", save_steps=2, disable_tqdm=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    ctrl_c_at_training_step(monkeypatch, 3)
    assert main(["distill", str(config)]) == 130
    err = capsys.readouterr().err
    out = Path(values["output_dir"])
    line = f"distily distill: interrupted; the last checkpoint is '{out / 'checkpoint-2'}', resume with: "
    assert "it/s]" in err and f"\n{line}" in err and err.endswith(" --resume_from_checkpoint true\n"), err[-300:]
    assert not (out / RunDir.LOCK).exists() and not (out / RunDir.METRICS).exists()


def test_a_value_after_debug_is_one_line_and_exit_2(tmp_path, capsys):
    """`--debug true` turned the traceback on and left 'true' to the command: a traceback of "unexpected argument
    'true'" and exit 1. The command and its first argument may still follow --debug."""
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\n")
    for argv, value in (["distill", str(config), "--debug", "true"], "true"), (["demo", "--debug", "x"], "x"):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"distily: error: --debug takes no value, got {value!r} after it; expected --debug alone (it "
                       "shows an error's full traceback), or --debug=VALUE for the Trainer's debug key (`distily "
                       "distill --help`)\n")
    missing = str(tmp_path / "missing.yaml")
    for argv in (["--debug", "distill", missing], ["distill", "--debug", missing], ["distill", missing, "--debug"]):
        with pytest.raises(DistilyConfigError, match="does not exist"):
            main(argv)


def test_the_help_shows_the_trainers_debug_key_as_the_command_line_takes_it(capsys):
    """`distily distill --help` listed `--debug DEBUG [DEBUG ...]`, a form the command line refuses (a bare --debug is
    the traceback switch): only --debug=VALUE reaches the Trainer's key."""
    assert main(["distill", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert re.search(r"^  --debug=VALUE +The Trainer's debug features", help_text, re.MULTILINE)
    assert "--debug DEBUG" not in help_text


def test_a_config_file_that_is_not_yaml_names_the_problem_and_where(tmp_path, capsys):
    """The error gave the YAML error's first line alone: "is not valid YAML: while parsing a flow sequence"."""
    config = tmp_path / "run.yaml"
    for text, problem in (("max_steps: [1\n", "expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
                          ("max_steps: 3\n\tlearning_rate: 1\n",
                           "found character '\\t' that cannot start any token (line 2, column 1)")):
        config.write_text(text)
        assert main(["distill", str(config)]) == 2
        assert capsys.readouterr().err == f"distily distill: error: config file {str(config)!r} is not valid YAML: " \
                                          f"{problem}\n"


def test_an_error_during_a_progress_bar_is_the_last_line_on_a_line_of_its_own(monkeypatch, capsys):
    """An error raised while a bar was open (the evaluation before training, tokenizing) went on the bar's line, and the
    bar was drawn again after it when it closed at exit: the error was not the last thing printed."""
    from tqdm.auto import tqdm

    import distily.commands.export

    bars = []

    def failing(args, command_line):
        bars.append(tqdm(total=2, desc="Evaluating", file=sys.stderr))
        bars[0].update(1)
        raise DistilyConfigError("bad value; expected another")

    monkeypatch.setattr(distily.commands.export, "main", failing)
    assert main(["export", "run"]) == 2
    bars[0].close()  # what exit does to a bar still open
    err = capsys.readouterr().err
    assert "1/2" in err and err.endswith("\ndistily export: error: bad value; expected another\n"), err[-300:]
