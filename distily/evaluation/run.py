"""What a distillation run measures besides its loss: the named eval sets, loaded like the training data; the
check that they (and the held-out split) are disjoint from the training sequences; greedy answers to held-out
prompts; the lm-eval benchmarks."""

from typing import Optional

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.config import DistillConfig
from distily.data.tokenization_cache import default_cache_dir
from distily.evaluation.arguments import HELDOUT_SET
from distily.evaluation.generations import GenerationEvaluator, generation_eval
from distily.evaluation.harness import cached_teacher_results, run_tasks
from distily.evaluation.overlap import training_overlap
from distily.evaluation.perplexity import load_eval_sets
from distily.metrics import EvalSetSource, OverlapCheck


def named_eval_sets(
    config: DistillConfig, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> dict[str, datasets.Dataset]:
    cache_dir = config.data.tokenization_cache_dir or default_cache_dir()
    return load_eval_sets(
        config.evaluation.eval_datasets, tokenizer, max_seq_length, cache_dir, config.data.max_eval_samples,
        config.data.packing, config.data.text_document_delimiter,
    )


def eval_set_metrics(
    config: DistillConfig, eval_sets: dict[str, datasets.Dataset], train, heldout, max_seq_length
) -> tuple[dict[str, EvalSetSource], dict[str, OverlapCheck]]:
    """``metrics.json``'s ``eval_sets`` (where each came from, how many sequences) and ``eval_overlap`` (the
    content check against the training sequences; empty when ``eval_overlap_ngram`` is 0)."""
    specs = config.evaluation.eval_datasets
    sources = {name: EvalSetSource(**specs[name], sequences=len(dataset)) for name, dataset in eval_sets.items()}
    n = config.evaluation.eval_overlap_ngram
    overlap = training_overlap(train, {HELDOUT_SET: heldout, **eval_sets}, n, max_seq_length) if n else {}
    return sources, overlap


def generation_evaluator(
    config: DistillConfig, tokenizer: PreTrainedTokenizerBase, teacher: Optional[PreTrainedModel],
    vocab_size: Optional[int], chat_template: Optional[str],
) -> Optional[GenerationEvaluator]:
    """The student's (and ``teacher``'s) greedy answers to ``generation_eval_dataset``, None without one; the prompts
    are loaded now, so a bad set fails before training. ``teacher``: None when it does not run or reads other
    tokens than the student; ``chat_template``: the student's (``chat_template``, or ``student_chat_template`` for
    a student with its own tokenizer)."""
    found = generation_eval(config.evaluation, config.data, chat_template, config.data.chat_template_kwargs,
                            config.training.per_device_eval_batch_size)
    return None if found is None else GenerationEvaluator(found, tokenizer, teacher, vocab_size)


def benchmark(
    config: DistillConfig,
    student: PreTrainedModel,
    teacher: Optional[PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    manager,
) -> tuple[dict, Optional[dict]]:
    """lm-eval results of the student and (from the cache when it ran before) the teacher; the teacher's are
    None when ``teacher`` is None (only its recorded outputs are at hand)."""
    batch_size = config.training.per_device_eval_batch_size
    chat = config.data.chat_template_kwargs, config.data.chat_template_date  # the run's: lm-eval renders with them
    student_results = run_tasks(student, tokenizer, config.evaluation, manager, batch_size, *chat,
                                model_name="the student")
    if teacher is None:
        return student_results, None
    return student_results, cached_teacher_results(
        teacher, config.model.teacher_model_name_or_path, tokenizer, config.evaluation, manager, batch_size, *chat
    )
