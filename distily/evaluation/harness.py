"""Benchmarks through lm-evaluation-harness (``pip install distily[eval]``), on models already in memory.

Tasks are any the harness knows (``mmlu_pro``, ``hellaswag``, ...; their data come from the Hub) or
local task YAML files in ``lm_eval_include_path`` whose data files are local, so a benchmark also runs
offline. The teacher's results depend only on the teacher and the task settings, so they are kept in
a cache under those and computed once.
"""

import difflib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.chat import ChatTemplate, run_chat_template
from distily.errors import DistilyConfigError
from distily.evaluation.arguments import FEWSHOT, SAMPLES, EvaluationArguments
from distily.logs import quieted
from distily.outputs import weight_files, write_json_atomic
from distily.paths import distily_cache_dir

logger = logging.getLogger(__name__)


def task_manager(args: EvaluationArguments):
    """The harness's ``TaskManager`` for ``args.lm_eval_tasks``, checked before any model is trained: a missing
    harness, an unknown task, a task whose data cannot be loaded (offline and not cached, a dataset that is
    not there) or one that two of the tasks run (a task and a group holding it) fails now, in one line, not after
    training."""
    _require_harness(args)
    _check_model_args(args.lm_eval_model_args)
    manager = _manager_for(args)
    run_by: dict[str, str] = {}  # each task that runs -> the first of lm_eval_tasks that runs it
    for task in args.lm_eval_tasks:
        for member in _check_task_loads(task, manager):
            if run_by.setdefault(member, task) != task:
                raise DistilyConfigError(
                    f"lm_eval_tasks: {member!r} is run by both {run_by[member]!r} and {task!r}; expected each task "
                    "once (a group runs its members)"
                )
    return manager


def _require_harness(args: EvaluationArguments) -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise DistilyConfigError(
            f"lm_eval_tasks={args.lm_eval_tasks} needs lm-evaluation-harness, which is not installed; expected "
            "`pip install distily[eval]`"
        )


def reported_metrics(args: EvaluationArguments) -> dict[str, Optional[set[str]]]:
    """The names ``task_results`` can report results under for ``args.lm_eval_tasks`` (each task, group and tag
    asked for, and what each runs), each with the names its metrics can have there as ``fnmatch`` patterns (None:
    any), from the harness's task registry alone (no data loaded, so offline)."""
    _require_harness(args)
    manager = _manager_for(args)
    names = {name for task in args.lm_eval_tasks for name in _names_run_by(task, manager)}
    metrics = {name: _registry_metrics(manager.task_index.get(name), manager) for name in names}
    for group in names & set(manager.all_groups):
        if _sets_metrics(manager.task_index[group].cfg or {}):  # its members' metrics: as it sets them
            metrics.update(dict.fromkeys(_names_run_by(group, manager)))
    return metrics


METRIC_SETTINGS = ("metric_list", "filter_list", "process_results", "output_type", "class")  # what names metrics


def _sets_metrics(group_config: dict) -> bool:
    """Whether a group's config (or an entry of its members) changes what its members' metrics are named."""
    return any(key in group_config for key in METRIC_SETTINGS) or any(
        _sets_metrics(member) for member in _listed(group_config.get("task"), []) if isinstance(member, dict))


def _registry_metrics(entry, manager) -> Optional[set[str]]:
    """The names (``fnmatch`` patterns) ``task_results`` gives the metrics of a registry entry, each with its stderr,
    and the counts. None (any name) where the registry cannot tell: Python names them (``process_results``, a task
    class), the harness's defaults do (no ``metric_list``), a tag, a group without an aggregate (it reports none), a
    task defined inside a group."""
    config = entry.cfg if entry is not None and entry.cfg else {}
    if entry is None or entry.name in manager.all_tags or "class" in config or config.get("process_results"):
        return None
    pairs = _group_pairs(entry.name, config, manager) if entry.name in manager.all_groups else _task_pairs(config)
    if not pairs or not all(isinstance(part, str) for pair in pairs for part in pair):
        return None
    return {SAMPLES, FEWSHOT, *(_metric_name(name, filter_name) for metric, filter_name in pairs
                                for name in (metric, f"{metric}_stderr"))}


def _task_pairs(config: dict) -> list[tuple]:
    """A task's ``(metric, filter)``: each of its ``metric_list`` under each filter of its ``filter_list`` (the
    harness's ``none`` without one)."""
    filters = [_field(item, "name") for item in _listed(config.get("filter_list"), [{"name": "none"}])]
    return [(_field(item, "metric"), name) for item in _listed(config.get("metric_list"), []) for name in filters]


def _group_pairs(group: str, config: dict, manager) -> list[tuple]:
    """A group's ``(metric, filter)``: each of its ``aggregate_metric_list`` under each filter it names (without,
    those of the metrics of what it runs: ``_member_filters``)."""
    items = _listed(config.get("aggregate_metric_list"), [])
    found = _member_filters(group, manager) if any(_field(item, "filter_list") is None for item in items) else []
    return [(_field(item, "metric"), name) for item in items for name in _listed(_field(item, "filter_list"), found)]


def _member_filters(group: str, manager) -> list[str]:
    """The filters of the tasks ``group`` runs; any (``none`` and ``*``) where the registry cannot tell one's."""
    names = _names_run_by(group, manager) - {group}
    groups = [manager.task_index[name].cfg or {} for name in names if name in manager.all_groups]
    tasks = [manager.task_index.get(name) for name in names
             if name not in manager.all_groups and name not in manager.all_tags]
    if any(map(_sets_metrics, groups)) or any(_registry_metrics(task, manager) is None for task in tasks):
        return ["none", "*"]
    return sorted({filter_name for task in tasks for _, filter_name in _task_pairs(task.cfg)})


def _field(item, key: str):
    """``item[key]`` for a mapping, None for anything else."""
    return item.get(key) if isinstance(item, dict) else None


def _listed(value, default: list) -> list:
    """A config's value that is one item or a list of them, as a list (``default`` when it is not set)."""
    return default if value is None else value if isinstance(value, list) else [value]


def _names_run_by(member, manager, group: Optional[str] = None) -> set[str]:
    """``member`` of ``group`` (a name, or a group's entry: a mapping naming a task or group) and what it runs,
    named as the harness's task factory names them: a tag's tasks (and the tag: a group's entry that names a tag and
    settings gives its tasks the tag's name), a group's members and theirs, and a task or group defined inside
    ``group`` alone (not in the registry) as ``GROUP::NAME``."""
    if isinstance(member, dict):
        inline = "group" in member and member["group"] not in manager.task_index
        if not inline:
            return _names_run_by(member.get("group", member.get("task")), manager, group)
        name = f"{group}::{member['group']}"
        return {name, *_members_names(member, manager, name)}
    entry = manager.task_index.get(member)
    if entry is None:
        return {f"{group}::{member}"}
    if member in manager.all_tags:
        return {member, *entry.tags}
    if member in manager.all_groups:
        return {member, *_members_names(entry.cfg, manager, member)}
    return {member}


def _members_names(group_config: dict, manager, group: str) -> set[str]:
    """The names of what the members of a group (its config's ``task``: a name or a list) run."""
    return {name for member in _listed(group_config.get("task"), []) for name in _names_run_by(member, manager, group)}


SET_BY_DISTILY = {"pretrained": "the model", "tokenizer": "the model's tokenizer",
                  "batch_size": "per_device_eval_batch_size", "chat_template_args": "chat_template_kwargs"}
# HFLM arguments for loading a model (or tokenizer) itself: HFLM ignores them for the loaded model Distily hands it,
# or refuses that model (parallelize, tp_plan)
LOADING_ARGS = ("revision", "subfolder", "device", "dtype", "trust_remote_code", "use_fast_tokenizer", "parallelize",
                "max_memory_per_gpu", "max_cpu_memory", "offload_folder", "tp_plan", "peft", "delta", "autogptq",
                "gptqmodel", "gguf_file")


def _check_model_args(model_args: dict) -> None:
    """``lm_eval_model_args`` names arguments of HFLM that apply to a loaded model and that Distily does not set
    itself, and holds what HFLM requires of them (checked before training: HFLM is built after it)."""
    from lm_eval.models.huggingface import HFLM

    known = set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}
    for key in model_args:
        if key in SET_BY_DISTILY:
            raise DistilyConfigError(
                f"lm_eval_model_args sets {key!r}, which Distily sets from {SET_BY_DISTILY[key]}; expected "
                "other HFLM arguments"
            )
        if key in LOADING_ARGS:
            raise DistilyConfigError(
                f"lm_eval_model_args sets {key!r}, which lm-eval's HFLM uses only to load a model itself, not for "
                "the loaded model Distily gives it; expected arguments for a loaded model, such as think_end_token "
                "or max_length"
            )
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DistilyConfigError(
                f"lm_eval_model_args: {key!r} is not an argument of lm-eval's HFLM{hint}; expected one of its "
                "named arguments, such as think_end_token or max_length"
            )
    if model_args.get("enable_thinking") and model_args.get("think_end_token") is None:
        raise DistilyConfigError(
            "lm_eval_model_args sets enable_thinking=true without think_end_token; expected think_end_token too "
            "(the text that ends the reasoning, e.g. </think>), as lm-eval's HFLM requires"
        )


def _manager_for(args: EvaluationArguments):
    """The manager that knows every task of ``args.lm_eval_tasks`` (local-only task lists skip indexing the
    harness's own few thousand tasks)."""
    from lm_eval.tasks import TaskManager

    include_path = os.path.expanduser(args.lm_eval_include_path) if args.lm_eval_include_path else None
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(args.lm_eval_tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=include_path)
    for task in args.lm_eval_tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DistilyConfigError(
                f"lm_eval_tasks: {task!r} is not an lm-eval task{hint}; expected a task, group or tag of "
                "`lm_eval --tasks list`, or a task in lm_eval_include_path"
            )
    return manager


def _check_task_loads(task: str, manager) -> set[str]:
    """Build ``task`` as the harness will after training, which loads its data (from the datasets cache the
    second time), and return the names of the tasks it runs (``TaskManager.load``'s leaf tasks). Whatever the harness
    or ``datasets`` raise (a dataset not on the Hub, the Hub unreachable or offline without a cached copy, a bad task
    file) is told in one line."""
    try:
        return set(manager.load([task])["tasks"])
    except Exception as error:  # the harness lets any of datasets' and the Hub's errors through
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise DistilyConfigError(
            f"lm_eval_tasks: {task!r} could not be loaded ({type(error).__name__}: {reason}); expected its dataset "
            "to be reachable: online, or in the datasets cache when offline (HF_DATASETS_OFFLINE=1), or a task in "
            "lm_eval_include_path whose data files are local"
        ) from error


def check_chat_template(tokenizer: PreTrainedTokenizerBase, args: EvaluationArguments) -> None:
    """With ``lm_eval_apply_chat_template``, the tokenizer must have a chat template (checked before training)."""
    if args.lm_eval_tasks and args.lm_eval_apply_chat_template and not tokenizer.chat_template:
        raise DistilyConfigError(
            f"lm_eval_apply_chat_template=true, but the tokenizer ({type(tokenizer).__name__}) has no chat template; "
            "expected a chat model's tokenizer, or lm_eval_apply_chat_template=false"
        )


def _descendants(group_subtasks: dict[str, list[str]], names: list[str]) -> set[str]:
    found, pending = set(), list(names)
    while pending:
        for child in group_subtasks.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _scores(values: dict[str, Any]) -> dict[str, float]:
    """A task's or group's numbers in the harness's results (``metric,filter``), named by ``_metric_name``."""
    return {_metric_name(*key.split(",", 1)): float(value) for key, value in values.items()
            if "," in key and isinstance(value, (int, float))}


def _hidden(group_subtasks: dict[str, list[str]], results: dict[str, dict], names: list[str]) -> set[str]:
    """What ``names`` report in place of: every member of a group with its own aggregate; for a group without one
    (the harness gives it no numbers), what its members report in place of."""
    hidden = set()
    for name in names:
        if _scores(results.get(name, {})):
            hidden |= _descendants(group_subtasks, [name])
        else:
            hidden |= _hidden(group_subtasks, results, group_subtasks.get(name, []))
    return hidden


def task_results(raw: dict[str, Any], requested: list[str]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value, metric_stderr: value, samples: n, num_fewshot: k}}`` from the harness's results (n:
    the examples scored, k: the few-shot examples in each prompt): the requested tasks and groups (a group's own
    aggregate, not its members; a group without an aggregate, its members), and the members of requested tags. A
    metric with a filter other than ``none`` is named ``metric_filter``, its stderr ``metric_filter_stderr`` (the
    name the tables and the model card read as that metric's stderr); stderrs the harness did not compute are left
    out.
    """
    hidden = _hidden(raw.get("group_subtasks", {}), raw["results"], requested) - set(requested)
    results = {}
    for task, values in raw["results"].items():
        metrics = _scores(values)
        if task in hidden or not metrics:
            continue
        samples = raw.get("n-samples", {}).get(task, {}).get("effective")
        if samples is not None:
            metrics[SAMPLES] = samples
        shots = raw.get("n-shot", {}).get(task)
        if shots is not None:
            metrics[FEWSHOT] = shots
        results[task] = metrics
    return results


def _metric_name(metric: str, filter_name: str) -> str:
    """The harness's ``metric,filter`` as one name: ``metric``, or ``metric_filter`` for a filter other than ``none``;
    a stderr (``metric_stderr,filter``) keeps ``_stderr`` last, so that it stays its metric's stderr."""
    if filter_name == "none":
        return metric
    base = metric.removesuffix("_stderr")
    return f"{base}_{filter_name}" + ("_stderr" if base != metric else "")


def harness_template(tokenizer: PreTrainedTokenizerBase, chat_template_kwargs: Optional[dict],
                     chat_template_date: Optional[str]) -> Optional[ChatTemplate]:
    """The template the harness renders chat prompts with: the tokenizer's, its variables, and for a template that
    writes the day it is rendered, the run's date (None: today); None for a tokenizer of named templates (lm-eval
    picks one and renders it as it is)."""
    if not isinstance(tokenizer.chat_template, str):
        return None
    return run_chat_template(tokenizer, None, chat_template_kwargs, date=chat_template_date)


def run_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: EvaluationArguments,
    manager,
    batch_size: int,
    chat_template_kwargs: Optional[dict] = None,
    chat_template_date: Optional[str] = None,
    model_name: str = "the model",
) -> dict[str, dict[str, float]]:
    """``task_results`` of ``model`` (``model_name`` in the line logged) on ``args.lm_eval_tasks`` (the model is left
    in eval mode). With ``lm_eval_apply_chat_template`` the harness renders prompts with the tokenizer's chat template
    (and ``chat_template_kwargs``; a template that writes the day, pinned on ``chat_template_date``), few-shot
    examples as turns of the conversation; ``lm_eval_model_args`` go to HFLM."""
    import lm_eval

    from distily.evaluation.harness_model import HarnessModel

    logger.info(f"lm-eval on {model_name}: {', '.join(args.lm_eval_tasks)}")
    chat = {"apply_chat_template": True, "fewshot_as_multiturn": True} if args.lm_eval_apply_chat_template else {}
    arguments = dict(chat_template_kwargs or {})  # HFLM renders with apply_chat_template(..., **chat_template_args)
    template = harness_template(tokenizer, chat_template_kwargs, chat_template_date) if chat else None
    if template is not None:  # the template pinned on the run's date: lm-eval's own rendering reads the clock
        arguments["chat_template"] = template.pinned_text
    variables = {"chat_template_args": arguments} if chat and arguments else {}
    # HFLM warns that a model passed in skips its own loading and distributed setup, as Distily means it to
    with quieted("lm_eval.models.huggingface", logging.ERROR):
        wrapped = HarnessModel(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **variables,
                               **args.lm_eval_model_args)
    raw = lm_eval.simple_evaluate(
        model=wrapped,
        tasks=list(args.lm_eval_tasks),
        num_fewshot=args.lm_eval_num_fewshot,
        limit=args.lm_eval_limit,
        bootstrap_iters=args.lm_eval_bootstrap_iters,
        task_manager=manager,
        log_samples=False,
        **chat,
    )
    return task_results(raw, list(args.lm_eval_tasks))


def _folder_fingerprint(path: Optional[str]) -> list:
    """Names and contents' hashes of the files under a local directory (task YAMLs and their data)."""
    if path is None or not os.path.isdir(os.path.expanduser(path)):
        return []
    root = Path(os.path.expanduser(path))
    return [
        (str(file.relative_to(root)), hashlib.sha256(file.read_bytes()).hexdigest())
        for file in sorted(root.rglob("*"))
        if file.is_file()
    ]


def teacher_cache_key(
    teacher: PreTrainedModel, teacher_name_or_path: str, tokenizer: PreTrainedTokenizerBase, args: EvaluationArguments,
    chat_template_kwargs: Optional[dict] = None, chat_template_date: Optional[str] = None,
) -> str:
    """What the teacher's results depend on: the teacher (its config, and its weight files' sizes and times or
    its Hub revision), the tasks and their local definitions, the settings (``lm_eval_model_args``; with
    ``lm_eval_apply_chat_template``, the chat template the prompts are rendered with, its variables and the date a
    dated one writes), and the harness version."""
    from importlib.metadata import version

    local = Path(os.path.expanduser(teacher_name_or_path))
    if local.is_dir():
        weights = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(local)]
    else:
        weights = getattr(teacher.config, "_commit_hash", None)
    content = {
        "teacher": teacher_name_or_path,
        "config": teacher.config.to_dict(),
        "weights": weights,
        "dtype": str(teacher.dtype),
        "tasks": sorted(args.lm_eval_tasks),
        "local_tasks": _folder_fingerprint(args.lm_eval_include_path),
        "limit": args.lm_eval_limit,
        "num_fewshot": args.lm_eval_num_fewshot,
        "bootstrap_iters": args.lm_eval_bootstrap_iters,
        "lm_eval": version("lm_eval"),
    }
    if args.lm_eval_model_args:  # absent when none: the keys of results cached before they existed hold
        content["model_args"] = args.lm_eval_model_args
    if args.lm_eval_apply_chat_template:  # absent when off: the keys of results cached before it existed hold
        content["apply_chat_template"] = tokenizer.chat_template
        if chat_template_kwargs:
            content["chat_template_kwargs"] = chat_template_kwargs
        template = harness_template(tokenizer, chat_template_kwargs, chat_template_date)
        if template is not None and template.date:  # a dated template's prompts read the date
            content["chat_template_date"] = template.date
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_teacher_results(
    teacher: PreTrainedModel,
    teacher_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    args: EvaluationArguments,
    manager,
    batch_size: int,
    chat_template_kwargs: Optional[dict] = None,
    chat_template_date: Optional[str] = None,
) -> dict[str, dict[str, float]]:
    """``run_tasks`` for the teacher, read from the cache when this teacher ran these tasks before."""
    key = teacher_cache_key(teacher, teacher_name_or_path, tokenizer, args, chat_template_kwargs, chat_template_date)
    path = Path(os.path.expanduser(args.lm_eval_cache_dir or distily_cache_dir("lm_eval"))) / f"{key}.json"
    if path.is_file():
        logger.info(f"lm-eval on the teacher: {', '.join(args.lm_eval_tasks)}, read from the cache ({path})")
        return json.loads(path.read_text())
    results = run_tasks(teacher, tokenizer, args, manager, batch_size, chat_template_kwargs, chat_template_date,
                        model_name="the teacher")
    write_json_atomic(path, results)
    return results
