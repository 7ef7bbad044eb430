"""The `distily` command itself: --version and the usage text."""

import re
import subprocess
import sys
from pathlib import Path

import distily
from distily.cli import main


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
