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


def test_bitnet_export_writes_the_ratios_its_table_prints_named_for_what_they_compare(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path))

    importlib.import_module("bitnet_export").main(  # rows of 256: what TQ2_0 packs
        ["--hidden", "256", "--intermediate", "256", "--layers", "1", "--heads", "4", "--vocab", "1024", "--tokens",
         "2", "--runs", "1", "--threads", "1"])

    results = json.loads((tmp_path / "bitnet_export.json").read_text())
    sizes, ratios = results["bytes"], results["ratios"]
    for name in ("packed", "gguf_TQ2_0", "gguf_TQ1_0"):
        assert ratios[f"{name}_over_hf_fp32_bytes"] == sizes[name] / sizes["hf_fp32"] < 1
    assert ratios["packed_linear_weights_over_fp16_linear_weights_bytes"] == pytest.approx(2 / 16, rel=0.01)
    for name, speed in results["tokens_per_second"].items():  # llama.cpp's where llama-cpp-python is installed
        if name != "hf_fp32":
            assert ratios[f"{name}_over_hf_fp32_tokens_per_second"] == speed / results["tokens_per_second"]["hf_fp32"]


def test_on_policy_trl_judges_exact_match_within_noise_only_on_two_rounds_or_more(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    summarise = importlib.import_module("on_policy_trl").summarise

    def run(exact_match: float) -> dict:
        return {"wall_seconds": 1.0, "process_peak_bytes": 2**20, "exact_match": exact_match, "kl_to_teacher": 0.1}

    one_round = summarise({"distily": [run(40.0)], "trl": [run(50.0)]})
    json.dumps(one_round, allow_nan=False)  # valid JSON: no infinite standard error
    assert "exact_match_within_noise_or_better" not in one_round["goals"]
    assert "paired_distily_minus_trl_exact_match_points_standard_error" not in one_round["ratios"]

    two_rounds = summarise({"distily": [run(40.0), run(60.0)], "trl": [run(50.0), run(50.0)]})  # pairs -10, +10
    assert two_rounds["ratios"]["paired_distily_minus_trl_exact_match_points_standard_error"] == pytest.approx(10.0)
    assert two_rounds["goals"]["exact_match_within_noise_or_better"]
