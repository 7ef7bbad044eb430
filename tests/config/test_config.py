import re

import pytest
import yaml

from distily.config import (
    FILE_COMMANDS, DistillConfig, command_keys, config_from_command_line, make_parser, parse_config,
    parse_record_config,
)
from distily.errors import DistilyConfigError


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_file_values_and_flags_merge_with_flags_winning(tmp_path):
    config_file = write_yaml(
        tmp_path / "c.yaml",
        {
            "teacher_model_name_or_path": "gpt2",
            "output_dir": str(tmp_path / "out"),
            "learning_rate": 0.5,
            "student_config_overrides": {"n_layer": 6},
            "freeze_student_modules": ["transformer.wte"],
            "bf16": True,
        },
    )
    config = parse_config(config_file, ["--learning_rate", "0.25", "--logits_temperature", "2"])
    assert config.training.learning_rate == 0.25  # flag wins
    assert config.objective.logits_temperature == 2.0
    assert config.model.student_config_overrides == {"n_layer": 6}
    assert config.model.freeze_student_modules == ["transformer.wte"]
    assert config.training.bf16 is True
    assert config.model.teacher_model_name_or_path == "gpt2"


def test_training_arguments_are_transformers_training_arguments(tmp_path):
    from transformers import TrainingArguments

    config = parse_config(argv=["--output_dir", str(tmp_path), "--gradient_accumulation_steps", "3"],
                          teacher_model_name_or_path="gpt2")
    assert isinstance(config.training, TrainingArguments)
    assert config.training.gradient_accumulation_steps == 3
    assert config.training.report_to == ["tensorboard"]  # a distillation default


@pytest.mark.parametrize("source", ["file", "flags"])
def test_several_loggers_are_given_as_a_list(source, tmp_path):
    """report_to was one string: two loggers (a list in a config file, or two values after the flag) were refused."""
    if source == "file":
        path = tmp_path / "run.yaml"
        path.write_text(f"teacher_model_name_or_path: gpt2\noutput_dir: {tmp_path}\nreport_to: [tensorboard, wandb]\n")
        config = parse_config(str(path))
    else:
        config = parse_config(argv=["--report_to", "tensorboard", "wandb"], teacher_model_name_or_path="gpt2",
                              output_dir=str(tmp_path))
    assert config.training.report_to == ["tensorboard", "wandb"]
    assert parse_config(teacher_model_name_or_path="gpt2", output_dir=str(tmp_path),
                        report_to="wandb").training.report_to == ["wandb"]


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, False),  # forward KL on the logits: every student parameter gets a gradient
        ({"logits_weight": 0.0, "hard_label_weight": 1.0}, False),
        ({"logits_weight": 0.0, "hidden_states_weight": 1.0}, True),  # later layers may get none
        ({"ddp_find_unused_parameters": True}, True),  # the user's choice stands
    ],
)
def test_ddp_searches_for_unused_parameters_only_when_the_objective_may_leave_some(values, expected, tmp_path):
    config = parse_config(output_dir=str(tmp_path), teacher_model_name_or_path="gpt2", **values)
    assert config.trainer_arguments().ddp_find_unused_parameters is expected
    assert config.training.ddp_find_unused_parameters is values.get("ddp_find_unused_parameters")  # as given


@pytest.mark.parametrize("command", FILE_COMMANDS, ids=lambda command: command.prog)
def test_help_lists_the_keys_the_command_uses_and_no_other(command):
    text = make_parser(command).format_help()
    flags = set(re.findall(r"^  --(\w+)", text, re.M))
    assert command_keys(command) <= flags
    others = set().union(*(command_keys(other) for other in FILE_COMMANDS)) - command_keys(command)
    assert not flags & others, sorted(flags & others)


def test_each_command_reads_what_it_uses():
    distill = command_keys(DistillConfig)
    assert "(default: forward_kl)" in make_parser().format_help()
    assert {"teacher_source", "teacher_store", "eval_datasets", "learning_rate"} <= distill
    assert not any(key.startswith(("generate_", "record_")) for key in distill)
    record, generate = (command_keys(command) for command in FILE_COMMANDS[1:])
    assert {"teacher_store", "record_top_k", "logits_temperature", "seed", "per_device_eval_batch_size"} <= record
    assert not {"output_dir", "learning_rate", "teacher_source", "generate_output"} & record
    assert record | {key for key in generate if key.startswith("generate_")} == generate


def test_a_shared_config_file_serves_every_command_and_flags_stay_strict(tmp_path):
    from distily.config import parse_generate_config, parse_record_config

    config_file = write_yaml(tmp_path / "c.yaml", {
        "teacher_model_name_or_path": "gpt2", "output_dir": "o", "learning_rate": 0.5, "teacher_store": "s",
        "record_top_k": 8, "generate_output": "g.jsonl", "logits_temperature": 2.0, "seed": 3,
    })
    distill = parse_config(config_file)
    assert (distill.training.learning_rate, distill.record.teacher_store, distill.objective.logits_temperature) == (
        0.5, "s", 2.0)
    record = parse_record_config(config_file)
    assert (record.record.record_top_k, record.record.logits_temperature, record.inference.seed) == (8, 2.0, 3)
    assert parse_generate_config(config_file).generate.generate_output == "g.jsonl"
    with pytest.raises(DistilyConfigError, match="output_dir is not used by `distily record`"):
        parse_record_config(config_file, ["--output_dir", "o"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output_dir", "o", "--learning_rat", "1"],
         "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
        (["--output_dir", "o", "--learning_rate", "fast"], "invalid float value: 'fast'"),
        (["--output_dir", "o", "--student_config_overrides", "{n_layer: 2"], "is not valid JSON"),
        (["--output_dir", "o", "--teacher_torch_dtype", "int3"], "teacher_torch_dtype='int3' is not supported"),
        (["--output_dir", "o", "--eval_fraction", "1.5"], "eval_fraction=1.5 is out of range"),
        (["--learning_rate", "1"], "output_dir is not set"),
        (["--output_dir", "o"], "teacher_model_name_or_path is not set; expected a Hub id or a local checkpoint"),
        (["--output_dir", "o", "--teacher_model_name_or_path", "t", "--bitnet_schedule", "true"],
         "bitnet_schedule=true needs a BitNet student"),
    ],
)
def test_bad_values_raise_one_line_errors(argv, message):
    with pytest.raises(DistilyConfigError) as err:
        parse_config(argv=argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_is_named(tmp_path):
    config_file = write_yaml(tmp_path / "c.yaml", {"output_dir": "o", "teacher_modle": "gpt2"})
    with pytest.raises(DistilyConfigError, match="unknown config key 'teacher_modle'"):
        parse_config(config_file)


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_unknown_key_points_to_the_commands_own_help(tmp_path, command):
    """`distily record --record_topk 8` once said to see `distily distill --help`, which lists no record key."""
    config_file = write_yaml(tmp_path / "c.yaml", {"teacher_modle": "gpt2"})
    for argv in ([str(config_file)], ["--record_topk", "8"]):
        with pytest.raises(DistilyConfigError, match=f"unknown config key .*; see `{command.prog} --help`"):
            config_from_command_line(command, argv)


def test_configuration_reference_is_up_to_date():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "config_reference.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_null_and_empty_lists_in_a_file_are_the_values_they_say(tmp_path):
    """Values no flag expresses: null is None where the key may be None (max_eval_samples: no limit; it used to be
    skipped, leaving the default 256), an empty list is an empty list (it used to be a flag without values, refused);
    a flag still wins over the file, a keyword value over both."""
    config_file = write_yaml(tmp_path / "c.yaml", {
        "teacher_model_name_or_path": "t", "teacher_store": "s", "max_eval_samples": None, "max_samples": None,
        "record_hidden_states_layers": [],
    })
    config = parse_record_config(config_file)
    assert config.data.max_eval_samples is None and config.data.max_samples is None
    assert config.record.record_hidden_states_layers == []
    config = parse_record_config(config_file, ["--max_eval_samples", "7", "--record_hidden_states_layers", "2"])
    assert config.data.max_eval_samples == 7 and config.record.record_hidden_states_layers == [2]
    config = parse_record_config(config_file, ["--max_eval_samples", "7"], max_eval_samples=None)
    assert config.data.max_eval_samples is None
    distill = parse_config(argv=["--output_dir", "o"], teacher_model_name_or_path="t", lm_eval_tasks=[],
                           freeze_student_modules=[])
    assert distill.evaluation.lm_eval_tasks == [] and distill.model.freeze_student_modules == []


@pytest.mark.parametrize(
    "values, message",
    [
        ({"record_top_k": [1, 2]}, "record_top_k=[1, 2] is a list; expected one int"),
        ({"logits_temperature": []}, "logits_temperature=[] is a list; expected one float"),
        ({"record_top_k": None}, "record_top_k is null; expected a value of type int (leave it out for its default)"),
    ],
)
def test_a_file_value_of_the_wrong_shape_is_a_one_line_error_naming_the_key(values, message, tmp_path):
    config_file = write_yaml(tmp_path / "c.yaml", {"teacher_model_name_or_path": "t", "teacher_store": "s", **values})
    with pytest.raises(DistilyConfigError) as err:
        parse_record_config(config_file)
    assert str(err.value) == message


def test_a_file_value_that_starts_with_a_dash_is_a_value(tmp_path):
    """A text document delimiter '---' or an answer marker '-->' was taken by argparse for a flag: 'expected one
    argument'. Keyword values go through the same flags."""
    config_file = write_yaml(tmp_path / "c.yaml", {
        "teacher_model_name_or_path": "t", "output_dir": "o", "text_document_delimiter": "^---$",
        "generation_eval_dataset": "org/prompts", "generation_eval_answer_after": "-->", "dataset_config_name": "---",
    })
    config = parse_config(config_file, logits_loss="jsd", logits_loss_kwargs={"beta": "-1"})
    assert (config.data.text_document_delimiter, config.evaluation.generation_eval_answer_after) == ("^---$", "-->")
    assert config.data.dataset_config_name == "---" and config.model.teacher_model_name_or_path == "t"
    assert config.objective.logits_loss_kwargs == {"beta": "-1"}
