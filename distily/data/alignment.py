"""Cross-tokenizer data: each text tokenized by the teacher's and the student's tokenizer, and which teacher
position each student position meets.

Both tokenizations are mapped to the text through their offset mappings. A token *closes* at character ``e`` when
it ends there and the next token ends later. Tokens that split a character (bytes of it) share the end of the token
that completes it (``shared_character_ends``), so the last of them closes it: a token holding a character's first
bytes has not read that character, though its offsets end where the character does. Where a student token and a
teacher token close at the same character, both models have read the same text: the two positions are *aligned*,
and between two aligned pairs lies a *chunk* of one or more tokens on each side (one-to-one, one-to-many,
many-to-one). ``aligned_teacher_position[i]`` is the teacher position aligned with student position ``i``, -1
inside a chunk.

Framing per model: a tokenizer that starts texts with BOS gets its BOS at every row's start (a 0-width token at the
row's first character, so two BOS align); one whose framing is ``stream`` (EOS-separated families) gets EOS after a
document's last piece (a 0-width token one past the text's end, so two EOS align), the end-of-text token ``stream``
packing separates documents with (``document_separator_id``: not an instruct tokenizer's end-of-turn EOS), and the
same token at every row's start when it has no BOS (it precedes a document in the model's stream: the row's first
token is predicted, and aligns with the other side's first token, as two BOS do). Rows are
document pieces, each within ``max_seq_length`` tokens on both sides, cut at aligned characters; they are padded,
never packed together.

Text a tokenizer's offsets do not cover (a normaliser that drops characters) has no token closing in it: it stays
inside a larger chunk, whose positions get no teacher loss (documented fallback, docs/cross_tokenizer.md).
"""

import hashlib
from typing import Callable, Optional

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.framing import INPUT_IDS, LOSS_MASK, document_separator_id, resolve_packing, tokenizer_adds_bos
from distily.data.splits import split_documents
from distily.data.tokenization_cache import cached_dataset, default_cache_dir, tokenizer_fingerprint
from distily.data.training_data import DistillationData, no_conversation_left, sampled_rows, warn_dropped_conversations
from distily.errors import DistilyConfigError

TEACHER_INPUT_IDS, TEACHER_ATTENTION_MASK = "teacher_input_ids", "teacher_attention_mask"
TEACHER_LOSS_MASK = "teacher_loss_mask"  # chat data: the teacher's own assistant mask (its prompts, its metrics)
ALIGNED = "aligned_teacher_position"  # [batch, student seq]: the aligned teacher position, -1 none
# part of the aligned rows' cache keys (text and chat): raised whenever the rows Distily makes change, so older caches
# are not read back (2: no pair before an answer whose first token spans the generation prompt's end; 3: the tokens
# that split a character close together, at the one that completes it; 4: text rows of EOS-separated families start
# with their end-of-text token)
ALIGNMENT_SCHEME = 4


def check_offsets(tokenizer: PreTrainedTokenizerBase, role: str) -> None:
    """Refuse a tokenizer that cannot map its tokens to the text (slow tokenizers give no offset mapping)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DistilyConfigError(
            f"the {role} tokenizer ({type(tokenizer).__name__}) gives no offset mapping; expected a fast tokenizer "
            "(a tokenizer.json) for cross-tokenizer distillation"
        )


def shared_character_ends(ends: list[int], inside: list[bool]) -> list[int]:
    """``ends``, where each token that ends inside a character (``inside``: it holds the character's first bytes, a
    later token the rest) takes the end of the token after it: the tokens that split a character share the end of
    the one that completes it (which may end characters later: a byte-level BPE token can hold the last bytes of one
    character and the first of the next)."""
    shared = list(ends)
    for position in range(len(shared) - 2, -1, -1):
        if inside[position]:
            shared[position] = max(shared[position], shared[position + 1])
    return shared


def offset_ends(offsets: list[tuple[int, int]]) -> list[int]:
    """The character each token of an offset mapping ends at (``shared_character_ends``). Tokenizers give a token
    that holds part of a character that character's whole span, so a token ends inside a character when the next
    token starts before its end."""
    inside = [following < end for (_, end), (following, _) in zip(offsets, offsets[1:])] + [False]
    return shared_character_ends([end for _, end in offsets], inside)


def token_ends(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Each text's token ids (no special tokens) and the character each token ends at (``offset_ends``)."""
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return encoded[INPUT_IDS], [offset_ends(offsets) for offsets in encoded["offset_mapping"]]


def closing_positions(ends: list[float]) -> dict[float, int]:
    """character -> the position of the token that closes there (ends there, the next ending later); closing
    characters only move forward (a token followed by one that ends earlier closes nothing)."""
    closing, reached = {}, float("-inf")
    for position, end in enumerate(ends):
        following = ends[position + 1] if position + 1 < len(ends) else float("inf")
        if end < following and end > reached:
            closing[end] = position
            reached = end
    return closing


def align(student_ends: list[float], teacher_ends: list[float]) -> list[int]:
    """For each student position, the teacher position closing at the same character as it, or -1."""
    teacher = closing_positions(teacher_ends)
    student = closing_positions(student_ends)
    aligned = [-1] * len(student_ends)
    for end, position in student.items():
        aligned[position] = teacher.get(end, -1)
    return aligned


class ModelFraming:
    """One model's framing of a document piece: BOS first when its tokenizer adds one; when its packing is
    ``stream``, the end-of-text token ``stream`` separates documents with (``document_separator_id``) after a
    document's last piece, and first in every piece without BOS (what precedes a document in its stream, so that
    the model predicts the piece's first token, and every token of the text counts); ``budget`` tokens of text fit
    in a row."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, packing: str, max_seq_length: int):
        stream = resolve_packing(packing, tokenizer, pretokenized=False) == "stream"
        self.eos = document_separator_id(tokenizer) if stream else None
        self.first = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else self.eos
        self.budget = max_seq_length - (self.first is not None) - (self.eos is not None)
        if self.budget < 1:
            raise DistilyConfigError(f"max_seq_length={max_seq_length} leaves no room for text beside BOS/EOS")

    def frame(self, ids: list[int], ends: list[int], start: int, last: bool, text_length: int):
        """(ids, ends) of a piece starting at character ``start``, with its first token (ending at ``start``) and
        EOS (one past the text)."""
        if self.first is not None:
            ids, ends = [self.first, *ids], [start, *ends]
        if last and self.eos is not None:
            ids, ends = [*ids, self.eos], [*ends, text_length + 1]
        return ids, ends


def _piece_end(start: int, student_ends: list[int], teacher_ends: list[int], student_budget: int,
               teacher_budget: int, common: list[int]) -> int:
    """Where the piece starting at ``start`` ends: the last character both tokenizers close at that keeps each
    side within its budget (else the last one the tighter side reaches)."""
    limits = []
    for ends, budget in ((student_ends, student_budget), (teacher_ends, teacher_budget)):
        inside = [end for end in ends if end > start]
        count = min(budget, len(inside))
        while 1 < count < len(inside) and inside[count] <= inside[count - 1]:  # tokens sharing a character's end
            count -= 1
        if inside:
            limits.append(inside[count - 1])
    limit = min(limits)
    fitting = [end for end in common if start < end <= limit]
    return fitting[-1] if fitting else limit


def _take(ids: list[int], ends: list[int], start: int, stop: int) -> tuple[list[int], list[int]]:
    chosen = [k for k, end in enumerate(ends) if start < end <= stop or (start == 0 and end == 0 and stop > 0)]
    return [ids[k] for k in chosen], [ends[k] for k in chosen]


def align_document(text: str, student: tuple, teacher: tuple, student_framing: ModelFraming,
                   teacher_framing: ModelFraming) -> list[dict]:
    """The rows of one document: ``student`` and ``teacher`` are its (ids, ends) from ``token_ends``."""
    (student_ids, student_ends), (teacher_ids, teacher_ends) = student, teacher
    if not student_ids or not teacher_ids:
        return []
    common = sorted(set(closing_positions(student_ends)) & set(closing_positions(teacher_ends)))
    last_end = max(max(student_ends), max(teacher_ends))
    rows, start = [], 0
    while start < last_end:
        stop = _piece_end(start, student_ends, teacher_ends, student_framing.budget, teacher_framing.budget, common)
        last = stop >= last_end
        sides = []
        for (ids, ends), framing in (((student_ids, student_ends), student_framing),
                                     ((teacher_ids, teacher_ends), teacher_framing)):
            sides.append(framing.frame(*_take(ids, ends, start, stop), start, last, len(text)))
        (piece_student, piece_student_ends), (piece_teacher, piece_teacher_ends) = sides
        if piece_student and piece_teacher:
            rows.append({
                INPUT_IDS: piece_student,
                TEACHER_INPUT_IDS: piece_teacher,
                ALIGNED: align(piece_student_ends, piece_teacher_ends),
            })
        start = stop
    return rows


def _align_batch(batch, student_tokenizer, teacher_tokenizer, student_framing, teacher_framing, text_column):
    texts = batch[text_column]
    students = zip(*token_ends(student_tokenizer, texts))
    teachers = zip(*token_ends(teacher_tokenizer, texts))
    rows = [row for text, student, teacher in zip(texts, students, teachers)
            for row in align_document(text, student, teacher, student_framing, teacher_framing)]
    return {key: [row[key] for row in rows] for key in (INPUT_IDS, TEACHER_INPUT_IDS, ALIGNED)}


def align_documents(documents: datasets.Dataset, student_tokenizer, teacher_tokenizer, packing: str,
                    max_seq_length: int, text_column: str, cache_dir: str,
                    num_proc: Optional[int] = None) -> datasets.Dataset:
    """Aligned rows of ``documents`` (``input_ids``, ``teacher_input_ids``, ``aligned_teacher_position``), cached
    by (data, both tokenizers, packing, length) like ``tokenize_and_pack``."""
    framings = [ModelFraming(tokenizer, packing, max_seq_length)
                for tokenizer in (student_tokenizer, teacher_tokenizer)]
    identity = (f"aligned|{ALIGNMENT_SCHEME}|{documents._fingerprint}|{tokenizer_fingerprint(student_tokenizer)}|"
                f"{tokenizer_fingerprint(teacher_tokenizer)}|{packing}|{max_seq_length}|{text_column}")
    settings = {"student_tokenizer": student_tokenizer, "teacher_tokenizer": teacher_tokenizer,
                "student_framing": framings[0], "teacher_framing": framings[1], "text_column": text_column}
    return cached_rows(documents, identity, _align_batch, settings, cache_dir, num_proc,
                       "Tokenizing with both tokenizers and aligning")


def cached_rows(documents: datasets.Dataset, identity: str, make_rows: Callable, settings: dict, cache_dir: str,
                num_proc: Optional[int], desc: str) -> datasets.Dataset:
    """The rows ``make_rows(batch, **settings)`` makes of ``documents`` (in batches, in place of their columns),
    cached under the hash of ``identity`` (what the rows depend on: the data's fingerprint, the tokenizers...)."""
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]

    def build() -> datasets.Dataset:
        return documents.map(make_rows, batched=True, num_proc=num_proc, remove_columns=documents.column_names,
                             fn_kwargs=settings, desc=desc)

    return cached_dataset(cache_dir, key, build)


def aligned_splits(args: DataArguments, documents: datasets.Dataset, seed: int, max_seq_length: int,
                   align: Callable[[datasets.Dataset], datasets.Dataset], loss_on: Optional[str] = None
                   ) -> DistillationData:
    """Train and eval rows from disjoint documents (split as ``build_datasets`` splits them), each split's
    documents made into aligned rows by ``align``."""
    split = split_documents(documents, args.eval_fraction, seed, args.eval_split_by)
    rows = {name: align(docs) for name, docs in (("train", split["train"]), ("eval", split["test"]))}
    for name, found in rows.items():
        if len(found) == 0 and loss_on is not None:  # each of the split's conversations was dropped by the cut
            raise no_conversation_left(args, name, max_seq_length)
        if len(found) == 0:
            raise DistilyConfigError(
                f"dataset {args.dataset_name!r} gives no aligned {name} rows; expected text (or answers) both "
                "tokenizers read"
            )
    if loss_on is not None:  # conversations: a row each, but for those the cut leaves no aligned answer token
        for name, docs in (("train", split["train"]), ("eval", split["test"])):
            warn_dropped_conversations(len(docs), len(rows[name]), name, max_seq_length)
    return DistillationData(*sampled_rows(rows, args, seed), max_seq_length, loss_on=loss_on)


def build_aligned_datasets(args: DataArguments, student_tokenizer, teacher_tokenizer, max_seq_length: int, seed: int,
                           documents: datasets.Dataset) -> DistillationData:
    """Train and eval rows of text documents, tokenized by both tokenizers and aligned."""
    if INPUT_IDS in documents.column_names:
        raise DistilyConfigError(
            f"dataset {args.dataset_name!r} is pre-tokenized (input_ids); expected text for cross-tokenizer "
            "distillation (each tokenizer reads the text)"
        )
    cache_dir = args.tokenization_cache_dir or default_cache_dir()

    def align(docs: datasets.Dataset) -> datasets.Dataset:
        return align_documents(docs, student_tokenizer, teacher_tokenizer, args.packing, max_seq_length,
                               args.dataset_text_column, cache_dir, args.preprocessing_num_workers)

    return aligned_splits(args, documents, seed, max_seq_length, align)


def collate_aligned(features: list[dict], pad_token_id: int = 0, teacher_pad_token_id: int = 0) -> dict:
    """``collate`` of the student's ids (and loss mask, for chat data), plus the teacher's ids and mask (and loss
    mask) and the alignment (-1 on padding)."""
    student_columns = [column for column in (INPUT_IDS, LOSS_MASK) if column in features[0]]
    batch = collate([{column: f[column] for column in student_columns} for f in features], pad_token_id)
    teacher_columns = {TEACHER_INPUT_IDS: INPUT_IDS, TEACHER_LOSS_MASK: LOSS_MASK}
    teacher_columns = {column: name for column, name in teacher_columns.items() if column in features[0]}
    teacher = collate([{name: f[column] for column, name in teacher_columns.items()} for f in features],
                      teacher_pad_token_id)
    if TEACHER_LOSS_MASK in teacher_columns:
        batch[TEACHER_LOSS_MASK] = teacher[LOSS_MASK]
    aligned = torch.full(batch[INPUT_IDS].shape, -1, dtype=torch.long)  # [batch, student seq]
    for row, feature in enumerate(features):
        positions = torch.as_tensor(feature[ALIGNED], dtype=torch.long)
        aligned[row, : len(positions)] = positions
    batch.update({TEACHER_INPUT_IDS: teacher[INPUT_IDS], TEACHER_ATTENTION_MASK: teacher["attention_mask"],
                  ALIGNED: aligned})
    return batch
