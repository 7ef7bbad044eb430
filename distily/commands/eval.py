"""``distily eval MODEL [--teacher_model_name_or_path T]``: the evaluation of a run, on its own.

The same measurements as during and after distillation (perplexity on named eval sets, agreement with
the teacher, greedy answers to held-out prompts, lm-eval tasks with the teacher's results cached), for any
causal LM and teacher.
"""

import os
from functools import partial
from pathlib import Path

from transformers import AutoConfig, PreTrainedModel
from transformers.utils import CONFIG_NAME

from distily.config import EvalConfig, make_parser, parse_eval_config
from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.chat import adopt_chat_template, run_date
from distily.data.framing import check_models_keep_documents_apart
from distily.data.store import MANIFEST, PROGRESS
from distily.data.tokenization_cache import default_cache_dir
from distily.errors import DistilyConfigError
from distily.evaluation.generations import GenerationEvaluator, generation_eval
from distily.evaluation.harness import cached_teacher_results, check_chat_template, run_tasks, task_manager
from distily.evaluation.heldout import Evaluator
from distily.evaluation.perplexity import load_eval_sets
from distily.export.packed import load_packed_student
from distily.models.architecture import output_vocab_size, resolve_max_seq_length
from distily.models.bitnet import bitnet_format, is_bitnet, load_bitnet_student
from distily.models.teacher import DTYPES, from_pretrained, load_teacher, load_tokenizer
from distily.models.vocab import check_same_tokenizer, shared_vocab_size
from distily.outputs import remove_earlier_outputs, write_json_atomic
from distily.reporting.plots import plot_comparison
from distily.reporting.tables import flat_lm_eval, markdown_table

RESULTS_FILE = "eval.json"
TEACHER_COLUMN = "teacher"


def model_column(name_or_path: str) -> str:
    """The evaluated model's column: the last part of its path (or its Hub id's), marked as the model's when that
    is the teacher column's name (a run's folder named ``teacher``), whose results it would otherwise replace."""
    name = Path(name_or_path).name or name_or_path
    return f"{name} (model)" if name == TEACHER_COLUMN else name


def load_model(name_or_path: str, dtype: str, trust_remote_code: bool) -> PreTrainedModel:
    """A frozen model in eval mode; a Distily BitNet student is rebuilt with its BitLinear layers, a packed export of
    one with its packed layers."""
    config = from_pretrained(AutoConfig, name_or_path, "model", trust_remote_code=trust_remote_code)
    if not is_bitnet(config):
        return load_teacher(name_or_path, dtype, trust_remote_code)
    weights_dtype = DTYPES[dtype] if dtype != "auto" else DTYPES["float32"]
    if bitnet_format(config) == "packed":
        return load_packed_student(name_or_path, weights_dtype)
    return load_bitnet_student(name_or_path, weights_dtype, trust_remote_code)


EVAL_OUTPUTS = (RESULTS_FILE, "results.md", "teacher_vs_student.png")


def check_eval_output_dir(output_dir: Path) -> None:
    """Before evaluating: ``output_dir`` may hold an earlier evaluation's files (``eval.json`` marks one), replaced,
    but no other ``results.md`` or plot of that name, such as a training run's own."""
    if (output_dir / RESULTS_FILE).is_file():
        return
    taken = [name for name in EVAL_OUTPUTS if os.path.lexists(output_dir / name)]
    if taken:
        raise DistilyConfigError(
            f"output_dir '{output_dir}' holds {taken[0]}, which no earlier distily eval wrote (a training run's?); "
            f"expected a new folder, e.g. '{output_dir / 'eval'}', or an earlier evaluation's"
        )


def check_not_a_store(name_or_path: str, key: str) -> None:
    """A teacher store (``distily record``'s folder: a manifest, or a recording's progress, and no model config) holds
    a teacher's outputs, not a model to evaluate."""
    path = Path(os.path.expanduser(name_or_path))
    if any((path / name).is_file() for name in (MANIFEST, PROGRESS)) and not (path / CONFIG_NAME).is_file():
        raise DistilyConfigError(
            f"{key}={name_or_path!r} is a teacher store (distily record's outputs of a teacher), not a model; expected "
            "a model's directory or Hub id, such as the teacher the store recorded"
        )


def run_evaluation(config: EvalConfig) -> dict:
    """``{"columns": {model name: metrics}, "table": markdown, "written": [paths]}``; with ``output_dir``, the
    results are written there (``written``: the files, empty without it)."""
    command, evaluation = config.command, config.evaluation
    check_not_a_store(command.model_name_or_path, "model_name_or_path")
    if command.teacher_model_name_or_path is not None:
        check_not_a_store(command.teacher_model_name_or_path, "teacher_model_name_or_path")
    if command.output_dir is not None:
        check_eval_output_dir(Path(command.output_dir))
    manager = task_manager(evaluation) if evaluation.lm_eval_tasks else None
    date = run_date(command.chat_template_date)  # one for the generation eval and lm-eval
    answering = generation_eval(evaluation, DataArguments(chat_template_date=date), command.chat_template,
                                command.chat_template_kwargs, command.per_device_eval_batch_size)
    model = load_model(command.model_name_or_path, command.torch_dtype, command.trust_remote_code)
    tokenizer = load_tokenizer(command.model_name_or_path, "model", command.trust_remote_code)
    adopt_chat_template(tokenizer, command.chat_template)  # lm-eval's chat prompts use it too
    check_chat_template(tokenizer, evaluation)
    teacher, teacher_tokenizer, vocab_size = None, None, None
    if command.teacher_model_name_or_path is not None:
        teacher = load_teacher(command.teacher_model_name_or_path, command.torch_dtype, command.trust_remote_code)
        teacher_tokenizer = load_tokenizer(command.teacher_model_name_or_path, "teacher", command.trust_remote_code)
        adopt_chat_template(teacher_tokenizer, command.chat_template)
        named = repr(command.model_name_or_path)  # as given: the model need not be a student
        check_same_tokenizer(teacher_tokenizer, tokenizer, model=named)
        vocab_size = shared_vocab_size(output_vocab_size(teacher), output_vocab_size(model), len(tokenizer), named)
    max_seq_length = resolve_max_seq_length(command.max_seq_length, *(m for m in (model, teacher) if m is not None))
    cache_dir = command.tokenization_cache_dir or default_cache_dir()
    sets = load_eval_sets(evaluation.eval_datasets, tokenizer, max_seq_length, cache_dir, command.max_eval_samples,
                          command.packing, command.text_document_delimiter)
    check_models_keep_documents_apart([("model", model), *([("teacher", teacher)] if teacher is not None else [])],
                                      None, sets.values())
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    evaluator = Evaluator(sets, partial(collate, pad_token_id=pad_token_id), command.per_device_eval_batch_size,
                          teacher, vocab_size, tokenizer, teacher_tokenizer)
    student_metrics, teacher_metrics = evaluator(model), evaluator.teacher_metrics()
    if answering is not None:
        generations = GenerationEvaluator(answering, tokenizer, teacher, vocab_size)
        student_metrics.update(generations(model))
        teacher_metrics.update(generations.teacher_metrics())
    if manager is not None:
        batch_size = command.per_device_eval_batch_size
        chat = command.chat_template_kwargs, date
        student_metrics.update(flat_lm_eval(run_tasks(model, tokenizer, evaluation, manager, batch_size, *chat)))
        if teacher is not None:
            teacher_metrics.update(flat_lm_eval(cached_teacher_results(
                teacher, command.teacher_model_name_or_path, tokenizer, evaluation, manager, batch_size, *chat
            )))
    columns = {TEACHER_COLUMN: teacher_metrics} if teacher is not None else {}
    columns[model_column(command.model_name_or_path)] = student_metrics
    table = markdown_table(columns)
    written = []
    if command.output_dir is not None:
        output_dir = Path(command.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_earlier_outputs(output_dir, EVAL_OUTPUTS)  # checked above to be an earlier evaluation's
        write_json_atomic(output_dir / RESULTS_FILE, {"columns": columns, "max_seq_length": max_seq_length})
        (output_dir / "results.md").write_text(table)
        plot = plot_comparison(columns, output_dir / "teacher_vs_student.png")
        written = [output_dir / RESULTS_FILE, output_dir / "results.md", *([plot] if plot is not None else [])]
    return {"columns": columns, "table": table, "written": written}


def main(args: list[str], command_line: str) -> int:
    if "-h" in args or "--help" in args:
        make_parser(EvalConfig).print_help()
        return 0
    flags = ["--model_name_or_path", *args] if args and not args[0].startswith("-") else args
    results = run_evaluation(parse_eval_config(flags))
    print(results["table"], end="")
    if results["written"]:
        folder = results["written"][0].parent
        print(f"wrote {', '.join(path.name for path in results['written'])} to {folder}")
    return 0
