"""The keys of a finished run's flattened metrics.json (``student.after_perplexity``) that can hold a number, worked
out from the run's config before it runs: metrics.json's numeric fields (distily.metrics), the Trainer's figures,
and the names the config gives (eval sets, objective components, the generation metric; lm-eval results under the
tasks the config asks for and what they run, as the harness's registry names them: ``student.lm_eval.TASK.*``, with
the metrics their configs in the registry name, where they do). A sweep refuses a ranking metric that none of its
runs can measure before the first run starts (``check_metric``)."""

import dataclasses
import time
import typing
from difflib import get_close_matches
from fnmatch import fnmatchcase
from typing import Optional

from transformers.trainer_utils import speed_metrics

from distily.config import DistillConfig
from distily.errors import DistilyConfigError
from distily.evaluation.arguments import BUILT_IN, HELDOUT_SET, metric_name
from distily.evaluation.harness import reported_metrics
from distily.metrics import (
    AFTER, BEFORE, LOSS_METRICS, PER_SET_METRICS, EvalSetSource, FramingMetrics, MultimodalCheckpoint, OverlapCheck,
    RecordingSource, RunMetrics, StudentMetrics, TeacherMetrics, TrainMetrics, generation_key, metric_key,
)
from distily.models.bitnet import BitNetOptions
from distily.models.summary import ACTIVE_PARAMETERS, SHAPE_KEYS
from distily.objectives.router import ROUTER_AUX

NUMBERS = (int, float, Optional[int], Optional[float])
TRAINER_FIGURES = ("epoch", "num_input_tokens_seen")  # the Trainer's log adds them to its training figures
TOKEN_COUNTS = ("num_input_tokens_seen", "tokens_seen")  # absent when include_num_input_tokens_seen is "no"
ANY = "*"  # a part of a key that the Trainer or the harness names
LM_EVAL = "lm_eval"


def _numeric_fields(cls) -> list[str]:
    """``cls``'s fields that hold a number."""
    return [name for name, hint in typing.get_type_hints(cls).items() if hint in NUMBERS]


def _counted(config: DistillConfig, keys) -> list[str]:
    """``keys`` without the tokens read in training (``TOKEN_COUNTS``) where the run does not count them."""
    counts = config.training.include_num_input_tokens_seen != "no"
    return [key for key in keys if counts or key not in TOKEN_COUNTS]


def _architecture_keys() -> list[str]:
    """The numbers of a model's ``architecture_summary``: its shape (a mixture of experts' active parameters), and a
    BitNet model's options."""
    return [*(f"architecture.{name}" for name in (*SHAPE_KEYS, ACTIVE_PARAMETERS)),
            *(f"architecture.bitnet.{name}" for name in _numeric_fields(BitNetOptions))]


def _speed_figures(stage: str) -> list[str]:
    """The Trainer's time and throughput figures of ``stage``, as ``transformers.trainer_utils.speed_metrics`` names
    them."""
    return list(speed_metrics(stage, time.time() - 1, num_samples=1, num_steps=1))


def _component_names(config: DistillConfig) -> list[str]:
    """The objective's components that run: those whose ``<name>_weight`` is above 0, and a mixture-of-experts
    student's router loss where ``student_config_overrides`` asks for router logits (``router_aux_weight``) and sets
    no ``router_aux_loss_coef`` of 0. A saved config that asks for them itself (the teacher's, a student's) is not
    read: the metric is checked before any model's files are, and a Hub id's would need the network."""
    weighted = [item.name.removesuffix("_weight") for item in dataclasses.fields(config.objective)
                if item.name.endswith("_weight") and getattr(config.objective, item.name) > 0]
    overrides = config.model.student_config_overrides or {}
    router = overrides.get("output_router_logits") and overrides.get("router_aux_loss_coef") != 0
    return [*weighted, *([ROUTER_AUX] if router else [])]


def _evaluated(config: DistillConfig, metrics: tuple[str, ...]) -> list[str]:
    """What a model's evaluation measures: ``metrics`` on each eval set, and the greedy answers' scores."""
    evaluation = config.evaluation
    sets = [HELDOUT_SET, *(evaluation.eval_datasets or {})]
    keys = [metric_key(name, metric) for name in sets for metric in metrics]
    if evaluation.generation_eval_dataset:
        user = [metric_name(evaluation.generation_eval_metric)] if evaluation.generation_eval_metric else []
        keys += [generation_key(metric) for metric in (*BUILT_IN, *user)]
    return keys


def _student_keys(config: DistillConfig) -> list[str]:
    """The student's evaluations before and after training (the objective, its components, what the evaluation
    measures, the Trainer's time and throughput), its size and architecture."""
    measured = ["loss", *(f"loss_{name}" for name in _component_names(config)), *_evaluated(config, PER_SET_METRICS),
                "model_preparation_time"]
    stages = [key for stage in (BEFORE, AFTER) for key in (*(f"{stage}_{name}" for name in measured),
                                                           *_speed_figures(stage))]
    return [*stages, *_numeric_fields(StudentMetrics), *_architecture_keys()]


def _teacher_keys(config: DistillConfig) -> list[str]:
    """The teacher's own metrics on each eval set, its size, memory and architecture, the multimodal checkpoint it may
    be the language model of, and its recording's settings."""
    recorded = config.record.teacher_source == RecordingSource.SOURCE
    return [*_evaluated(config, LOSS_METRICS), *_numeric_fields(TeacherMetrics), *_architecture_keys(),
            *(f"multimodal_checkpoint.{name}" for name in _numeric_fields(MultimodalCheckpoint)),
            *(_numeric_fields(RecordingSource) if recorded else [])]


def _train_keys(config: DistillConfig) -> list[str]:
    """The Trainer's training figures and Distily's own (``TrainMetrics``)."""
    counted = _counted(config, [*TRAINER_FIGURES, *_numeric_fields(TrainMetrics)])
    return [*_speed_figures("train"), "train_loss", *counted]


def metric_keys(config: DistillConfig) -> list[str]:
    """The flattened metrics.json keys that a run of ``config`` can hold a number under (``*``: any name there)."""
    keys = {
        "teacher": _teacher_keys(config),
        "student": _student_keys(config),
        "train": _train_keys(config),
        "framing": _numeric_fields(FramingMetrics),
        "eval_sets": [f"{name}.{key}" for name in config.evaluation.eval_datasets or {}
                      for key in _numeric_fields(EvalSetSource)],
        "eval_overlap": [f"{name}.{key}" for name in (HELDOUT_SET, *(config.evaluation.eval_datasets or {}))
                         for key in _numeric_fields(OverlapCheck)],
    }
    if config.evaluation.lm_eval_tasks:
        keys["teacher"].append(f"{LM_EVAL}.{ANY}")  # its tasks: _check_lm_eval_task
        keys["student"].append(f"{LM_EVAL}.{ANY}")
    if not config.training.skip_memory_metrics:  # the Trainer's memory tracker, named by its own stages
        keys["student"].append(f"{ANY}_mem_{ANY}")
        keys["train"].append(f"{ANY}_mem_{ANY}")
    return [*_numeric_fields(RunMetrics), *(f"{part}.{key}" for part, names in keys.items() for key in names)]


def check_metric(metric: str, configs: list[DistillConfig], where: str) -> None:
    """Refuse a ranking ``metric`` that no run of ``configs`` can measure (a typo, a set no run evaluates, lm-eval
    results where no run runs lm-eval or of a task none runs, a field that holds no number), naming the closest key
    and those they can."""
    possible = list(dict.fromkeys(key for config in configs for key in metric_keys(config)))
    if not any(fnmatchcase(metric, key) for key in possible):
        closest = "".join(f" (closest: {key})" for key in get_close_matches(metric, possible, n=1))
        raise DistilyConfigError(f"{where}: metric={metric!r} is not a number any run of the sweep can measure"
                                 f"{closest}; expected a key of the flattened metrics.json among {', '.join(possible)}")
    _check_lm_eval_task(metric, configs, where)


def _check_lm_eval_task(metric: str, configs: list[DistillConfig], where: str) -> None:
    """Refuse lm-eval results (``student.lm_eval.TASK.METRIC``) of a TASK under which no run's results can be (the
    tasks, groups and tags the runs ask for and what those run, as the harness's task registry names them), or of a
    METRIC that TASK cannot report (``reported_metrics``)."""
    part, lm_eval, task_metric = metric.partition(f".{LM_EVAL}.")
    if not lm_eval:
        return
    reported = _reported_metrics(configs)
    tasks = sorted(reported)
    matched = [task for task in tasks if task_metric.startswith(f"{task}.")]
    if not matched:
        closest = "".join(f" (closest: {task})"
                          for task in get_close_matches(task_metric.rsplit(".", 1)[0], tasks, n=1))
        raise DistilyConfigError(f"{where}: metric={metric!r} names no lm-eval task the runs evaluate{closest}; "
                                 f"expected {part}.{LM_EVAL}.TASK.METRIC with TASK among {', '.join(tasks)}")
    if any(_reports(reported[task], task_metric.removeprefix(f"{task}.")) for task in matched):
        return
    task = matched[-1]
    name, names = task_metric.removeprefix(f"{task}."), sorted(reported[task])
    closest = "".join(f" (closest: {key})" for key in get_close_matches(name, names, n=1))
    raise DistilyConfigError(f"{where}: metric={metric!r} names a metric lm-eval task {task!r} does not report"
                             f"{closest}; expected {part}.{LM_EVAL}.{task}.METRIC with METRIC among {', '.join(names)}")


def _reported_metrics(configs: list[DistillConfig]) -> dict[str, Optional[set[str]]]:
    """``reported_metrics`` of every run's lm-eval settings together (None: any metric in one of them)."""
    settings = {(tuple(config.evaluation.lm_eval_tasks), config.evaluation.lm_eval_include_path): config.evaluation
                for config in configs if config.evaluation.lm_eval_tasks}  # each registry read once
    merged: dict[str, Optional[set[str]]] = {}
    for evaluation in settings.values():
        for task, names in reported_metrics(evaluation).items():
            unknown = names is None or (task in merged and merged[task] is None)
            merged[task] = None if unknown else merged.get(task, set()) | names
    return merged


def _reports(names: Optional[set[str]], name: str) -> bool:
    """Whether ``name`` is among a task's metric ``names`` (patterns; None: any)."""
    return names is None or any(fnmatchcase(name, pattern) for pattern in names)
