"""A user's metric of generated answers, named ``module:function`` (``generation_eval_metric``): an importable
function called as ``function(prediction, reference) -> float``, averaged over the prompts."""

import importlib
import re
from typing import Callable

from distily.errors import DistilyConfigError

METRIC_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BUILT_IN = ("exact_match", "kl_to_teacher", "samples")  # generation metrics Distily names itself


def metric_name(path: str) -> str:
    """The metric's name in the results: the function's."""
    return path.rsplit(":", 1)[1]


def load_metric(path: str) -> Callable[[str, str], float]:
    """The function ``path`` names, checked to be importable, callable and not named like a built-in metric."""
    where = f"generation_eval_metric={path!r}"
    if not METRIC_PATH.match(path):
        raise DistilyConfigError(f"{where} is not usable; expected module:function, e.g. my_metrics:char_f1")
    module_name, function_name = path.split(":")
    if function_name in BUILT_IN:
        raise DistilyConfigError(f"{where} is named like a built-in metric; expected a name other than "
                                 f"{', '.join(BUILT_IN)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DistilyConfigError(f"{where}: module {module_name!r} cannot be imported ({error}); expected an "
                                 "importable module (on PYTHONPATH or installed)") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DistilyConfigError(f"{where}: {module_name!r} has no function {function_name!r}; expected "
                                 "function(prediction, reference) -> float")
    return function
