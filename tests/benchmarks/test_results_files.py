"""What the benchmarks write: their command and the machine with its load average, and what they measured."""

import importlib
import json
import sys
from pathlib import Path

import pytest

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


def test_loss_slices_times_a_slice_smaller_than_one_token_as_one_token_as_its_json_says(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path))

    payload = importlib.import_module("loss_slices").main(
        ["--tokens", "4", "--hidden", "8", "--vocabs", "2048", "--exponents", "10", "--runs", "1", "--precision",
         "fp32"])  # 2**10 logits: half a token of 2048

    result = payload["results"]["2048_fp32"]
    assert result["tokens_per_slice"]["10"] == 1 and result["median_seconds"]["10"] > 0


@pytest.mark.parametrize("benchmark", ["training_speed", "hardware_efficiency", "real_vocab", "on_policy_trl"])
def test_a_smoke_run_never_writes_over_the_measured_results(benchmark, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", "")  # as in a shell that never set it
    common = importlib.import_module("common")

    importlib.import_module(benchmark).parse_arguments(["--quick"])

    assert common.results_path(benchmark).parent == common.QUICK_RESULTS_DIR != common.RESULTS_DIR
