"""``torch_compile`` (the Trainer's option) with the chunked loss: the student's forward and backward compiled, the
live teacher's forward too, the chunked loss run eagerly between them; a compiled run trains as the eager one does.

On CPU the test compiles with the ``aot_eager`` backend (the same graph capture and autograd tracing as inductor,
without generating C++, which takes minutes on a small machine); on a GPU (``-m cuda``) inductor compiles a bf16 run."""

import pytest

from distily.config import parse_config
from distily.training.distill import run_distillation


def compiled_and_eager(run_values, teacher_dir, tmp_path, backend: str, **overrides) -> tuple[dict, dict]:
    """The student's metrics of an eager run and of the same run compiled with ``backend``."""
    metrics = {}
    for compiled in (False, True):
        compile_options = {"torch_compile": True, "torch_compile_backend": backend} if compiled else {}
        values = run_values(teacher_dir, student_config_overrides={"num_hidden_layers": 2}, student_init="random",
                            learning_rate=3e-3, output_dir=str(tmp_path / f"run-{compiled}"), **compile_options,
                            **overrides)
        metrics[compiled] = run_distillation(parse_config(**values))["student"]
    return metrics[False], metrics[True]


def check_compiled_matches_eager(eager: dict, compiled: dict, rel: float) -> None:
    assert compiled["after_kl_to_teacher"] < compiled["before_kl_to_teacher"]  # it trains
    for key in ("before_loss", "after_loss", "after_kl_to_teacher", "after_lm_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=rel), key


@pytest.mark.slow
def test_a_compiled_run_trains_and_matches_the_eager_one(teacher_dirs, run_values, tmp_path):
    eager, compiled = compiled_and_eager(run_values, teacher_dirs["llama"], tmp_path, "aot_eager")
    check_compiled_matches_eager(eager, compiled, rel=1e-4)


@pytest.mark.cuda
def test_a_bf16_run_compiled_with_inductor_on_a_gpu_trains_and_matches_the_eager_one(teacher_dirs, run_values,
                                                                                     tmp_path):
    eager, compiled = compiled_and_eager(run_values, teacher_dirs["llama"], tmp_path, "inductor", bf16=True)
    check_compiled_matches_eager(eager, compiled, rel=2e-2)
