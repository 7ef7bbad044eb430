"""The model card parses with huggingface_hub, carries the metrics and tags, and never claims a fine-tune."""

import re

import yaml
from huggingface_hub import ModelCard

from distily.config import parse_config
from distily.export.modelcard import build_model_card, non_default_config
from distily.objectives.objective import build_objective
from tiny import tiny_config

def card_for(tmp_path, run_metrics, teacher="gpt2", bitnet=None, **values):
    config = parse_config(
        teacher_model_name_or_path=teacher,
        dataset_name="wikimedia/wikipedia",
        dataset_config_name="20231101.en",
        student_config_overrides={"num_hidden_layers": 2},
        hidden_states_weight=0.5,
        eval_datasets={"recent": "data/recent.jsonl"},
        lm_eval_tasks=["hellaswag"],
        lm_eval_limit=100,
        output_dir=str(tmp_path / "run"),
        **values,
    )
    objective = build_objective(config.objective, tiny_config("llama"), tiny_config("llama", layers=2), 320)
    card = build_model_card(config, run_metrics(bitnet), objective, "tiny-student", ["plots/losses.png"])
    path = tmp_path / "README.md"
    card.save(path)
    return ModelCard.load(path), config


def test_the_card_parses_and_carries_the_metrics_and_tags(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics)
    data = card.data
    assert data.base_model == "gpt2"
    assert {"distily", "distillation"} <= set(data.tags)
    assert "bitnet" not in data.tags
    assert data.datasets == ["wikimedia/wikipedia"]
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in data.eval_results}
    assert results[("wikimedia/wikipedia (held-out documents)", "perplexity")] == 9.025
    assert results[("wikimedia/wikipedia (held-out documents)", "perplexity of the teacher (gpt2)")] == 7.389
    assert results[("recent", "kl_to_teacher")] == 0.5
    assert results[("hellaswag", "acc")] == 0.33
    assert results[("hellaswag", "acc of the teacher (gpt2)")] == 0.41
    text = card.text
    assert "| heldout: perplexity | 7.39 | 30.00 | 9.03 |" in text
    assert "`recent` 2 of 32" in text  # the overlap is reported
    assert "lm_eval_limit=100" in text and "not full benchmark scores" in text
    assert "HiddenStatesComponent" in text and "layer_pairs=" in text  # the method actually used
    assert "| layers | 4 | 2 |" in text
    assert "transformers" in text and "torch" in text and "distily distill run.yaml" in text
    assert "![plots/losses.png](plots/losses.png)" in text


def test_the_card_makes_no_finetuned_from_claim(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics)
    assert card.data.to_dict().get("base_model_relation") != "finetune"
    assert not re.search(r"fine-?tuned from", str(card), re.IGNORECASE)


def test_a_bitnet_student_is_tagged_and_declared_a_quantization_of_its_teacher(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics, bitnet={"input_norm": False, "subln": True, "rms_norm_eps": 1e-6})
    assert {"bitnet", "1.58b"} <= set(card.data.tags)
    assert card.data.to_dict()["base_model_relation"] == "quantized"
    assert "ternary BitNet b1.58" in card.text and "| weights | dense | ternary (BitNet b1.58) |" in card.text


def test_a_local_teacher_is_named_but_not_a_base_model(tmp_path, run_metrics):
    card, _ = card_for(tmp_path, run_metrics, teacher=str(tmp_path))
    assert card.data.base_model is None
    assert f"the local checkpoint `{tmp_path}`" in card.text


def test_the_configuration_in_the_card_reproduces_the_run(tmp_path, run_metrics):
    card, config = card_for(tmp_path, run_metrics, learning_rate=3e-4, bf16=True)
    block = re.search(r"```yaml\n(.*?)```", card.text, re.DOTALL).group(1)
    again = parse_config(**yaml.safe_load(block))
    assert non_default_config(again) == non_default_config(config)
    assert yaml.safe_load(block)["learning_rate"] == 3e-4
