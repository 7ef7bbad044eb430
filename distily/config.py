"""What a user configures: dataclasses with help text, merged from a YAML/JSON file and CLI flags.

A config file and CLI flags use the same keys; a flag wins over the file. Parsing goes through
``transformers.HfArgumentParser`` so every field is a ``--flag`` with its default and help text,
and the training options are ``transformers.TrainingArguments`` with defaults that suit
distillation.
"""

import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from distily.errors import DistilyConfigError

TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
STUDENT_INITS = ("teacher", "random")


def _json_dict(value: Any, key: str) -> dict:
    """A dict given as a dict (from YAML) or as a JSON string (from a CLI flag)."""
    if value is None or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise DistilyConfigError(f"{key}={value!r} is not valid JSON; expected a JSON object such as '{{\"a\": 1}}'")
    if not isinstance(parsed, dict):
        raise DistilyConfigError(f"{key}={value!r} is a JSON {type(parsed).__name__}; expected a JSON object")
    return parsed


def _one_of(value: str, choices: tuple, key: str) -> None:
    if value not in choices:
        raise DistilyConfigError(f"{key}={value!r} is not supported; expected one of {', '.join(choices)}")


@dataclass
class ModelArguments:
    """The teacher and how the student is obtained."""

    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Teacher: a Hugging Face Hub id or a local checkpoint directory (required)."}
    )
    teacher_torch_dtype: str = field(
        default="auto", metadata={"help": f"Teacher weights dtype, one of {', '.join(TORCH_DTYPES)}."}
    )
    student_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Student from a Hub id or local checkpoint. Default: built from the teacher's config."},
    )
    student_config_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Student from a separate config (a config.json file, a directory or a Hub id)."},
    )
    student_config_overrides: Optional[str] = field(
        default=None,
        metadata={
            "help": "JSON object of config keys to change in the teacher's config for the student, e.g. "
            '\'{"num_hidden_layers": 6}\'. Architecture-specific names (GPT-2\'s n_layer, n_embd) work too.'
        },
    )
    student_init: str = field(
        default="teacher",
        metadata={
            "help": "How a student built from a config is initialised: 'teacher' copies teacher layers (and "
            "embeddings, final norm and LM head where shapes match); 'random' keeps the random init."
        },
    )
    student_layers_from_teacher: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Teacher layer index copied into each student layer (student_init=teacher). Default: evenly "
            "spaced, first and last included."
        },
    )
    copy_teacher_modules: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Named teacher modules copied into the student whatever the init, e.g. model.embed_tokens."},
    )
    freeze_student_modules: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Named student modules whose parameters are not trained, e.g. model.embed_tokens."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub for teacher and student."}
    )

    def __post_init__(self):
        _one_of(self.teacher_torch_dtype, TORCH_DTYPES, "teacher_torch_dtype")
        _one_of(self.student_init, STUDENT_INITS, "student_init")
        self.student_config_overrides = _json_dict(self.student_config_overrides, "student_config_overrides")
        sources = [
            name
            for name in ("student_model_name_or_path", "student_config_name_or_path")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            raise DistilyConfigError(
                "student_model_name_or_path and student_config_name_or_path are both set; expected at most one"
            )
        if self.student_model_name_or_path is not None and self.student_config_overrides:
            raise DistilyConfigError(
                "student_config_overrides is set with student_model_name_or_path; overrides apply to a student "
                "built from a config, expected student_config_name_or_path or no student source"
            )


@dataclass
class DataArguments:
    """The text the student learns from, and how it is tokenized, packed and split."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub dataset id, or a local path: a txt/jsonl/json/parquet file, a directory of them, or a "
            "dataset saved with save_to_disk (required)."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset subset (config) name."})
    dataset_split: str = field(default="train", metadata={"help": "Dataset split to read."})
    dataset_text_column: str = field(
        default="text",
        metadata={"help": "Column holding the text. A dataset with an input_ids column is used pre-tokenized."},
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Length of the packed sequences. Default: the smaller of the models' limit and 1024."},
    )
    max_samples: Optional[int] = field(
        default=None, metadata={"help": "Limit on the number of packed training sequences."}
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of documents held out for evaluation (split before packing, so no overlap)."},
    )
    max_eval_samples: Optional[int] = field(
        default=256, metadata={"help": "Limit on the number of packed evaluation sequences."}
    )
    tokenization_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where tokenized datasets are cached. Default: $HF_HOME/distily/tokenized."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes used to tokenize (datasets.map num_proc)."}
    )

    def __post_init__(self):
        if not 0.0 < self.eval_fraction < 1.0:
            raise DistilyConfigError(f"eval_fraction={self.eval_fraction} is out of range; expected 0 < x < 1")
        for name in ("max_seq_length", "max_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DistilyConfigError(f"{name}={value} must be a positive integer")


@dataclass
class ObjectiveArguments:
    """What the student is trained to match: weighted components, each logged on its own."""

    logits_loss: str = field(
        default="forward_kl", metadata={"help": "Loss between student and teacher logits (a name in LOSSES)."}
    )
    logits_weight: float = field(default=1.0, metadata={"help": "Weight of the logit component (0 disables it)."})
    logits_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the logit loss; the loss is scaled by T^2."}
    )
    logits_loss_kwargs: Optional[str] = field(
        default=None, metadata={"help": 'JSON object of extra loss parameters, e.g. \'{"beta": 0.5}\'.'}
    )
    hard_label_weight: float = field(
        default=0.0, metadata={"help": "Weight of the next-token cross-entropy on the data itself (0 disables it)."}
    )

    def __post_init__(self):
        self.logits_loss_kwargs = _json_dict(self.logits_loss_kwargs, "logits_loss_kwargs")
        if self.logits_temperature <= 0:
            raise DistilyConfigError(f"logits_temperature={self.logits_temperature} must be > 0")
        for name in ("logits_weight", "hard_label_weight"):
            if getattr(self, name) < 0:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.logits_weight == 0 and self.hard_label_weight == 0:
            raise DistilyConfigError("logits_weight and hard_label_weight are both 0; expected a component to train")


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` with defaults for distillation and a few additions."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where the student, checkpoints, logs and metrics.json are written (required)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir instead of refusing to start."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of the student (AdamW)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warmup: a number of steps, or a fraction of the training steps if < 1."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Sequences per device per step."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per device in evaluation."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (a fraction: of the run)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: no, steps or epoch."})
    eval_steps: Optional[float] = field(default=0.25, metadata={"help": "Evaluate every N steps (< 1: a fraction)."})
    save_steps: float = field(default=0.25, metadata={"help": "Checkpoint every N steps (< 1: a fraction)."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept."})
    report_to: Optional[str] = field(default="tensorboard", metadata={"help": "Loggers: tensorboard, wandb, none..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all dataset columns (needed)."})

    def __post_init__(self):
        if self.output_dir is None:
            raise DistilyConfigError("output_dir is not set; expected a directory for the student and its logs")
        if not torch.accelerator.is_available():
            self.use_cpu = True  # lets bf16 mean CPU autocast on machines without an accelerator
        super().__post_init__()


CONFIG_CLASSES = (ModelArguments, DataArguments, ObjectiveArguments, DistillationTrainingArguments)


@dataclass
class DistillConfig:
    """Everything ``distily distill`` runs with, one dataclass per concern."""

    model: ModelArguments
    data: DataArguments
    objective: ObjectiveArguments
    training: DistillationTrainingArguments


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line ``DistilyConfigError``s instead of usage dumps."""

    def error(self, message):
        raise DistilyConfigError(message)


def make_parser(prog: str = "distily distill") -> HfArgumentParser:
    return _Parser(
        CONFIG_CLASSES,
        prog=prog,
        allow_abbrev=False,
        usage=f"{prog} [CONFIG.yaml] [--key value ...]",
        description="Distill a teacher into a student. Every key of CONFIG.yaml is also a flag; flags win.",
    )


def _known_keys() -> set[str]:
    return {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}


def read_config_file(path: str) -> dict:
    """Read a YAML or JSON config file into a flat dict of keys."""
    if not os.path.isfile(path):
        raise DistilyConfigError(f"config file {path!r} does not exist; expected a YAML or JSON file")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise DistilyConfigError(f"config file {path!r} is not valid YAML: {str(err).splitlines()[0]}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistilyConfigError(f"config file {path!r} holds a {type(data).__name__}; expected a mapping of keys")
    return data


def check_keys(keys) -> None:
    known = _known_keys()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DistilyConfigError(f"unknown config key {key!r}{hint}; see `distily distill --help` for the keys")


def _as_flags(config: dict) -> list[str]:
    """Turn file values into the flags they stand for, so both go through one parser and its checks."""
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_config(config_path: Optional[str] = None, argv: Optional[list[str]] = None, **values) -> DistillConfig:
    """Build a ``DistillConfig`` from a config file, CLI flags and keyword values (later sources win)."""
    file_values = read_config_file(config_path) if config_path else {}
    check_keys(file_values)
    check_keys(values)
    flags = _as_flags(file_values) + list(argv or []) + _as_flags(values)
    parser = make_parser()
    _, remaining = parser.parse_known_args(flags)
    if remaining:
        unknown = next((a for a in remaining if a.startswith("--")), remaining[0])
        check_keys([unknown.lstrip("-").split("=")[0]])
        raise DistilyConfigError(f"unexpected argument {unknown!r}; expected --key value pairs")
    try:
        configs = parser.parse_args_into_dataclasses(args=flags)
    except DistilyConfigError:
        raise
    except ValueError as err:  # raised by TrainingArguments.__post_init__ and friends
        raise DistilyConfigError(str(err).strip().splitlines()[0])
    return DistillConfig(*configs)
