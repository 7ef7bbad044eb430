"""Every benchmark's JSON says how it was produced: its command and the machine, with the load average beside it."""

import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_loss_memory_writes_its_command_and_the_machine_with_its_load_average(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path))
    arguments = ["--tokens", "16", "--vocab", "64", "--hidden", "8", "--runs", "1", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "loss_memory.py"), *arguments])

    importlib.import_module("loss_memory").main(arguments)

    results = json.loads((tmp_path / "loss_memory.json").read_text())
    assert results["command"] == "python benchmarks/loss_memory.py " + " ".join(arguments)
    load_average = results["machine"]["load_average_1_5_15min"]
    assert len(load_average) == 3 and all(value >= 0 for value in load_average)
    assert results["machine"]["cores"] >= 1 and results["config"]["tokens"] == 16
