"""Documents into blocks: each document tokenized whole (conversations through the chat template), then packed
under a ``Framing``, the result cached (``distily.data.tokenization_cache``)."""

import hashlib
import itertools
from typing import Optional

import datasets
from transformers import PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.chat import MESSAGES, ChatTokenization, run_chat_template, tokenize_conversations
from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS, Framing
from distily.data.tokenization_cache import cached_dataset, tokenizer_fingerprint
from distily.errors import DistilyConfigError


def _tokenize_batch(batch, tokenizer, text_column):
    """Token ids of each document with the tokenizer's own special tokens (BOS where it adds one); no warning for a
    document longer than the model takes (the packing cuts it)."""
    return {INPUT_IDS: tokenizer(batch[text_column], verbose=False)[INPUT_IDS]}


def _pack_batch(batch, framing: Framing):
    return framing.pack(batch[INPUT_IDS], batch.get(LOSS_MASK))


def tokenize_documents(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, text_column: str,
                       num_proc: Optional[int] = None, chat: Optional[ChatTokenization] = None) -> datasets.Dataset:
    """Each document's token ids (``input_ids``); pre-tokenized rows as they are; conversations through the chat
    template (``chat``), with their ``loss_mask``."""
    if INPUT_IDS in documents.column_names:
        return documents
    if MESSAGES in documents.column_names and chat is None:
        raise DistilyConfigError("chat data (a messages column) is read as the training dataset only; expected text")
    tokenize, settings = (_tokenize_batch, {"text_column": text_column}) if chat is None else (
        tokenize_conversations, {"chat": chat})
    return documents.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=documents.column_names,
        fn_kwargs={"tokenizer": tokenizer, **settings},
        desc="Tokenizing",
    )


def data_framing(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_seq_length: int,
                 packing: str) -> Framing:
    """The framing of ``documents`` (``packing`` resolved for this tokenizer and kind of data). Conversations stay
    whole and apart: one per row (``padded``, what ``auto`` gives them, for any model) or best-fit with document
    masks (``documents``, for models that keep packed documents apart)."""
    if MESSAGES in documents.column_names:
        if packing not in ("auto", "padded", "documents"):
            raise DistilyConfigError(
                f"packing={packing!r} would let conversations attend to each other or cut them; expected padded, "
                "documents or auto for chat data"
            )
        packing = "padded" if packing == "auto" else packing
    return Framing.for_tokenizer(packing, tokenizer, max_seq_length, pretokenized=INPUT_IDS in documents.column_names)


def chat_tokenization(documents: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, args: DataArguments,
                      max_seq_length: int) -> Optional[ChatTokenization]:
    """How ``documents`` are tokenized when they are conversations (None for text or token ids)."""
    if MESSAGES not in documents.column_names:
        return None
    template = run_chat_template(tokenizer, args.chat_template, args.chat_template_kwargs,
                                 date=args.chat_template_date)
    return ChatTokenization(template, args.loss_on, max_seq_length)


def tokenize_and_pack(
    documents: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    framing: Framing,
    text_column: str,
    cache_dir: str,
    num_proc: Optional[int] = None,
    chat: Optional[ChatTokenization] = None,
) -> datasets.Dataset:
    """Blocks of at most ``framing.max_seq_length`` token ids (conversations tokenized by ``chat``), cached by
    (data, tokenizer, framing, chat tokenization) so a second run with the same inputs reads the cache instead
    of tokenizing again."""
    identity = f"{documents._fingerprint}|{tokenizer_fingerprint(tokenizer)}|{framing}|{text_column}"
    key = hashlib.sha256(f"{identity}|{chat}".encode() if chat is not None else identity.encode()).hexdigest()[:24]

    def build() -> datasets.Dataset:
        tokenized = tokenize_documents(documents, tokenizer, text_column, num_proc, chat)
        if framing.in_order:
            return _packed_in_order(tokenized, framing, key)
        return tokenized.map(
            _pack_batch,
            batched=True,
            batch_size=1000,
            num_proc=num_proc,
            remove_columns=tokenized.column_names,
            fn_kwargs={"framing": framing},
            desc=f"Packing into {framing.max_seq_length}-token blocks ({framing.packing})",
        )

    return cached_dataset(cache_dir, key, build)


def _packed_in_order(tokenized: datasets.Dataset, framing: Framing, fingerprint: str) -> datasets.Dataset:
    """``stream`` or ``bos_blocks`` blocks (``Framing.in_order``) of all of ``tokenized``'s documents as one run:
    only its last partial block is dropped (packed batch by batch, each batch would drop its own). Read and written
    a batch at a time, so memory holds one; the rows are written under ``fingerprint`` (the cache key)."""
    documents = (ids for batch in tokenized.iter(batch_size=1000) for ids in batch[INPUT_IDS])
    rows = framing.rows_in_order(documents)
    first = next(rows, None)
    columns = [INPUT_IDS] + ([POSITION_IDS] if framing.document_masks else [])
    features = datasets.Features({name: datasets.List(datasets.Value("int64")) for name in columns})
    if first is None:  # from_generator refuses a generator of no rows
        return datasets.Dataset.from_dict({name: [] for name in columns}, features=features)
    return datasets.Dataset.from_generator(lambda: itertools.chain([first], rows), features=features,
                                           fingerprint=fingerprint)
