"""What a user configures about evaluation: perplexity sets, the overlap check, greedy answers to held-out
prompts, lm-eval benchmarks, and what ``distily eval`` evaluates."""

import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from distily.arguments import check_local_path_exists, check_not_blank, file_in_the_way, json_dict, one_of
from distily.data.arguments import (
    CHAT_TEMPLATE_KWARGS_HELP, PACKING_HELP, PACKINGS, TEXT_DOCUMENT_DELIMITER_HELP, chat_template_date,
    chat_template_kwargs,
)
from distily.errors import DistilyConfigError
from distily.models.arguments import TORCH_DTYPES

# a user's metric of generated answers (generation_eval_metric): ``module:function``, an importable
# ``function(prediction, reference) -> float`` averaged over the prompts
METRIC_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
EXACT_MATCH, KL_TO_TEACHER, SAMPLES = "exact_match", "kl_to_teacher", "samples"  # generation metrics Distily names
BUILT_IN = (EXACT_MATCH, KL_TO_TEACHER, SAMPLES)  # itself: no user metric may take their names
FEWSHOT = "num_fewshot"  # beside SAMPLES in an lm-eval task's results: the few-shot examples in each prompt


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


EVAL_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
EVAL_SET_KEYS = ("path", "config", "split", "text_column", "max_samples")
HELDOUT_SET = "heldout"  # the held-out split of the training dataset, always evaluated


def _eval_sets(value: Any) -> dict[str, dict]:
    """``eval_datasets`` as ``{name: {path, config, split, text_column, max_samples}}``."""
    sets = {}
    for name, spec in json_dict(value, "eval_datasets").items():
        where = f"eval_datasets[{name!r}]"
        if not EVAL_SET_NAME.match(name) or name == HELDOUT_SET:
            raise DistilyConfigError(
                f"{where}: the name is not usable; expected letters, digits, '_', '.' or '-', and not "
                f"{HELDOUT_SET!r}"
            )
        spec = {"path": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise DistilyConfigError(f"{where}={spec!r}; expected a path or Hub id, or an object with a 'path'")
        check_not_blank(spec["path"], f"{where} path", "a Hub dataset id or a local path")
        check_local_path_exists(spec["path"], f"{where} path")
        unknown = sorted(set(spec) - set(EVAL_SET_KEYS))
        if unknown:
            raise DistilyConfigError(
                f"{where} has unknown key {unknown[0]!r}; expected keys among {', '.join(EVAL_SET_KEYS)}"
            )
        max_samples = spec.get("max_samples")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise DistilyConfigError(f"{where} max_samples={max_samples!r} must be a positive integer")
        sets[name] = {"config": None, "split": "train", "text_column": "text", "max_samples": None, **spec}
    return sets


@dataclass
class EvaluationArguments:
    """What is measured besides the objective: perplexity sets, overlap with the training data, benchmarks."""

    eval_datasets: Optional[Union[dict, str]] = field(
        default=None,
        metadata={
            "help": "JSON object of named perplexity sets, measured for teacher and student at every evaluation. "
            "A value is a Hub dataset id or a local path (txt/jsonl/json/parquet file or directory), or an object "
            "with path, config, split (slices such as train[:2000] work), text_column and max_samples (default: "
            'max_eval_samples), e.g. \'{"recent": "data/wiki_2025.jsonl", "fr": {"path": "wikimedia/wikipedia", '
            '"config": "20231101.fr", "split": "train[:2000]"}}\'.'
        },
    )
    eval_overlap_ngram: int = field(
        default=13,
        metadata={
            "help": "Eval sets and the held-out split are checked against the training sequences by content: a "
            "sequence overlaps when it shares a span of this many tokens with one. Overlaps are reported "
            "(metrics.json, model card). 0 skips the check."
        },
    )
    generation_eval_dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Held-out prompts answered greedily by the student (before and after training, at every "
            "evaluation) and the teacher: a Hub id or a local jsonl/json/parquet file or directory of chat data "
            "(messages ending with the assistant's reference answer, or prompt + completion). Exact match in "
            "percent, generation_eval_metric, and KL(teacher || student) per token on the student's own answers."
        },
    )
    generation_eval_split: str = field(
        default="train", metadata={"help": "Split of generation_eval_dataset (slices such as train[:100] work)."}
    )
    generation_eval_max_samples: int = field(
        default=128, metadata={"help": "Prompts of generation_eval_dataset answered (its first ones)."}
    )
    generation_eval_max_new_tokens: int = field(
        default=128, metadata={"help": "Tokens generated at most per answer (an end-of-text token ends it earlier)."}
    )
    generation_eval_metric: Optional[str] = field(
        default=None,
        metadata={
            "help": "A metric of the answers besides exact match, as module:function (importable, called as "
            "function(prediction, reference) -> float and averaged over the prompts), e.g. my_metrics:char_f1."
        },
    )
    generation_eval_answer_after: Optional[str] = field(
        default=None,
        metadata={
            "help": "Text that closes a reasoning section, e.g. </think>: exact match and generation_eval_metric read "
            "an answer after its last occurrence (an answer without it, whole), so a model that reasons first is "
            "scored on its final answer."
        },
    )
    lm_eval_tasks: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "lm-evaluation-harness tasks run after training on the student and on the teacher (cached), "
            "e.g. mmlu_pro hellaswag, or tasks defined in lm_eval_include_path. Needs `pip install distily[eval]`."
        },
    )
    lm_eval_include_path: Optional[str] = field(
        default=None,
        metadata={"help": "Directory of local lm-eval task YAML files (with local data files, so they run offline)."},
    )
    lm_eval_limit: Optional[float] = field(
        default=None,
        metadata={
            "help": "Examples per lm-eval task: a count, or a fraction if < 1. Default: all. A limited run is a "
            "sample, and its scores are marked so."
        },
    )
    lm_eval_num_fewshot: Optional[int] = field(
        default=None, metadata={"help": "Few-shot examples per lm-eval prompt. Default: each task's own."}
    )
    lm_eval_bootstrap_iters: int = field(
        default=100000,
        metadata={"help": "Bootstrap iterations for lm-eval standard errors of non-mean metrics (0: no stderr)."},
    )
    lm_eval_apply_chat_template: bool = field(
        default=False,
        metadata={
            "help": "lm-eval formats each prompt with the tokenizer's chat template, few-shot examples as turns "
            "of the conversation (for chat models; tasks that support it)."
        },
    )
    lm_eval_cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Where the teacher's lm-eval results are kept, by teacher, tasks and settings, so a teacher is "
            "benchmarked once. Default: $HF_HOME/distily/lm_eval."
        },
    )
    lm_eval_model_args: Optional[Union[dict, str]] = field(
        default=None,
        metadata={
            "help": "More arguments of lm-eval's HFLM model, as a JSON object, for teacher and student alike: e.g. "
            "{\"think_end_token\": \"</think>\"} (a reasoning model's generated answers are read after its "
            "reasoning), {\"max_length\": 4096}, {\"add_bos_token\": true}. The models are Distily's, already "
            "loaded, so arguments about loading one (dtype, device, peft, parallelize, ...) are refused; the chat "
            "template's variables are chat_template_kwargs."
        },
    )

    def __post_init__(self):
        self.eval_datasets = _eval_sets(self.eval_datasets)
        check_local_path_exists(self.generation_eval_dataset, "generation_eval_dataset")
        for name in ("eval_overlap_ngram", "lm_eval_bootstrap_iters", "lm_eval_num_fewshot"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DistilyConfigError(f"{name}={value} must be >= 0")
        for name in ("generation_eval_max_samples", "generation_eval_max_new_tokens"):
            value = getattr(self, name)
            if value < 1:
                raise DistilyConfigError(f"{name}={value} must be a positive integer")
        for name in ("generation_eval_metric", "generation_eval_answer_after"):
            if getattr(self, name) is not None and self.generation_eval_dataset is None:
                raise DistilyConfigError(
                    f"{name}={getattr(self, name)!r} is set without generation_eval_dataset; expected the prompts to "
                    "answer"
                )
        if self.generation_eval_answer_after is not None and not self.generation_eval_answer_after.strip():
            raise DistilyConfigError("generation_eval_answer_after='' marks nothing; expected text such as </think>")
        if self.generation_eval_metric is not None:
            load_metric(self.generation_eval_metric)
        self.lm_eval_model_args = json_dict(self.lm_eval_model_args, "lm_eval_model_args")
        if self.lm_eval_model_args and not self.lm_eval_tasks:
            raise DistilyConfigError(
                f"lm_eval_model_args={self.lm_eval_model_args} is set without lm_eval_tasks; expected the tasks to run"
            )
        limit = self.lm_eval_limit
        if limit is not None:
            if limit <= 0 or (limit >= 1 and limit != int(limit)):
                raise DistilyConfigError(
                    f"lm_eval_limit={limit} is not usable; expected a count, or a fraction 0 < x < 1"
                )
            self.lm_eval_limit = int(limit) if limit >= 1 else limit
        if self.lm_eval_include_path is not None:
            if not os.path.isdir(os.path.expanduser(self.lm_eval_include_path)):
                raise DistilyConfigError(
                    f"lm_eval_include_path={self.lm_eval_include_path!r} is not a directory; expected a directory of "
                    "lm-eval task YAML files"
                )
            if not self.lm_eval_tasks:
                raise DistilyConfigError(
                    f"lm_eval_include_path={self.lm_eval_include_path!r} is set without lm_eval_tasks; expected the "
                    "names of the tasks to run"
                )


@dataclass
class EvalCommandArguments:
    """``distily eval``: the model to evaluate, its teacher, and where the results go."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The model evaluated: a Hub id or a local checkpoint directory (required)."}
    )
    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Its teacher, evaluated beside it and compared to it (optional)."}
    )
    torch_dtype: str = field(
        default="auto", metadata={"help": f"Weights dtype of both models, one of {', '.join(TORCH_DTYPES)}."}
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Length of the packed sequences. Default: the smaller of the models' limit and 1024."},
    )
    packing: str = field(default="auto", metadata={"help": PACKING_HELP})
    text_document_delimiter: str = field(default="blank_line", metadata={"help": TEXT_DOCUMENT_DELIMITER_HELP})
    max_eval_samples: Optional[int] = field(
        default=256, metadata={"help": "Limit on the packed sequences of each eval set."}
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences (or prompts) per batch."})
    chat_template: Optional[str] = field(
        default=None,
        metadata={
            "help": "Jinja chat template (the string, or a path to a .jinja file) the prompts of "
            "generation_eval_dataset, and with lm_eval_apply_chat_template lm-eval's, are rendered with; default: "
            "the model tokenizer's own."
        },
    )
    chat_template_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": CHAT_TEMPLATE_KWARGS_HELP}
    )
    chat_template_date: Optional[str] = field(
        default=None,
        metadata={
            "help": "The date (YYYY-MM-DD) a chat template that writes the day it is rendered (strftime_now) renders "
            "those prompts with (a distilled student's run_settings.json holds its run's); default: today (UTC)."
        },
    )
    tokenization_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where tokenized eval sets are cached. Default: $HF_HOME/distily/tokenized."}
    )
    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where eval.json, results.md and the comparison plot are written (optional)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub for both models."}
    )

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise DistilyConfigError("no model to evaluate; expected `distily eval MODEL` (a Hub id or a checkpoint)")
        one_of(self.torch_dtype, TORCH_DTYPES, "torch_dtype")
        one_of(self.packing, PACKINGS, "packing")
        self.chat_template_kwargs = chat_template_kwargs(self.chat_template_kwargs)
        self.chat_template_date = chat_template_date(self.chat_template_date)
        for name in ("max_seq_length", "max_eval_samples", "per_device_eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DistilyConfigError(f"{name}={value} must be a positive integer")
        blocked = file_in_the_way(self.output_dir) if self.output_dir is not None else None
        if blocked is not None:  # refused now, not after the evaluation when the results are written
            raise DistilyConfigError(f"output_dir={self.output_dir!r} {blocked}; expected a directory")
