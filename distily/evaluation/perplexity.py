"""Perplexity: next-token loss of a model on text, and the named eval sets it is measured on.

An eval set is loaded, tokenized and packed exactly like the training data (``distily.data.text``), so
its perplexity is comparable with the held-out split's.
"""

import math

import datasets
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from distily.config import DataArguments
from distily.data.text import documents_with_content, load_documents, tokenize_and_pack
from distily.errors import DistilyConfigError


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """``(sum of -log p(x[t+1] | x[<=t]), targets)`` over positions t where both t and t+1 are real tokens.

    ``logits``: ``[batch, seq, vocab]``; ``input_ids``, ``mask``: ``[batch, seq]`` (mask bool). Nats, float32.
    """
    targets = mask[:, 1:] & mask[:, :-1]  # [batch, seq - 1]
    predicted = logits[:, :-1][targets].float()  # [targets, vocab]
    total = F.cross_entropy(predicted, input_ids[:, 1:][targets], reduction="sum")
    return total.item(), int(targets.sum())


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
) -> datasets.Dataset:
    """Packed ``max_seq_length`` blocks of an eval set, ``spec`` as in ``EvaluationArguments.eval_datasets``
    (``path``, ``config``, ``split``, ``text_column``, ``max_samples``, which wins over ``max_samples``)."""
    args = DataArguments(
        dataset_name=spec["path"],
        dataset_config_name=spec["config"],
        dataset_split=spec["split"],
        dataset_text_column=spec["text_column"],
    )
    try:
        documents = documents_with_content(load_documents(args), args)
    except DistilyConfigError as err:
        raise DistilyConfigError(f"eval_datasets[{name!r}]: {err}")
    blocks = tokenize_and_pack(documents, tokenizer, max_seq_length, spec["text_column"], cache_dir)
    if len(blocks) == 0:
        raise DistilyConfigError(
            f"eval_datasets[{name!r}] ({spec['path']!r}) gives no sequence of {max_seq_length} tokens; expected more "
            "text or a smaller max_seq_length"
        )
    limit = spec["max_samples"] or max_samples
    if limit is not None:
        blocks = blocks.select(range(min(limit, len(blocks))))
    return blocks.with_format("torch")


def load_eval_sets(
    specs: dict[str, dict],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    cache_dir: str,
    max_samples: int | None = None,
) -> dict[str, datasets.Dataset]:
    """``load_eval_set`` for each of ``EvaluationArguments.eval_datasets``."""
    return {
        name: load_eval_set(name, spec, tokenizer, max_seq_length, cache_dir, max_samples)
        for name, spec in specs.items()
    }
