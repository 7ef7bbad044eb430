"""Smoke runs of the real-vocabulary benchmarks at tiny shapes: they run end to end on CPU and write the ratios they
are read for (the measured numbers come from the lead's runs on an idle machine)."""

import importlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmark(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path / "results"))

    def run(name: str, *arguments: str) -> dict:
        importlib.import_module(name).main(list(arguments))
        return json.loads((tmp_path / "results" / f"{name}.json").read_text())

    return run


def test_the_fused_loss_takes_the_full_logits_value_and_less_memory_and_names_why_liger_is_left_out(benchmark):
    results = benchmark("fused_loss_memory", "--tokens", "4096", "--vocab", "8192", "--hidden", "32", "--runs", "1",
                        "--steps", "1", "--dtype", "fp32")
    assert results["distily_kl_loss_rel_err"] < 1e-5
    assert results["distily_kl_over_naive_kl_peak_memory"] < 0.6  # [4096, 8192] fp32 tensors: fresh pages each
    assert "no GPU" in results["liger_skipped"] and "liger_jsd" not in results["medians"]


@pytest.mark.slow
def test_real_vocab_quick_trains_live_and_recorded_and_counts_flops(benchmark, tmp_path):
    results = benchmark("real_vocab", "--quick", "--shapes", "qwen2", "--cases", "distily", "distily_recorded",
                        "flops", "allocator", "--workdir", str(tmp_path / "work"))
    fp32 = results["qwen2"]["fp32"]
    assert results["qwen2"]["vocab"] == 1536 and results["qwen2"]["arch"] == "qwen2"
    for name in ("distily", "distily_recorded"):
        assert fp32["medians"][name]["tokens_per_second"] > 0 and fp32["medians"][name]["peak_extra_bytes"] > 0
    for key in ("recorded_over_live_tokens_per_second", "recorded_over_live_peak_memory",
                "recorded_over_live_allocated_peak_memory", "distily_step_over_fp32_matmul_peak"):
        assert math.isfinite(fp32["ratios"][key]) and fp32["ratios"][key] > 0, key
    assert fp32["distily_step"]["flops_per_step"] > 0
    (student_dir,) = (tmp_path / "work").glob("*/student")
    student_bytes = sum(p.numel() * 4 for p in AutoModelForCausalLM.from_pretrained(student_dir).parameters())
    for name in ("distily", "distily_recorded"):  # at least the gradients and AdamW's two states, all fp32
        assert fp32["allocated_peaks"][name]["allocated_peak_extra_bytes"] >= 3 * student_bytes


def test_asking_for_trl_where_it_is_not_installed_is_an_error_and_the_default_leaves_it_out(tmp_path, monkeypatch,
                                                                                             capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path))  # where --quick would send results
    find_spec = importlib.util.find_spec

    def without_trl(name, *args):
        return None if name == "trl" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_trl)
    real_vocab = importlib.import_module("real_vocab")

    assert "trl" not in real_vocab.parse_arguments(["--quick"]).cases
    with pytest.raises(SystemExit) as error:  # the GPU check's comparison, not left out without a word
        real_vocab.parse_arguments(["--quick", "--cases", "distily", "trl"])
    assert error.value.code == 2 and "--cases trl needs TRL" in capsys.readouterr().err
