"""The benchmark harness's quick path: training_speed trains with every trainer on a tiny model and reports
finite speed and memory (TRL's GKD trainer only where the ``bench`` extra is installed)."""

import importlib
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        patch.setenv("DISTILY_BENCH_RESULTS_DIR", str(results_dir))  # restored after the run
        importlib.import_module("run_all").main(["--quick", "--only", "training_speed", "--results_dir",
                                                 str(results_dir)])
    return json.loads((results_dir / "training_speed.json").read_text())["fp32"]


def _check_trainer(results: dict, trainer: str) -> None:
    median = results["medians"][trainer]
    assert math.isfinite(median["tokens_per_second"]) and median["tokens_per_second"] > 0
    assert median["peak_extra_bytes"] > 0 and median["process_peak_bytes"] > median["peak_extra_bytes"]
    assert math.isfinite(median["first_loss"]) and median["first_loss"] > 0


def test_distily_and_the_plain_loop_report_finite_speed_and_memory(quick_results):
    for trainer in ("distily", "plain"):
        _check_trainer(quick_results, trainer)
    assert math.isfinite(quick_results["ratios"]["distily_over_plain_tokens_per_second"])


def test_trl_reports_finite_speed_and_memory_and_the_same_loss(quick_results):
    pytest.importorskip("trl")
    _check_trainer(quick_results, "trl")
    ratios = quick_results["ratios"]
    assert math.isfinite(ratios["distily_over_trl_tokens_per_second"])
    assert math.isfinite(ratios["distily_over_trl_peak_memory"])
    # the same models, data and forward KL: the first step's loss agrees (TRL leaves out each sequence's last
    # position, and the trainers draw their first batch alike)
    distily_loss, trl_loss = (quick_results["medians"][name]["first_loss"] for name in ("distily", "trl"))
    assert trl_loss == pytest.approx(distily_loss, rel=0.1)


def test_allocator_compares_the_trainers_at_pytorchs_allocator(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("DISTILY_BENCH_RESULTS_DIR", str(tmp_path / "results"))

    payload = importlib.import_module("training_speed").main(
        ["--quick", "--allocator", "--trainers", "distily", "plain", "--workdir", str(tmp_path / "work")])

    medians, ratios = payload["fp32"]["medians"], payload["fp32"]["ratios"]
    distily, plain = (medians[name]["allocated_peak_extra_bytes"] for name in ("distily", "plain"))
    assert distily > 0 and plain > 0  # at least the gradients and AdamW's states
    assert ratios["distily_over_plain_allocated_peak_memory"] == pytest.approx(distily / plain)
    assert "distily_over_plain_tokens_per_second" not in ratios  # the profiler slows the runs: they are not timed
