"""What each command is configured with, and how it is read: a YAML/JSON file, CLI flags and keyword values.

Each concern's dataclass sits next to the code it configures (``distily.<package>.arguments``); a command's
config composes the ones it reads (``DistillConfig``, ``RecordConfig``, ``GenerateConfig``, ``EvalConfig``) and
holds the rules across them in ``validate()``. A config file and CLI flags use the same keys; a flag wins over the
file. Parsing goes through ``transformers.HfArgumentParser`` so every field is a ``--flag`` with its default and
help text. ``distill``, ``record`` and ``generate`` read one config file: each ignores the keys of the file that
only the others use, and refuses a flag it does not use.
"""

import argparse
import copy
import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Optional

import yaml
from transformers import HfArgumentParser

from distily.data.arguments import DataArguments, row_ranges
from distily.errors import DistilyConfigError
from distily.evaluation.arguments import EvalCommandArguments, EvaluationArguments
from distily.models.arguments import ModelArguments, TeacherArguments
from distily.objectives.arguments import ObjectiveArguments
from distily.recording.arguments import (
    RESPONSES_COLUMN,
    GenerateArguments,
    InferenceArguments,
    RecordArguments,
    TeacherSourceArguments,
)
from distily.training.arguments import JOINED_VALUE_KEYS, DistillationTrainingArguments

# Every dataclass a config file's keys belong to (a key is known when one of them declares it).
CONFIG_CLASSES = (
    ModelArguments,
    DataArguments,
    ObjectiveArguments,
    DistillationTrainingArguments,
    TeacherSourceArguments,
    RecordArguments,
    InferenceArguments,
    GenerateArguments,
    EvaluationArguments,
)


def _check_streamed_split(data: DataArguments, split: str, key: str) -> None:
    """With ``dataset_streaming``, the split read (``key``) names row ranges a stream can be read for (``row_ranges``):
    refused before any model loads."""
    if data.dataset_streaming:
        row_ranges(split, key)


def _require_teacher(model: TeacherArguments) -> None:
    if model.teacher_model_name_or_path is None:
        raise DistilyConfigError("teacher_model_name_or_path is not set; expected a Hub id or a local checkpoint")


@dataclass
class DistillConfig:
    """Everything ``distily distill`` runs with, one dataclass per concern."""

    prog: ClassVar[str] = "distily distill"
    description: ClassVar[str] = (
        "Distill a teacher into a student. Every key of CONFIG.yaml is also a flag; flags win."
    )

    model: ModelArguments
    data: DataArguments
    objective: ObjectiveArguments
    training: DistillationTrainingArguments
    record: TeacherSourceArguments
    evaluation: EvaluationArguments

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.record.teacher_source != "recorded":  # a recorded teacher's name is the store's
            _require_teacher(self.model)
        _check_streamed_split(self.data, self.data.dataset_split, "dataset_split")
        if self.training.bitnet_schedule and not self.model.student_as_bitnet:
            raise DistilyConfigError("bitnet_schedule=true needs a BitNet student; expected student_as_bitnet=true")
        if self.model.teacher_quantization != "none" and self.record.teacher_source == "recorded":
            raise DistilyConfigError(  # metrics.json and the card would name a quantized teacher that never ran
                f"teacher_quantization={self.model.teacher_quantization!r} with teacher_source=recorded: the teacher "
                "does not run (its outputs are read from the store); expected teacher_quantization=none"
            )
        if self.training.lmbda > 0 and self.record.teacher_source == "recorded":
            raise DistilyConfigError(
                f"lmbda={self.training.lmbda} needs a live teacher: a recorded store cannot score the student's new "
                "completions; expected teacher_source=live or lmbda=0"
            )
        if self.training.lmbda > 0 and self.data.loss_on == "all":
            raise DistilyConfigError(
                f"lmbda={self.training.lmbda} with loss_on='all': on-policy batches find each conversation's prompt "
                "by its assistant mask, which loss_on='all' does not build; expected loss_on=assistant or lmbda=0"
            )

    def trainer_arguments(self) -> DistillationTrainingArguments:
        """The training arguments the Trainer runs with: the user's, with DDP's search for parameters without
        gradients decided from the objective when the user left it unset (off when a logit or hard-label term
        reaches every trainable student parameter; on for feature-only objectives, which may leave later layers
        without). The user's config is left as given."""
        if self.training.ddp_find_unused_parameters is not None:
            return self.training
        resolved = copy.copy(self.training)
        reaches_output = self.objective.logits_weight > 0 or self.objective.hard_label_weight > 0
        resolved.ddp_find_unused_parameters = not reaches_output
        return resolved


@dataclass
class RecordConfig:
    """Everything ``distily record`` runs with."""

    prog: ClassVar[str] = "distily record"
    description: ClassVar[str] = (
        "Run the teacher once over the packed train and eval sequences distill would use, and store its top-k "
        "outputs in teacher_store. Every key of CONFIG.yaml is also a flag; flags win."
    )

    model: TeacherArguments
    data: DataArguments
    record: RecordArguments
    inference: InferenceArguments

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.record.teacher_store is None:
            raise DistilyConfigError("teacher_store is not set; expected the directory to write the store into")
        _require_teacher(self.model)
        _check_streamed_split(self.data, self.data.dataset_split, "dataset_split")


@dataclass
class GenerateConfig(RecordConfig):
    """Everything ``distily generate`` runs with; the data and record keys serve ``generate_record``."""

    prog: ClassVar[str] = "distily generate"
    description: ClassVar[str] = (
        "Sample synthetic text from the teacher into generate_output (and with generate_record, record the teacher "
        "over it into teacher_store). Every key of CONFIG.yaml is also a flag; flags win."
    )

    generate: GenerateArguments

    def validate(self) -> None:
        _require_teacher(self.model)
        if self.generate.generate_output is None:
            raise DistilyConfigError("generate_output is not set; expected a .jsonl file or a directory to write into")
        if self.generate.generate_record and self.record.teacher_store is None:
            raise DistilyConfigError("generate_record=true needs teacher_store; expected a directory for the store")
        _check_streamed_split(self.data, self.generate.generate_prompts_split, "generate_prompts_split")

    def recording(self) -> RecordConfig:
        """The recording of ``generate_record``: of the samples (or the conversations with the teacher's responses,
        chat data with their loss mask), as ``distily record`` would record them."""
        data = dataclasses.replace(self.data, dataset_name=self.generate.generate_output, dataset_streaming=False,
                                   dataset_messages_column=RESPONSES_COLUMN)  # written there, whatever was set
        return RecordConfig(self.model, data, self.record, self.inference)


@dataclass
class EvalConfig:
    """Everything ``distily eval`` runs with: the command's own arguments and the evaluation settings ``distill``
    shares."""

    prog: ClassVar[str] = "distily eval"
    usage: ClassVar[str] = "distily eval MODEL [--teacher_model_name_or_path TEACHER] [--key value ...]"
    description: ClassVar[str] = (
        "Evaluate a model, beside its teacher: perplexity sets, agreement, answers to held-out prompts, lm-eval tasks."
    )

    command: EvalCommandArguments
    evaluation: EvaluationArguments

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        evaluation = self.evaluation
        if not (evaluation.eval_datasets or evaluation.lm_eval_tasks or evaluation.generation_eval_dataset):
            raise DistilyConfigError(
                "nothing to evaluate; expected --eval_datasets, --generation_eval_dataset and/or --lm_eval_tasks"
            )


FILE_COMMANDS = (DistillConfig, RecordConfig, GenerateConfig)  # the commands that read a config file


class _OneLineErrors:
    """Parser errors as one-line ``DistilyConfigError``s instead of usage dumps."""

    def error(self, message):
        raise DistilyConfigError(message)


class ArgumentParser(_OneLineErrors, argparse.ArgumentParser):
    """argparse whose errors are one-line ``DistilyConfigError``s."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The help's formatter, showing a key whose value the command line takes joined to its flag alone
    (``JOINED_VALUE_KEYS``) as it is given: ``--debug=VALUE``, not ``--debug DEBUG [DEBUG ...]``."""

    def _format_action_invocation(self, action):
        if action.dest in JOINED_VALUE_KEYS:
            return f"--{action.dest}=VALUE"
        return super()._format_action_invocation(action)


class _Parser(_OneLineErrors, HfArgumentParser):
    pass


def _parts(command: type) -> list[type]:
    return [part.type for part in fields(command)]


def make_parser(command: type = DistillConfig) -> HfArgumentParser:
    """The parser of ``command``'s keys (its help lists what the command uses)."""
    return _Parser(
        _parts(command),
        prog=command.prog,
        allow_abbrev=False,
        usage=getattr(command, "usage", f"{command.prog} [CONFIG.yaml] [--key value ...]"),
        description=command.description,
        formatter_class=_HelpFormatter,
    )


def command_keys(command: type) -> set[str]:
    return {f.name for part in _parts(command) for f in fields(part) if f.init}


def _known_keys() -> set[str]:
    return {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}


class _KeyGivenTwice(Exception):
    def __init__(self, key, first_line: int, line: int):
        super().__init__(key, first_line, line)
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _KeyGivenTwice(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: YAML's own error follows
                break
        return super().construct_mapping(node, deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (its first line alone, such as "while parsing a flow
    sequence", says neither)."""
    problem = " ".join((getattr(err, "problem", None) or str(err)).split())
    mark = getattr(err, "problem_mark", None)
    return problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")


def read_config_file(path: str) -> dict:
    """Read a YAML or JSON config file (UTF-8) into a flat dict of keys; a key given twice, or one that is not a
    name, is an error."""
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise DistilyConfigError(f"config file {path!r} {what}; expected a YAML or JSON file")
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise DistilyConfigError(f"config file {path!r} is not UTF-8 at byte {err.start}; expected UTF-8 YAML or JSON")
    except yaml.YAMLError as err:
        raise DistilyConfigError(f"config file {path!r} is not valid YAML: {_yaml_problem(err)}")
    except _KeyGivenTwice as twice:
        lines = f"lines {twice.first_line} and {twice.line}" if twice.first_line != twice.line else f"line {twice.line}"
        raise DistilyConfigError(f"config file {path!r} sets {twice.key!r} twice ({lines}); expected each key once")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistilyConfigError(f"config file {path!r} holds a {type(data).__name__}; expected a mapping of keys")
    names = [key for key in data if not isinstance(key, str)]  # YAML reads an unquoted 1, yes or null as no name
    if names:
        raise DistilyConfigError(f"config file {path!r} has the key {names[0]!r}, which is not a name; expected key "
                                 "names such as max_steps")
    return data


def check_keys(keys, prog: str = DistillConfig.prog, own_keys: frozenset = frozenset()) -> None:
    """Every key is one of some command's (or of ``own_keys``, those of a command without a config file); the error
    points to ``prog``'s help, the command the keys were given to."""
    known = _known_keys() | own_keys
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DistilyConfigError(f"unknown config key {key!r}{hint}; see `{prog} --help` for the keys")


def _key_types(command: type) -> dict[str, object]:
    """Each key's type as declared (``Optional[int]``; ``Optional[X]`` too where the default is None), read from the
    annotations: HfArgumentParser strips ``Optional`` from the dataclass fields' own types as it builds a parser."""
    types = {}
    for part in _parts(command):
        hints = typing.get_type_hints(part)
        for f in fields(part):
            if f.init:
                types[f.name] = Optional[hints[f.name]] if f.default is None else hints[f.name]
    return types


def _list_keys(parser: HfArgumentParser) -> set[str]:
    """The keys whose flag takes a list (``--key a b``)."""
    return {action.dest for action in parser._actions if action.nargs in ("+", "*")}


def _may_be_none(kind) -> bool:
    return type(None) in typing.get_args(kind)


def _type_name(kind) -> str:
    """A key's type as an error names it: ``int`` for ``Optional[int]``."""
    kinds = [each for each in typing.get_args(kind) if each is not type(None)] or [kind]
    return " or ".join(getattr(each, "__name__", str(each)) for each in kinds)


def _as_flags(config: dict, list_keys: set[str], types: dict[str, object]) -> list[str]:
    """Turn file values into the flags they stand for, so both go through one parser and its checks; a list for a key
    of one value is an error naming the key. Values no flag expresses (null, an empty list) are ``_flagless``'s. One
    value is joined to its flag (``--key=value``), so that argparse does not take a value such as ``---`` for a flag."""
    argv = []
    for key, value in config.items():
        if isinstance(value, (list, tuple)) and key not in list_keys:
            raise DistilyConfigError(f"{key}={list(value)!r} is a list; expected one {_type_name(types[key])}")
        if value is None or isinstance(value, (list, tuple)) and not value:
            continue
        if isinstance(value, (list, tuple)):
            argv.extend([f"--{key}", *(str(v) for v in value)])
        elif isinstance(value, bool):
            argv.append(f"--{key}={str(value).lower()}")
        elif isinstance(value, dict):
            argv.append(f"--{key}={json.dumps(value)}")
        else:
            argv.append(f"--{key}={value}")
    return argv


def _flagless(config: dict, types: dict[str, object]) -> dict:
    """The values of ``config`` no flag can express, as the fields take them: an empty list, and null (None) for a key
    whose field may be None (``max_eval_samples: null``: no limit); null for another key is an error."""
    values = {}
    for key, value in config.items():
        if value is None:
            if not _may_be_none(types[key]):
                raise DistilyConfigError(
                    f"{key} is null; expected a value of type {_type_name(types[key])} (leave it out for its default)"
                )
            values[key] = None
        elif isinstance(value, (list, tuple)) and not value:
            values[key] = []
    return values


def _check_finite(settings: dict) -> None:
    """Refuse a float that is NaN or infinite: it passes the range checks (``nan > 0`` is False), then trains a NaN
    student or fails deep inside a run."""
    for key, value in settings.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DistilyConfigError(f"{key}={value} is not finite; expected a finite number")


def _refuse_flag(flag: str, command: type) -> None:
    """Stop at a flag ``command``'s parser left: a typo (with the key it is closest to), or another command's key."""
    key = flag.lstrip("-").split("=")[0]
    check_keys([key], command.prog, frozenset(command_keys(command)))
    if key in _known_keys():
        raise DistilyConfigError(f"{key} is not used by `{command.prog}`; expected a key of `{command.prog} --help`")
    raise DistilyConfigError(f"unexpected argument {flag!r}; expected --key value pairs")


def _parse(command: type, config_path: Optional[str], argv: Optional[list[str]], values: dict):
    file_values = read_config_file(config_path) if config_path else {}
    check_keys(file_values, command.prog)
    check_keys(values, command.prog)
    used, types = command_keys(command), _key_types(command)
    file_values = {key: value for key, value in file_values.items() if key in used}
    values = {key: value for key, value in values.items() if key in used}
    parser = make_parser(command)
    list_keys = _list_keys(parser)
    flags = _as_flags(file_values, list_keys, types) + list(argv or []) + _as_flags(values, list_keys, types)
    # the file's flagless values stand unless a flag sets the key; the keyword values' win over every flag
    namespace, remaining = parser.parse_known_args(flags, argparse.Namespace(**_flagless(file_values, types)))
    if remaining:
        unknown = next((a for a in remaining if a.startswith("--")), remaining[0])
        if not unknown.startswith("-"):  # a second file, a file after the flags, one value too many
            raise DistilyConfigError(
                f"unexpected argument {unknown!r}; expected one config file first, then --key value pairs"
            )
        _refuse_flag(unknown, command)
    settings = {**vars(namespace), **_flagless(values, types)}
    _check_finite(settings)
    try:
        parts = [part(**{f.name: settings[f.name] for f in fields(part) if f.init}) for part in _parts(command)]
    except DistilyConfigError:
        raise
    except ValueError as err:  # raised by TrainingArguments.__post_init__ and friends
        raise DistilyConfigError(str(err).strip().splitlines()[0])
    return command(*parts)


def parse_config(config_path: Optional[str] = None, argv: Optional[list[str]] = None, **values) -> DistillConfig:
    """Build a ``DistillConfig`` from a config file, CLI flags and keyword values (later sources win); keys of
    the file and the values that only other commands use are ignored."""
    return _parse(DistillConfig, config_path, argv, values)


def parse_record_config(config_path: Optional[str] = None, argv: Optional[list[str]] = None, **values) -> RecordConfig:
    """``parse_config`` for ``distily record``."""
    return _parse(RecordConfig, config_path, argv, values)


def parse_generate_config(
    config_path: Optional[str] = None, argv: Optional[list[str]] = None, **values
) -> GenerateConfig:
    """``parse_config`` for ``distily generate``."""
    return _parse(GenerateConfig, config_path, argv, values)


def config_from_command_line(command: type, args: list[str]):
    """``command``'s config from ``CONFIG.yaml [--key value ...]`` (the file optional); None after printing the
    help that ``-h``/``--help`` asks for."""
    if "-h" in args or "--help" in args:
        make_parser(command).print_help()
        return None
    config_path = args[0] if args and not args[0].startswith("-") else None
    return _parse(command, config_path, args[1:] if config_path else args, {})


def parse_eval_config(argv: list[str]) -> EvalConfig:
    """``distily eval`` flags (no config file)."""
    parser = make_parser(EvalConfig)
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        unknown = next((arg for arg in remaining if arg.startswith("--")), remaining[0])
        if unknown.startswith("-"):
            _refuse_flag(unknown, EvalConfig)
        raise DistilyConfigError(f"unexpected argument {unknown!r}; expected a key of `distily eval --help`")
    _check_finite(vars(namespace))
    return EvalConfig(*parser.parse_args_into_dataclasses(args=argv))
