"""The two-stage BitNet schedule: learning-rate shape and weight decay on latent weights only."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainerControl, TrainerState, TrainingArguments

from distily.errors import DistilyConfigError
from distily.models.bitnet import bitlinear_modules, convert_to_bitnet
from distily.training.bitnet_schedule import (
    LATENT_GROUP,
    BitNetSchedule,
    BitNetWeightDecayCallback,
    bitnet_lr_lambda,
    bitnet_param_groups,
    build_bitnet_optimizer,
)


def tiny_student():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return convert_to_bitnet(AutoModelForCausalLM.from_config(config))


def test_learning_rate_has_two_stages():
    schedule = BitNetSchedule(total_steps=100, warmup_steps=10)
    multiplier = bitnet_lr_lambda(schedule)
    assert multiplier(0) == 0 and multiplier(5) == pytest.approx(0.5) and multiplier(10) == pytest.approx(1.0)
    assert multiplier(49) == pytest.approx(schedule.first_stage_end, abs=1e-3)
    assert multiplier(50) == pytest.approx(schedule.second_stage_peak)
    assert multiplier(100) == pytest.approx(schedule.final_ratio)
    first, second = [multiplier(s) for s in range(10, 50)], [multiplier(s) for s in range(50, 101)]
    assert first == sorted(first, reverse=True) and second == sorted(second, reverse=True)


def test_weight_decay_only_on_latent_weights():
    student = tiny_student()
    latent, others = bitnet_param_groups(student, weight_decay=0.1)
    assert latent["name"] == LATENT_GROUP and latent["weight_decay"] == 0.1 and others["weight_decay"] == 0.0
    assert {id(p) for p in latent["params"]} == {id(layer.weight) for _, layer in bitlinear_modules(student)}
    assert len(latent["params"]) + len(others["params"]) == len(list(student.parameters()))


def test_scheduler_drops_weight_decay_in_second_stage():
    optimizer, scheduler = build_bitnet_optimizer(tiny_student(), lr=1e-3, schedule=BitNetSchedule(total_steps=10))
    decays = []
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        decays.append(optimizer.param_groups[0]["weight_decay"])
    assert decays[:4] == [0.1] * 4 and decays[4:] == [0.0] * 6
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    state = scheduler.state_dict()
    assert "schedule" not in state and state["last_epoch"] == 10


def test_callback_switches_weight_decay_at_boundary(tmp_path):
    schedule = BitNetSchedule(total_steps=10)
    optimizer = torch.optim.AdamW(bitnet_param_groups(tiny_student(), schedule.weight_decay))
    callback, args = BitNetWeightDecayCallback(schedule), TrainingArguments(output_dir=str(tmp_path))
    for step, expected in [(4, 0.1), (5, 0.0)]:
        callback.on_step_begin(args, TrainerState(global_step=step), TrainerControl(), optimizer=optimizer)
        assert optimizer.param_groups[0]["weight_decay"] == expected


def test_invalid_schedule():
    with pytest.raises(DistilyConfigError, match="warmup_steps=60"):
        BitNetSchedule(total_steps=100, warmup_steps=60)
