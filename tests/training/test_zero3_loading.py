"""A DeepSpeed ZeRO-3 run's models load whole for Distily's checks before training: transformers would
otherwise partition them as they load (``deepspeed.zero.Init``), and a partitioned model cannot run a check."""

import pytest
from transformers import AutoModelForCausalLM
from transformers.integrations import deepspeed as hf_deepspeed

from distily.config import parse_config
from distily.data.framing import check_causality
from distily.training import distill
from distily.training.distill import run_distillation
from distily.training.trainer_internals import models_loaded_whole


class ZeroThreeConfig:
    """What transformers reads of a run's DeepSpeed config (``HfDeepSpeedConfig`` needs deepspeed installed)."""

    config = {"zero_optimization": {"stage": 3}}

    def is_zero3(self) -> bool:
        return True


@pytest.fixture
def zero3_run():
    config = ZeroThreeConfig()  # transformers holds a weak reference: kept alive here
    hf_deepspeed.set_hf_deepspeed_config(config)
    yield config
    hf_deepspeed.unset_hf_deepspeed_config()


def test_models_load_whole_and_run_while_the_zero3_config_is_set_aside(teacher_dirs, zero3_run):
    with models_loaded_whole():
        assert not hf_deepspeed.is_deepspeed_zero3_enabled()
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"])
        assert all(parameter.numel() > 0 for parameter in teacher.parameters())
        check_causality(teacher, "teacher")  # a forward pass
    assert hf_deepspeed.is_deepspeed_zero3_enabled()


def test_distill_opens_its_models_whole_and_gives_the_trainer_the_zero3_config(
        teacher_dirs, run_values, zero3_run, monkeypatch):
    seen = {}
    opened = distill.open_teacher

    def open_teacher(config):
        seen["opening"] = hf_deepspeed.is_deepspeed_zero3_enabled()
        return opened(config)

    def trainer(*args, **kwargs):
        seen["trainer"] = hf_deepspeed.is_deepspeed_zero3_enabled()
        raise RuntimeError("stop before training")

    monkeypatch.setattr(distill, "open_teacher", open_teacher)
    monkeypatch.setattr(distill, "DistillationTrainer", trainer)
    with pytest.raises(RuntimeError, match="stop before training"):
        run_distillation(parse_config(**run_values(teacher_dirs["llama"])))
    assert seen == {"opening": False, "trainer": True}



def test_the_memory_estimate_reads_the_zero3_config(teacher_dirs, run_values, zero3_run, monkeypatch):
    """The estimate before training is made while the models load whole, with transformers' ZeRO-3 config set
    aside: read then, the run was no ZeRO-3 one and every model counted whole on each process (on 2 CPU processes,
    4.88 MiB with the whole teacher's 0.72 MiB of weights, against 3.86 MiB and 0.36 MiB), so a teacher too big for
    one device was refused. The shards are read with the config in place and reach the estimate."""
    seen = {}

    def parameter_shards(training):
        seen["zero3"] = hf_deepspeed.is_deepspeed_zero3_enabled()
        return 2, 2

    def estimate_memory(*args, **kwargs):
        seen["shards"] = args[9]
        raise RuntimeError("stop at the estimate")

    monkeypatch.setattr(distill, "parameter_shards", parameter_shards)
    monkeypatch.setattr(distill, "estimate_memory", estimate_memory)
    with pytest.raises(RuntimeError, match="stop at the estimate"):
        run_distillation(parse_config(**run_values(teacher_dirs["llama"])))
    assert seen == {"zero3": True, "shards": (2, 2)}
