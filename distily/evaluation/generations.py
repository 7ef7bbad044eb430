"""Greedy answers to held-out prompts, for chat students: exact match against reference answers, a user's
metric, and KL(teacher || model) per token on the model's own answers.

The prompts are chat data (``distily.data.chat``'s formats): ``messages`` rows whose last turn is the
assistant's reference answer, the turns before it ending with the user's (the prompt), or ``prompt`` +
``completion`` rows (the completion is the reference). Each prompt is rendered with the chat template and its
generation prompt (``prompt_ids``) and answered greedily by ``HFGenerator`` (batched, left-padded, KV cache);
an answer is its completion decoded without its stop token and special tokens, and without the text
the template writes before an answer's content, as that decoding shows it, when it starts with it
(``answer_opening``: Qwen3's template opens the last answer with an empty ``<think>`` block, which its models
write before answering without reasoning; gpt-oss's model writes ``<|channel|>final<|message|>``, shown as
``final``), and, with ``generation_eval_answer_after`` (such as ``</think>``), read after that text's last
occurrence. Exact match counts the answers equal to their references, both whitespace-stripped, in percent.
The KL is read on prompt + answer at the positions that predict the answer's tokens (``completion_batch``),
chunk by chunk as every held-out evaluation (``heldout_metrics``).

Metrics are named ``generation/exact_match``, ``generation/<metric function>``, ``generation/kl_to_teacher``
and ``generation/samples`` (the prompts answered).
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.batches import completion_batch
from distily.data.chat import (
    MESSAGES, chat_format, conversations, prompt_ids, run_chat_template,
)
from distily.data.sources import load_documents
from distily.errors import DistilyConfigError
from distily.evaluation.arguments import (
    EXACT_MATCH, KL_TO_TEACHER, SAMPLES, EvaluationArguments, load_metric, metric_name,
)
from distily.evaluation.heldout import heldout_metrics
from distily.generation.arguments import SamplingSettings
from distily.generation.backends import pad_token_id
from distily.generation.engine import (
    HFGenerator, answer_opening, chat_stop_ids, completion_text, vocabulary_size, without_opening,
)
from distily.metrics import generation_key


@dataclass(frozen=True)
class HeldoutPrompts:
    """Conversations to answer (each ending with the user's turn) and the reference answers."""

    conversations: list[list[dict]]
    references: list[str]
    source: str = "generation_eval_dataset"  # named in errors


def _prompt_and_reference(turns: list[dict], row: int, where: str) -> tuple[list[dict], str]:
    if turns[-1]["role"] != "assistant" or len(turns) < 2 or turns[-2]["role"] != "user":
        roles = [turn["role"] for turn in turns]
        raise DistilyConfigError(
            f"{where} row {row} has the turns {roles}; expected the user's turn, then the assistant's reference "
            "answer last"
        )
    return turns[:-1], turns[-1]["content"]


def load_heldout_prompts(args: EvaluationArguments, data: DataArguments) -> HeldoutPrompts:
    """The first ``generation_eval_max_samples`` prompts of ``generation_eval_dataset`` and their references, read
    with ``data``'s column names."""
    where = f"generation_eval_dataset={args.generation_eval_dataset!r}"
    data = dataclasses.replace(data, dataset_name=args.generation_eval_dataset, dataset_config_name=None,
                               dataset_split=args.generation_eval_split, dataset_streaming=False)  # read whole
    try:
        documents = load_documents(data)
        fmt = chat_format(documents.column_names, data)
        if fmt is None:
            raise DistilyConfigError(
                f"it has the columns {', '.join(documents.column_names)}; expected prompts with references: a "
                f"{data.dataset_messages_column!r} column or {data.dataset_prompt_column!r} + "
                f"{data.dataset_completion_column!r} columns"
            )
        documents = documents.select(range(min(args.generation_eval_max_samples, len(documents))))
        if len(documents) == 0:
            raise DistilyConfigError("it holds no rows; expected at least one prompt")
        read = conversations(documents, fmt, data)[MESSAGES]
    except DistilyConfigError as err:
        raise DistilyConfigError(f"{where}: {err}")
    pairs = [_prompt_and_reference(turns, row, where) for row, turns in enumerate(read)]
    return HeldoutPrompts([prompt for prompt, _ in pairs], [reference for _, reference in pairs], where)


def greedy_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                   stops: list[int], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Greedy completions of ``prompts`` (token ids of ``tokenizer``, up to and with the first of ``stops``),
    ``batch_size`` at a time, with a progress bar over the batches."""
    generator = HFGenerator(model, SamplingSettings(max_new_tokens, temperature=0), stops, pad_token_id(tokenizer),
                            vocab_size=vocabulary_size(tokenizer, stops))
    starts = tqdm(range(0, len(prompts), batch_size), desc="Answering the generation prompts", leave=False)
    return [completion for start in starts for completion in generator.generate(prompts[start:start + batch_size])]


def exact_match(answers: list[str], references: list[str]) -> float:
    """Percent of ``answers`` equal to their reference, both whitespace-stripped."""
    return 100.0 * sum(a.strip() == r.strip() for a, r in zip(answers, references)) / max(len(references), 1)


def kl_on_answers(model: PreTrainedModel, teacher: PreTrainedModel, prompts: list[list[int]],
                  completions: list[list[int]], pad_token_id: int, batch_size: int,
                  vocab_size: Optional[int] = None) -> float:
    """KL(teacher || model) per completion token, on prompt + completion (the first ``vocab_size`` logit
    columns; None: all)."""
    rows = list(zip(prompts, completions))

    def collate(batch):
        return completion_batch([prompt for prompt, _ in batch], [completion for _, completion in batch], pad_token_id)

    found = heldout_metrics(model, rows, collate, batch_size, teacher=teacher, vocab_size=vocab_size,
                            desc="KL on own answers")
    return found["kl_to_teacher"]


@dataclass(frozen=True)
class GenerationEval:
    """What is answered and how: the prompts, the chat template, the answers' length, the batch, the metric."""

    prompts: HeldoutPrompts
    chat_template: Optional[str]  # None: the tokenizer's own
    max_new_tokens: int
    batch_size: int
    metric: Optional[str] = None  # module:function
    chat_template_kwargs: dict = field(default_factory=dict)
    answer_after: Optional[str] = None  # an answer is read after the last occurrence of this text
    chat_template_date: Optional[str] = None  # what a dated template writes (None: today)

    def scores(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               teacher: Optional[PreTrainedModel] = None, vocab_size: Optional[int] = None) -> dict[str, float]:
        """``model``'s exact match (and metric) on the prompts; with a ``teacher`` (same tokenizer) also the KL to
        it on ``model``'s answers."""
        template = run_chat_template(tokenizer, self.chat_template, self.chat_template_kwargs,
                                     date=self.chat_template_date)
        references = self.prompts.references
        try:
            prompts = [prompt_ids(tokenizer, turns, template, f"row {row}")
                       for row, turns in enumerate(self.prompts.conversations)]
            openings = [answer_opening(tokenizer, turns, reference, template, f"row {row}")
                        for row, (turns, reference) in enumerate(zip(self.prompts.conversations, references))]
        except DistilyConfigError as err:
            raise DistilyConfigError(f"{self.prompts.source}: {err}") from None
        stops = chat_stop_ids(tokenizer, model, template)  # the template's end of turn ends an answer too
        completions = greedy_answers(model, tokenizer, prompts, stops, self.max_new_tokens, self.batch_size)
        answers = [without_opening(completion_text(tokenizer, completion, stops), opening)
                   for completion, opening in zip(completions, openings)]
        if self.answer_after is not None:
            answers = [answer.rsplit(self.answer_after, 1)[-1] for answer in answers]
        scores = {generation_key(EXACT_MATCH): exact_match(answers, references)}
        if self.metric is not None:
            function = load_metric(self.metric)
            values = [float(function(answer, reference)) for answer, reference in zip(answers, references)]
            scores[generation_key(metric_name(self.metric))] = sum(values) / len(values)
        if teacher is not None:  # over the columns the answers were drawn from (never a head's padding columns)
            columns = vocab_size if vocab_size is not None else vocabulary_size(tokenizer, stops)
            scores[generation_key(KL_TO_TEACHER)] = kl_on_answers(
                model, teacher, prompts, completions, pad_token_id(tokenizer), self.batch_size, columns
            )
        return {**scores, generation_key(SAMPLES): len(prompts)}


def generation_eval(args: EvaluationArguments, data: DataArguments, chat_template: Optional[str],
                    chat_template_kwargs: dict, batch_size: int) -> Optional[GenerationEval]:
    """The ``GenerationEval`` that ``args`` configures (its prompts loaded and checked now), or None without a
    ``generation_eval_dataset``."""
    if args.generation_eval_dataset is None:
        return None
    return GenerationEval(load_heldout_prompts(args, data), chat_template, args.generation_eval_max_new_tokens,
                          batch_size, args.generation_eval_metric, chat_template_kwargs,
                          args.generation_eval_answer_after, data.chat_template_date)


class GenerationEvaluator:
    """Called with the student at every evaluation: its ``GenerationEval`` scores, with the KL to the teacher
    when one is given; the teacher's own scores do not change, so they are computed once
    (``teacher_metrics()``)."""

    def __init__(self, generation_eval: GenerationEval, tokenizer: PreTrainedTokenizerBase,
                 teacher: Optional[PreTrainedModel] = None, vocab_size: Optional[int] = None):
        self.generation_eval, self.tokenizer = generation_eval, tokenizer
        self.teacher, self.vocab_size = teacher, vocab_size
        self._teacher_metrics: Optional[dict[str, float]] = None

    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        return self.generation_eval.scores(model, self.tokenizer, self.teacher, self.vocab_size)

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's exact match (and metric); empty without a teacher."""
        if self.teacher is None:
            return {}
        if self._teacher_metrics is None:
            self._teacher_metrics = self.generation_eval.scores(self.teacher, self.tokenizer)
        return self._teacher_metrics


def with_generations(evaluator: Callable[[PreTrainedModel], dict[str, float]],
                     generations: Optional[GenerationEvaluator]) -> Callable[[PreTrainedModel], dict[str, float]]:
    """``evaluator``, and the generation metrics after its own when ``generations`` is given."""
    if generations is None:
        return evaluator

    def evaluate(model: PreTrainedModel) -> dict[str, float]:
        return {**evaluator(model), **generations(model)}

    return evaluate
