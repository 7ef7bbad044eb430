"""Sharding settings refused before anything loads or is written, where the run could not start (FSDP version 1 on a
machine without a GPU: accelerate refuses its sync_module_states there) or could not write the student after training
(DeepSpeed ZeRO-3 without gathering the weights on save)."""

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from distily.cli import main
from distily.errors import DistilyConfigError
from distily.training import arguments
from distily.training.trainer import ZERO3_SAVES_WHOLE, check_student_saves_whole
from file_tree import tree

FSDP1_ON_CPU = ("distily distill: error: fsdp_version=1 cannot start on cpu: accelerate refuses FSDP1's "
                "sync_module_states without a GPU; expected fsdp_version 2 (in fsdp_config, or accelerate's config), "
                "or sync_module_states false\n")


@pytest.fixture
def on_cpu(monkeypatch):
    """A machine without an accelerator, as accelerate sees it; no accelerate launch settings from the caller."""
    monkeypatch.setattr(arguments, "get_torch_accelerator_backend", lambda: (None, None))
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "FSDP_SYNC_MODULE_STATES"):
        monkeypatch.delenv(name, raising=False)


def _distill(tmp_path, *flags) -> int:
    return main(["distill", "--teacher_model_name_or_path", "t", "--output_dir", str(tmp_path / "run"), *flags])


@pytest.mark.parametrize("flags, environment", [
    (["--fsdp", "full_shard", "--fsdp_config", '{"fsdp_version": 1}'], {}),
    ([], {"ACCELERATE_USE_FSDP": "true", "FSDP_SYNC_MODULE_STATES": "true"}),  # accelerate launch's defaults
], ids=["fsdp_config", "accelerate_launch"])
def test_fsdp1_on_a_machine_without_a_gpu_is_one_line(flags, environment, on_cpu, tmp_path, capsys, monkeypatch):
    """Once a RuntimeError per process from accelerate's FSDP plugin as the Trainer started."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "notes.txt").write_text("a user's file")
    before = tree(tmp_path)
    assert _distill(tmp_path, *flags) == 2
    assert capsys.readouterr().err.endswith(FSDP1_ON_CPU)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("settings, environment", [
    ({"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 2}}, {}),
    ({"fsdp": "full_shard"}, {}),  # transformers' default version: 2
    ({"fsdp": "full_shard", "fsdp_config": {"fsdp_version": 1, "sync_module_states": False}}, {}),
    ({}, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SYNC_MODULE_STATES": "true"}),
    ({}, {"ACCELERATE_USE_FSDP": "true", "FSDP_SYNC_MODULE_STATES": "false"}),
])
def test_fsdp_that_starts_without_a_gpu_is_accepted(settings, environment, on_cpu, tmp_path, monkeypatch):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    arguments.DistillationTrainingArguments(output_dir=str(tmp_path / "run"), **settings)


def _accelerator(stage: int, **zero_optimization) -> SimpleNamespace:
    plugin = SimpleNamespace(zero_stage=stage, deepspeed_config={"zero_optimization": {"stage": stage,
                                                                                       **zero_optimization}})
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))


def test_zero3_without_gathering_on_save_is_refused_before_training():
    """Once the run trained, then failed to write the student ("Cannot get 16bit model weights", deepspeed 0.19.8,
    2 CPU processes), leaving a run directory without the student or metrics.json."""
    with pytest.raises(DistilyConfigError, match=f"^{ZERO3_SAVES_WHOLE} is not set in the ZeRO-3 config"):
        check_student_saves_whole(_accelerator(3))
    check_student_saves_whole(_accelerator(3, **{ZERO3_SAVES_WHOLE: True}))
    check_student_saves_whole(_accelerator(2))  # ZeRO-2: every process holds the whole student
