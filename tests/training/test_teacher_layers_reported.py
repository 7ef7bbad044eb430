"""metrics.json and the model card name the teacher layers a student built from the teacher's config stands for:
those copied into it (student_init=teacher) and those whose per-layer settings its config took. The run log named
the copied ones; metrics.json, run_settings.json and the card did not."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import FULL, SLIDING, make_bos_tokenizer, tiny_gemma4_config
from distily.config import parse_config
from distily.models.architecture import decoder_layers
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir

LAYERS = [0, 2, 5]  # 3 of 6, evenly spaced, first and last included (2.5 rounds to 2)
SETTINGS = ("per-layer settings (attention kind, block type, ...; where its config has any)")


@pytest.mark.parametrize("init", ["teacher", "random"])
def test_the_teacher_layers_a_student_stands_for_are_in_its_metrics_and_card(init, run_values, tmp_path):
    """A Gemma 4 teacher of 6 layers (3 sliding, 3 full) and a student of 3: its layer types are those of teacher
    layers 0, 2 and 5 either way, and with student_init=teacher those layers are copied into it (after a step of
    learning rate 1e-12 the saved student's layers are still the copies)."""
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_gemma4_config(layers=6)).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    make_bos_tokenizer().save_pretrained(tmp_path / "teacher")
    values = run_values(str(tmp_path / "teacher"), student_config_overrides={"num_hidden_layers": 3},
                        student_init=init, max_steps=1, learning_rate=1e-12)
    metrics = run_distillation(parse_config(**values))
    written = RunDir(values["output_dir"]).read_metrics()
    assert json.loads(json.dumps(metrics)) == written.to_dict()
    student = AutoModelForCausalLM.from_pretrained(values["output_dir"])
    assert student.config.layer_types == [teacher.config.layer_types[i] for i in LAYERS] == [SLIDING, SLIDING, FULL]
    assert metrics["student"]["teacher_layer_settings"] == written.student.teacher_layer_settings == LAYERS
    card = (Path(values["output_dir"]) / "README.md").read_text()
    if init == "random":
        assert "teacher_layers_copied" not in metrics["student"]
        assert f"starting from a random initialisation; its layers take, in order, the {SETTINGS} of teacher " \
               f"layers {LAYERS}." in card
        return
    assert metrics["student"]["teacher_layers_copied"] == LAYERS
    for student_layer, index in zip(decoder_layers(student), LAYERS):
        copied = decoder_layers(teacher)[index].state_dict()
        for name, value in student_layer.state_dict().items():
            torch.testing.assert_close(value, copied[name], rtol=0, atol=1e-8)
    assert f"starting from teacher layers {LAYERS} (evenly spaced, first and last included, with the layers " \
           f"KV-sharing ones take keys and values from) copied into its layers in order, each with that teacher " \
           f"layer's {SETTINGS}." in card
