"""Perplexity: next-token loss of a model on text, and the named eval sets it is measured on.

An eval set is loaded, tokenized and packed exactly like the training data (``distily.data.sources``,
``distily.data.packing``), so its perplexity is comparable with the held-out split's.
"""

import math

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.documents import check_token_ids, documents_with_content
from distily.data.packing import data_framing, tokenize_and_pack
from distily.data.sources import load_documents
from distily.data.training_data import evaluated_rows
from distily.errors import DistilyConfigError

EVAL_SET_SEED = 0  # an eval set's blocks, when max_samples keeps fewer, are sampled with this seed


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL at temperature 1 of ``targets`` [n] under ``logits`` [n, vocab] (the predictions made one
    position before each target) -> float64 scalar, in nats."""
    logprobs = F.log_softmax(logits.float(), dim=-1)  # [n, vocab]
    return -logprobs.gather(-1, targets[:, None]).double().sum()


def perplexity(mean_nll: float) -> float:
    """``exp`` of a mean next-token loss in nats (capped so a diverged model gives a huge number, not inf)."""
    return math.exp(min(mean_nll, 700.0))


def load_eval_set(
    name: str,
    spec: dict,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    cache_dir: str,
    max_samples: int | None = None,
    packing: str = "auto",
    text_document_delimiter: str = "blank_line",
) -> datasets.Dataset:
    """Packed blocks of at most ``max_seq_length`` tokens of an eval set, ``spec`` as in
    ``EvaluationArguments.eval_datasets`` (``path``, ``config``, ``split``, ``text_column``, ``max_samples``,
    which wins over ``max_samples``: a sample of that many blocks, the same for every run), framed like the
    training data (``packing``, ``text_document_delimiter``)."""
    args = DataArguments(
        dataset_name=spec["path"],
        dataset_config_name=spec["config"],
        dataset_split=spec["split"],
        dataset_text_column=spec["text_column"],
        packing=packing,
        text_document_delimiter=text_document_delimiter,
    )
    try:
        documents = documents_with_content(load_documents(args), args)
        check_token_ids(documents, len(tokenizer), args)  # pre-tokenized rows: ids of the tokenizer's vocabulary
        framing = data_framing(documents, tokenizer, max_seq_length, packing)
        blocks = tokenize_and_pack(documents, tokenizer, framing, spec["text_column"], cache_dir)
    except DistilyConfigError as err:
        raise DistilyConfigError(f"eval_datasets[{name!r}]: {err}")
    if len(blocks) == 0:
        raise DistilyConfigError(
            f"eval_datasets[{name!r}] ({spec['path']!r}) gives no sequence of {max_seq_length} tokens; expected more "
            "text or a smaller max_seq_length"
        )
    # the same sample for every run and both models, whatever a run's seed
    return evaluated_rows(blocks, spec["max_samples"] or max_samples, EVAL_SET_SEED).with_format("torch")


def load_eval_sets(
    specs: dict[str, dict],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    cache_dir: str,
    max_samples: int | None = None,
    packing: str = "auto",
    text_document_delimiter: str = "blank_line",
) -> dict[str, datasets.Dataset]:
    """``load_eval_set`` for each of ``EvaluationArguments.eval_datasets``."""
    return {
        name: load_eval_set(
            name, spec, tokenizer, max_seq_length, cache_dir, max_samples, packing, text_document_delimiter
        )
        for name, spec in specs.items()
    }
