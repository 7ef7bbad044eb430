"""Layer-selection search: which teacher layers to distill into which student layers.

Each candidate layer map becomes one short run of the sweep (its base and ``set``, with the component's
layer map replaced by the candidate's explicit pairs), and the sweep ranks the candidates by its metric, by default
held-out bits per byte (in the order of held-out loss: the candidates share a tokenizer). In a sweep file, instead
of ``grid`` and ``runs``::

    layer_search:
      component: hidden_states      # or attentions, attention_relations: whose *_layer_map is searched
      maps: [all, last, uniform, uniform_last, {last_k: {k: 2}}]   # named maps (default: the first four)
      single_pairs: {student: [3], teacher: all}   # also every (student, teacher) pair alone (optional)

Candidates that give the same pairs run once, under the first name; a named map that does not fit the
depths (``uniform`` for a student deeper than its teacher) is left out with a warning.
"""

import logging

from transformers import AutoConfig

from distily.config import DistillConfig
from distily.errors import DistilyConfigError
from distily.experiments.runs import Run, render_overrides, run_name
from distily.models.arguments import ModelArguments
from distily.models.student import student_config, text_depth
from distily.models.teacher import from_pretrained, teacher_config
from distily.objectives.layer_maps import LAYER_MAPS, resolve_layer_map

logger = logging.getLogger(__name__)

COMPONENTS = ("hidden_states", "attentions", "attention_relations")
DEFAULT_MAPS = ("all", "last", "uniform", "uniform_last")
SEARCH_KEYS = ("component", "maps", "single_pairs")


def model_depths(model_args: ModelArguments) -> tuple[int, int]:
    """(student, teacher) decoder depths, read from their configs: no weights are loaded. Of a multimodal teacher,
    its language model's, whose config the student is built from, as the run does."""
    name = model_args.teacher_model_name_or_path
    if name is None:
        raise DistilyConfigError("teacher_model_name_or_path is not set; expected a Hub id or a local checkpoint")
    remote = {"trust_remote_code": model_args.trust_remote_code}
    teacher = teacher_config(from_pretrained(AutoConfig, name, "teacher config", **remote), name)
    if model_args.student_model_name_or_path is not None:
        student = from_pretrained(AutoConfig, model_args.student_model_name_or_path, "student config", **remote)
    else:
        student = student_config(model_args, teacher)
    return text_depth(student), text_depth(teacher)


def _named_maps(entries, where: str) -> list[tuple[str, dict]]:
    """``[name, {name: {param: value}}, ...]`` as (name, params) pairs, names checked against LAYER_MAPS."""
    if not isinstance(entries, list):
        raise DistilyConfigError(f"{where}: layer_search.maps={entries!r} is not a list; expected e.g. [all, last]")
    maps = []
    for entry in entries:
        if isinstance(entry, dict) and len(entry) == 1 and isinstance(next(iter(entry.values())), dict):
            (name, params), = entry.items()
        elif isinstance(entry, str):
            name, params = entry, {}
        else:
            raise DistilyConfigError(
                f"{where}: layer_search.maps entry {entry!r} is not a map name or {{name: {{param: value}}}}; "
                "expected e.g. last or {last_k: {k: 2}}"
            )
        if name not in LAYER_MAPS:
            raise DistilyConfigError(
                f"{where}: layer_search.maps entry {name!r} is not a registered layer map; expected one of "
                f"{', '.join(LAYER_MAPS)}"
            )
        maps.append((name, params))
    return maps


def _layer_indices(value, depth: int, low: int, what: str, where: str) -> list[int]:
    if value == "all":
        return list(range(low, depth + 1))
    if isinstance(value, list) and value and all(type(i) is int and low <= i <= depth for i in value):  # not a bool
        return value
    raise DistilyConfigError(
        f"{where}: layer_search.single_pairs.{what}={value!r} is not 'all' or a list of {what} indices; expected "
        f"indices in {low}..{depth}"
    )


def _single_pairs(spec, student_depth: int, teacher_depth: int, low: int, where: str) -> list[tuple[int, int]]:
    if not isinstance(spec, dict) or set(spec) - {"student", "teacher"}:
        raise DistilyConfigError(
            f"{where}: layer_search.single_pairs={spec!r} is not a mapping of student and teacher indices; expected "
            "e.g. {student: [3], teacher: all}"
        )
    students = _layer_indices(spec.get("student", "all"), student_depth, low, "student", where)
    teachers = _layer_indices(spec.get("teacher", "all"), teacher_depth, low, "teacher", where)
    return [(s, t) for s in students for t in teachers]


def layer_search_runs(spec, config: DistillConfig, where: str) -> list[Run]:
    """One run per distinct candidate of the ``layer_search`` section, for the base ``config``."""
    if not isinstance(spec, dict) or set(spec) - set(SEARCH_KEYS):
        unknown = sorted(set(spec) - set(SEARCH_KEYS)) if isinstance(spec, dict) else spec
        raise DistilyConfigError(
            f"{where}: layer_search has {unknown!r}; expected a mapping with keys among {', '.join(SEARCH_KEYS)}"
        )
    component = spec.get("component", "hidden_states")
    if component not in COMPONENTS:
        raise DistilyConfigError(
            f"{where}: layer_search.component={component!r} is not supported; expected one of {', '.join(COMPONENTS)}"
        )
    if getattr(config.objective, f"{component}_weight") == 0:
        raise DistilyConfigError(
            f"{where}: layer_search searches {component} but {component}_weight is 0; expected a weight > 0 in the "
            "base or in set"
        )
    student_depth, teacher_depth = model_depths(config.model)
    option, allow_embeddings = f"{component}_layer_map", component == "hidden_states"
    candidates: dict[tuple, str] = {}  # pairs -> label of the first candidate giving them
    for name, params in _named_maps(spec.get("maps", list(DEFAULT_MAPS)), where):
        try:
            pairs = resolve_layer_map(option, name, params, student_depth, teacher_depth, allow_embeddings)
        except DistilyConfigError as err:
            logger.warning(f"layer search: {err}; candidate left out")
            continue
        candidates.setdefault(tuple(pairs), "-".join(filter(None, [name, render_overrides(params)])))
    if "single_pairs" in spec:
        low = 0 if allow_embeddings else 1
        for pair in _single_pairs(spec["single_pairs"], student_depth, teacher_depth, low, where):
            candidates.setdefault((pair,), f"pair-{pair[0]}-{pair[1]}")
    if not candidates:
        raise DistilyConfigError(f"{where}: layer_search has no candidate that fits; expected maps or single_pairs")
    runs = []
    for pairs, label in candidates.items():
        overrides = {option: "pairs", f"{option}_kwargs": {"pairs": [list(pair) for pair in pairs]}}
        runs.append(Run(run_name(overrides, label), overrides))
    return runs
