"""A teacher whose outputs are not finite is named as the cause, not the student: at the evaluation before training
(its held-out loss), and by the non-finite step guard during training."""

import pytest
import torch
import yaml

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.models.finite import NonFiniteOutputs, nan_or_positive_inf
from distily.teachers.live import LiveTeacher
from distily.training.distill import run_distillation
from distily.training.guards import NonFiniteStepGuard
from distily.training.trainer import DistillationTrainer
from launch_each import launch_each
from tiny import save_float16_overflowing_llama

FLOAT16_FIX = r"teacher_torch_dtype bfloat16 or float32 \(some families, such as Gemma, overflow in float16\)"

NAN_ON_RANK_1 = """
import math, os, sys
from distily.cli import main
from distily.teachers.live import LiveTeacher
prepare = LiveTeacher.prepare
def nan_norm(module, inputs, output):
    output.fill_(math.nan)
def prepare_nan_on_rank_1(self, accelerator):
    prepare(self, accelerator)
    if os.environ["RANK"] == "1":
        self.model.model.norm.register_forward_hook(nan_norm)
LiveTeacher.prepare = prepare_nan_on_rank_1
sys.exit(main(["distill", sys.argv[1]]))
"""


def test_nan_and_positive_inf_are_flagged_and_a_masked_columns_negative_inf_is_not():
    for values, flagged in [([1.0, -float("inf")], False), ([1.0, float("nan")], True), ([1.0, float("inf")], True),
                            ([float("inf"), -float("inf")], True), ([3e38, 3e38], False)]:
        assert bool(nan_or_positive_inf(torch.tensor(values))) is flagged, values


def _guard_with_teacher() -> tuple[torch.nn.Parameter, torch.optim.Optimizer, NonFiniteOutputs]:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    teacher_outputs = NonFiniteOutputs()
    NonFiniteStepGuard(optimizer, max_consecutive=2, teacher_outputs=teacher_outputs)
    return weight, optimizer, teacher_outputs


def test_a_skipped_step_whose_teacher_outputs_were_not_finite_names_the_teacher(caplog):
    weight, optimizer, teacher_outputs = _guard_with_teacher()
    teacher_outputs.add(torch.tensor([[0.5, float("nan")]], dtype=torch.float16), torch.float16)
    weight.grad = torch.tensor([float("nan"), 0.0, 0.0])
    with caplog.at_level("WARNING"):
        optimizer.step()
    assert "skipped (1 in a row): the teacher's outputs of the step's batches hold NaN or +inf" in caplog.text
    teacher_outputs.add(torch.tensor([[0.5, float("nan")]], dtype=torch.float16), torch.float16)
    weight.grad = torch.tensor([float("nan"), 0.0, 0.0])
    with pytest.raises(DistilyConfigError, match=r"2 optimizer steps in a row had non-finite gradients "
                       r"\(max_nonfinite_steps=2\); the teacher's outputs of the step's batches hold NaN or \+inf "
                       rf"\(the teacher ran with float16 weights\); expected finite teacher outputs: {FLOAT16_FIX}"):
        optimizer.step()


def test_a_teacher_that_was_finite_in_the_step_leaves_the_student_to_blame():
    """Outputs of an earlier step are forgotten at each step taken; a masked column's -inf is no fault."""
    weight, optimizer, teacher_outputs = _guard_with_teacher()
    teacher_outputs.add(torch.tensor([float("nan")]), torch.float32)
    weight.grad = torch.ones(3)
    optimizer.step()  # taken: its teacher outputs are forgotten
    teacher_outputs.add(torch.tensor([0.5, -float("inf")]), torch.float32)
    weight.grad = torch.tensor([float("nan"), 0.0, 0.0])
    optimizer.step()
    weight.grad = torch.tensor([float("nan"), 0.0, 0.0])
    with pytest.raises(DistilyConfigError, match=r"non-finite gradients \(max_nonfinite_steps=2\); expected "
                       r"finite losses: lower learning_rate, or use bf16 instead of fp16$"):
        optimizer.step()


def test_a_teacher_under_fp16_autocast_is_told_to_use_bf16():
    outputs = NonFiniteOutputs()
    with torch.autocast("cpu", dtype=torch.float16):
        outputs.add(torch.tensor([float("inf")]), torch.float32)
    assert outputs.take() and outputs.message("its logits") == (
        "its logits hold NaN or +inf (the teacher ran under the run's fp16 autocast); expected finite teacher "
        "outputs: bf16 instead of fp16 (some families, such as Gemma, overflow in float16)")


def test_a_teacher_that_overflows_float16_stops_the_run_before_any_step(run_values, tmp_path, monkeypatch):
    """Found by review: every step skipped, then 'lower learning_rate, or use bf16 instead of fp16', the teacher never
    named. Now its NaN held-out loss in the evaluation before training stops the run in one line."""
    teacher = save_float16_overflowing_llama(tmp_path / "teacher")
    monkeypatch.setattr(DistillationTrainer, "train", lambda self, *a, **k: pytest.fail("training started"))
    values = run_values(teacher, teacher_torch_dtype="float16", student_config_overrides={"num_hidden_layers": 2})
    with pytest.raises(DistilyConfigError, match=r"^the teacher's held-out loss on eval set 'heldout' is nan: its "
                       rf"logits hold NaN or \+inf \(the teacher ran with float16 weights\); .*: {FLOAT16_FIX}$"):
        run_distillation(parse_config(**values))


def _nan_teacher_outputs_from_call(first: int, monkeypatch) -> None:
    """The live teacher's outputs NaN from its ``first``-th call on (the evaluation before training makes 2)."""
    prepare, calls = LiveTeacher.prepare, []

    def prepare_nan(self, accelerator):
        prepare(self, accelerator)
        forward = self.forward

        def forward_then_nan(**kwargs):
            outputs = forward(**kwargs)  # the decoder's: the logit loss applies the LM head
            calls.append(1)
            if len(calls) >= first:
                outputs.last_hidden_state.fill_(float("nan"))
            return outputs

        self.forward = forward_then_nan

    monkeypatch.setattr(LiveTeacher, "prepare", prepare_nan)


def test_a_teacher_not_finite_in_training_is_named_when_the_guard_stops_the_run(teacher_dirs, run_values,
                                                                                monkeypatch):
    """A teacher finite in the evaluation before training whose training outputs are NaN: the guard's error names
    it."""
    _nan_teacher_outputs_from_call(3, monkeypatch)
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2},
                        max_nonfinite_steps=2)
    with pytest.raises(DistilyConfigError, match=r"^2 optimizer steps in a row had non-finite gradients "
                       r"\(max_nonfinite_steps=2\); the teacher's outputs of the step's batches hold NaN or \+inf "
                       r"\(the teacher ran with float32 weights\)"):
        run_distillation(parse_config(**values))


def test_a_teacher_not_finite_in_the_evaluations_losses_stops_the_run_before_any_step(teacher_dirs, run_values,
                                                                                     monkeypatch):
    """The evaluation's losses run the teacher as training does (under the run's autocast: a float32 teacher under a
    GPU's fp16 autocast can overflow where its own held-out pass does not): NaN there stops the run before any
    step, where fp16's loss scaling would skip every step without the guard seeing one."""
    _nan_teacher_outputs_from_call(1, monkeypatch)
    monkeypatch.setattr(DistillationTrainer, "train", lambda self, *a, **k: pytest.fail("training started"))
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2})
    with pytest.raises(DistilyConfigError, match=r"^the teacher's outputs in the evaluation's losses hold NaN or "
                       r"\+inf \(the teacher ran with float32 weights\)"):
        run_distillation(parse_config(**values))


@pytest.mark.slow
def test_a_teacher_not_finite_on_one_process_stops_every_process_before_any_step(teacher_dirs, run_values, tmp_path):
    """The teacher's logits NaN on the second process only: its held-out loss stopped that process alone while the
    first waited for it in the next all-reduce, which ended in gloo's "Connection closed by peer" traceback (exit 1;
    NCCL, blind to a peer's exit, waits for its timeout). Now the processes agree first: each exits with a line."""
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2})
    config, script = tmp_path / "distill.yaml", tmp_path / "nan_on_rank_1.py"
    config.write_text(yaml.safe_dump(values))
    script.write_text(NAN_ON_RANK_1)
    first, second = launch_each(script, str(config))
    ran = "its logits hold NaN or +inf (the teacher ran with float32 weights)"
    for done, where in ((first, "another process"), (second, "eval set 'heldout' is nan")):
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.splitlines()[-1].startswith(f"distily distill: error: the teacher's held-out loss on "
                                                       f"{where}: {ran}; expected finite teacher outputs")
    assert not (tmp_path / "run" / "metrics.json").exists()
