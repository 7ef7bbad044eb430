"""Teacher against student(s) as a markdown table, and the rows, labels and number formats the plots share.

Everything here but ``run_columns`` reads plain metric dicts: *columns* ``{column name: {metric: value}}`` with
the same metric names in each column (``perplexity``, ``<set>_perplexity``, ``generation/<metric>``,
``lm_eval/<task>/<metric>``, ...).

Perplexity and next-token loss are per token, so they compare models only when they share a tokenizer; bits per
byte compare any two. When the compared models' tokenizers differ, the bits-per-byte rows come first.
"""

import math
from typing import Optional

from distily.evaluation.arguments import EXACT_MATCH, FEWSHOT, HELDOUT_SET, KL_TO_TEACHER, SAMPLES
from distily.metrics import BYTE_METRICS, GENERATION, PER_SET_METRICS, RunMetrics, generation_key

LM_EVAL = "lm_eval"
MIB = 2**20
LABELS = {
    "loss": "distillation loss (the objective)",
    "lm_loss": "next-token loss (nats)",
    "perplexity": "perplexity",
    "bits_per_byte": "bits per byte (UTF-8)",
    "nats_per_byte": "nats per byte (UTF-8)",
    "kl_to_teacher": "KL(teacher ‖ model) per token (nats)",
    "top1_agreement": "top-1 agreement with the teacher",
    "parameters": "parameters",
    "size_on_disk_bytes": "size on disk (MiB)",
}
GENERATION_LABELS = {EXACT_MATCH: "exact match (%)", KL_TO_TEACHER: "KL(teacher ‖ model) per token of its answers"}


def flat_lm_eval(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{task: {metric: value}}`` as ``{"lm_eval/<task>/<metric>": value}``."""
    return {f"{LM_EVAL}/{task}/{metric}": value for task, found in results.items() for metric, value in found.items()}


def _sized(model, evaluation: dict) -> dict:
    """A model's column: its evaluation, size and lm-eval results."""
    return {**evaluation, "parameters": model.parameters, "size_on_disk_bytes": model.size_on_disk_bytes,
            **flat_lm_eval(model.lm_eval or {})}


def run_columns(metrics: RunMetrics) -> dict[str, dict[str, float]]:
    """A finished run's metrics as columns: the teacher, the student before and after training."""
    student = metrics.student
    return {
        "teacher": _sized(metrics.teacher, metrics.teacher.evaluation.values),
        "student (before)": dict(student.before.values),
        "student (after)": _sized(student, student.after.values),
    }


def _set_names(columns: dict[str, dict]) -> list[str]:
    """The named eval sets in the columns, in order of appearance."""
    names = []
    for values in columns.values():
        for key in values:
            name = key.removesuffix("_perplexity")
            if key.endswith("_perplexity") and not key.startswith(f"{LM_EVAL}/") and name not in names:
                names.append(name)
    return names


def _is_byte_metric(key: str) -> bool:
    return any(key == metric or key.endswith(f"_{metric}") for metric in BYTE_METRICS)


def _namespaced(columns: dict[str, dict], namespace: str) -> list[str]:
    """The keys ``<namespace>/...`` of the columns in order of appearance, without stderrs and the counts of examples
    and few-shot examples."""
    found = [key for values in columns.values() for key in values
             if key.startswith(f"{namespace}/") and not key.endswith(("_stderr", f"/{SAMPLES}", f"/{FEWSHOT}"))]
    return list(dict.fromkeys(found))


def row_keys(columns: dict[str, dict], tokenizers_differ: bool = False) -> list[str]:
    """The metrics shown, in order: objective loss, held-out split, each named set, answers to held-out prompts,
    lm-eval, size; when the models' ``tokenizers_differ``, the bits and nats per byte of every set first (the
    per-token rows do not compare them)."""
    keys = ["loss", *PER_SET_METRICS]
    keys += [f"{name}_{metric}" for name in _set_names(columns) for metric in PER_SET_METRICS]
    keys += _namespaced(columns, GENERATION) + _namespaced(columns, LM_EVAL)
    keys += ["parameters", "size_on_disk_bytes"]
    if tokenizers_differ:
        keys = sorted(keys, key=lambda key: not _is_byte_metric(key))  # stable: each group keeps its order
    return [key for key in keys if any(is_number(values.get(key)) for values in columns.values())]


def _first(columns: Optional[dict[str, dict]], key: str):
    """``key``'s value in the first column that has it; None when none has."""
    return next((values[key] for values in (columns or {}).values() if key in values), None)


def _counted(title: str, samples_key: str, columns: Optional[dict[str, dict]], shots_key: Optional[str] = None) -> str:
    """``title`` with the number of examples scored and of few-shot examples per prompt, when a column has them."""
    samples, shots = _first(columns, samples_key), shots_key and _first(columns, shots_key)
    counts = ([f"n={samples:g}"] if samples is not None else []) + ([f"{shots:g}-shot"] if shots is not None else [])
    return title + (f" ({', '.join(counts)})" if counts else "")


def label(key: str, columns: Optional[dict[str, dict]] = None) -> str:
    if key.startswith(f"{LM_EVAL}/"):
        _, task, metric = key.split("/", 2)
        return _counted(f"{task}: {metric}", f"{LM_EVAL}/{task}/{SAMPLES}", columns, f"{LM_EVAL}/{task}/{FEWSHOT}")
    if key.startswith(f"{GENERATION}/"):
        metric = key.split("/", 1)[1]
        return _counted(f"held-out prompts: {GENERATION_LABELS.get(metric, metric)}", generation_key(SAMPLES), columns)
    for metric in PER_SET_METRICS:
        if key.endswith(f"_{metric}"):
            return f"{key.removesuffix('_' + metric)}: {LABELS[metric]}"
    where = f"{HELDOUT_SET}: " if key in PER_SET_METRICS else ""
    return where + LABELS.get(key, key)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_nan(value) -> bool:
    """Whether a metric's value is NaN: what a student measures once it has diverged."""
    return isinstance(value, float) and math.isnan(value)


def format_value(key: str, values: dict) -> str:
    value = values.get(key)
    if not is_number(value):
        return "—"
    if key == "parameters":
        return f"{value:,}"
    if key == "size_on_disk_bytes":
        return f"{value / MIB:,.1f}"
    if key.startswith(f"{LM_EVAL}/"):
        stderr = values.get(f"{key}_stderr")
        return f"{value:.4f}" + (f" ± {stderr:.4f}" if is_number(stderr) else "")
    if key == generation_key(EXACT_MATCH):
        return f"{value:.1f}"
    if key.endswith("perplexity"):
        return f"{value:,.2f}"
    return f"{value:.4f}"


def markdown_table(columns: dict[str, dict[str, float]], tokenizers_differ: bool = False) -> str:
    """One row per metric of ``row_keys``, one column per model; ``—`` where a model has no value."""
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key in row_keys(columns, tokenizers_differ):
        cells = " | ".join(format_value(key, values) for values in columns.values())
        lines.append(f"| {label(key, columns)} | {cells} |")
    return "\n".join(lines) + "\n"
