"""The train and held-out blocks of a run: documents split apart (``distily.data.splits``), each side packed
(``distily.data.packing``), then sampled down to ``max_samples`` and ``max_eval_samples``."""

import logging
from dataclasses import dataclass, field
from typing import Optional

import datasets
import pyarrow.compute
from transformers import PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.documents import load_training_documents
from distily.data.framing import POSITION_IDS, Framing
from distily.data.packing import chat_tokenization, data_framing, tokenize_and_pack
from distily.data.splits import split_documents
from distily.data.tokenization_cache import default_cache_dir
from distily.errors import DistilyConfigError

logger = logging.getLogger(__name__)


@dataclass
class DistillationData:
    train: datasets.Dataset
    eval: datasets.Dataset
    max_seq_length: int
    framing: Optional[Framing] = None  # how the blocks were built (None: a store's rows)
    eval_documents: Optional[datasets.Dataset] = None  # the held-out documents before packing
    loss_on: Optional[str] = None  # chat data: the tokens the losses count (assistant | all); None: text
    packed_rows: dict[str, int] = field(default_factory=dict)  # each split's rows before max_(eval_)samples


def conversations_in(blocks: datasets.Dataset) -> int:
    """How many conversations packed ``blocks`` hold: one a row, or under document masks one per position 0."""
    if POSITION_IDS not in blocks.column_names:
        return len(blocks)
    positions = pyarrow.compute.list_flatten(blocks.with_format("arrow")[POSITION_IDS])
    return pyarrow.compute.sum(pyarrow.compute.equal(positions, 0)).as_py()


def no_conversation_left(args: DataArguments, split: str, max_seq_length: int) -> DistilyConfigError:
    """The error for a split whose conversations the cut to ``max_seq_length`` tokens all dropped."""
    more = f" or a larger eval_fraction (now {args.eval_fraction})" if split == "eval" else ""
    return DistilyConfigError(
        f"dataset {args.dataset_name!r} gives no {split} conversation with an assistant token in its first "
        f"{max_seq_length} tokens (the turns before each first answer fill them); expected a larger "
        f"max_seq_length{more}"
    )


def warn_dropped_conversations(given: int, kept: int, split: str, max_seq_length: int) -> None:
    """A warning when the cut to ``max_seq_length`` tokens left ``kept`` of a split's ``given`` conversations: the
    others had none of the assistant's tokens in it, and were dropped."""
    if kept < given:
        logger.warning(
            f"{given - kept} of {given} {split} conversations were dropped: the turns before their first answer fill "
            f"their first {max_seq_length} tokens (max_seq_length), leaving none of the assistant's tokens to learn; "
            "a larger max_seq_length keeps them"
        )


def _at_most(rows: datasets.Dataset, limit: Optional[int]) -> datasets.Dataset:
    """The first ``limit`` rows (all of them without a limit)."""
    return rows if limit is None else rows.select(range(min(limit, len(rows))))


def evaluated_rows(rows: datasets.Dataset, limit: Optional[int], seed: int) -> datasets.Dataset:
    """A random sample of ``limit`` of ``rows`` drawn with ``seed`` (all of them, in order, without a limit or
    below it). Sampled, not cut, because packing orders the rows: best-fit places the longest documents first, so
    the first blocks would hold mostly the longest documents."""
    if limit is None or limit >= len(rows):
        return rows
    return rows.shuffle(seed=seed).select(range(limit))


def sampled_rows(rows: dict[str, datasets.Dataset], args: DataArguments, seed: int):
    """The ``train`` rows shuffled with ``seed`` and cut to ``max_samples``, the ``eval`` rows a random sample of
    ``max_eval_samples`` drawn with ``seed`` (``evaluated_rows``), both as torch tensors."""
    train = _at_most(rows["train"].shuffle(seed=seed), args.max_samples)
    evaluation = evaluated_rows(rows["eval"], args.max_eval_samples, seed)
    return train.with_format("torch"), evaluation.with_format("torch")


def build_datasets(
    args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    seed: int,
    documents: Optional[datasets.Dataset] = None,
) -> DistillationData:
    """Train and eval blocks from disjoint sets of documents, shuffled with ``seed``."""
    documents = load_training_documents(args) if documents is None else documents
    split = split_documents(documents, args.eval_fraction, seed, args.eval_split_by)
    cache_dir = args.tokenization_cache_dir or default_cache_dir()
    framing = data_framing(documents, tokenizer, max_seq_length, args.packing)
    chat = chat_tokenization(documents, tokenizer, args, max_seq_length)
    packed = {
        name: tokenize_and_pack(
            docs, tokenizer, framing, args.dataset_text_column, cache_dir, args.preprocessing_num_workers, chat
        )
        for name, docs in (("train", split["train"]), ("eval", split["test"]))
    }
    for name, blocks in packed.items():
        if len(blocks) == 0 and chat is not None:  # each of the split's conversations was dropped by the cut
            raise no_conversation_left(args, name, max_seq_length)
        if len(blocks) == 0:
            fraction = "a smaller" if name == "train" else "a larger"
            raise DistilyConfigError(
                f"dataset {args.dataset_name!r} gives no {name} sequence of {max_seq_length} tokens; expected more "
                f"text, a smaller max_seq_length or {fraction} eval_fraction (now {args.eval_fraction})"
            )
    if chat is not None:
        for name, docs in (("train", split["train"]), ("eval", split["test"])):
            warn_dropped_conversations(len(docs), conversations_in(packed[name]), name, max_seq_length)
    train, evaluation = sampled_rows(packed, args, seed)
    return DistillationData(
        train=train,
        eval=evaluation,
        max_seq_length=max_seq_length,
        framing=framing,
        eval_documents=split["test"] if chat is None else None,  # conversations are packed as if alone
        loss_on=None if chat is None else chat.loss_on,
        packed_rows={name: len(blocks) for name, blocks in packed.items()},
    )
