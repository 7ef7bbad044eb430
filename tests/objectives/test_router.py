"""A mixture-of-experts student's own router load-balancing loss (``objectives/router.py``)."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.config import parse_config
from distily.errors import DistilyConfigError
from distily.experiments.metric_keys import metric_keys
from distily.models.student import student_config
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.objective import build_objective
from distily.teachers.cross_tokenizer import CrossTokenizerTeacher
from tiny import tiny_config


def batch_with_padding():
    torch.manual_seed(0)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    input_ids = torch.randint(0, 11, attention_mask.shape)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, -100)}


def test_a_mixture_of_experts_students_router_loss_is_added_as_transformers_adds_it():
    """A mixture-of-experts model whose config sets output_router_logits adds router_aux_loss_coef * aux_loss to its
    loss (what transformers' Trainer and TRL's optimise). The objective left it out: a random Mixtral student
    distilled for 600 steps sent 83% of its last layer's tokens to 2 of its 8 experts (1.54 coefficient of variation
    of the tokens per expert; 0.57 with the router loss at 0.01). With padding, the hard labels and the router loss
    are the model's own loss, and the router loss is logged as its own component."""
    batch = batch_with_padding()
    config = tiny_config("mixtral", output_router_logits=True, router_aux_loss_coef=0.1)
    model = AutoModelForCausalLM.from_config(config)
    result = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    objective = build_objective(ObjectiveArguments(logits_weight=0, hard_label_weight=1), student_config=model.config)
    found = objective(result, None, batch)
    torch.testing.assert_close(found.loss, result.loss)
    torch.testing.assert_close(found.components["router_aux"], result.aux_loss)
    assert objective.weights["router_aux"] == 0.1


def test_the_router_loss_follows_the_students_config():
    """No router loss where the config does not ask for router logits; where it does and the model returns none
    (Llama 4 computes none), the run stops in one line."""
    config = tiny_config("mixtral")
    assert "router_aux" not in build_objective(ObjectiveArguments(), student_config=config).components
    config.output_router_logits = True
    objective = build_objective(ObjectiveArguments(), student_config=config)
    batch = batch_with_padding()
    with pytest.raises(DistilyConfigError, match="returns no router load-balancing loss"):
        objective(SimpleNamespace(logits=torch.randn(3, 6, 11)), SimpleNamespace(logits=torch.randn(3, 6, 11)), batch)


def test_a_cross_tokenizer_run_keeps_the_students_router_loss():
    """The router loss is the student's own, on its own tokens: a cross-tokenizer run refused it as a component that
    pairs teacher and student positions."""
    config = tiny_config("mixtral", output_router_logits=True)
    objective = build_objective(ObjectiveArguments(logits_weight=0, hard_label_weight=1), student_config=config)
    assert "router_aux" in objective.components
    CrossTokenizerTeacher.check_objective(None, objective)


@pytest.mark.parametrize("overrides, ranked", [
    ({"output_router_logits": True}, True), ({}, False),
    ({"output_router_logits": True, "router_aux_loss_coef": 0.0}, False),
])
def test_a_sweep_can_rank_by_the_router_loss_where_the_run_asks_for_it(overrides, ranked):
    """A sweep refused student.after_loss_router_aux as a metric no run measures: the metrics.json keys were read from
    the weight options alone. Every component the run's objective logs is a key a sweep can rank by."""
    config = parse_config(teacher_model_name_or_path="gpt2", dataset_name="data.jsonl", output_dir="out",
                          student_config_overrides=overrides)
    student = student_config(config.model, tiny_config("mixtral"))  # the student of a Mixtral teacher
    objective = build_objective(config.objective, student_config=student)
    keys = set(metric_keys(config))
    assert {f"student.{stage}_loss_{name}" for name in objective.components for stage in ("before", "after")} <= keys
    assert ("student.after_loss_router_aux" in keys) == ranked == ("router_aux" in objective.components)
