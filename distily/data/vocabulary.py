"""Which tokens two vocabularies share: the same bytes of text, whatever each tokenizer writes them as.

A token's bytes are read through its tokenizer's conventions: byte-level BPE (GPT-2, Llama 3, Qwen) writes each
byte as one printable character (GPT-2's byte-to-unicode map: ``Ġ`` is the space byte); SentencePiece-style
vocabularies (Llama 2, Gemma, Mistral) write the space as ``▁`` and bytes they fall back on as ``<0x0A>``; other
tokens, and tokens added to a byte-level vocabulary (matched in the text before its byte map), are their UTF-8 text.
Special tokens are matched by role, never by text: first the two document separators (``document_separator_id``:
an instruct tokenizer's end-of-text token, not its end-of-turn EOS), then BOS with BOS, EOS with EOS, UNK with UNK,
each token in one pair only. Where one vocabulary holds the same bytes twice, the lowest id stands for them (a
byte-fallback token only when no regular token writes its byte).
"""

import re
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from distily.data.framing import document_separator_id
from distily.errors import DistilyConfigError

SENTENCEPIECE_SPACE = "\u2581"  # ▁
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPECIAL_ROLES = ("bos_token_id", "eos_token_id", "unk_token_id")


def is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer writes bytes as GPT-2's printable characters (a ByteLevel pre-tokenizer or decoder)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and '"ByteLevel"' in backend.to_str()


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> dict[bytes, int]:
    """bytes of text -> the lowest id that writes them, over the tokenizer's non-special tokens; a byte-fallback
    token only for bytes no regular token writes (the tokenizer gives the regular one)."""
    special = set(tokenizer.all_special_ids)
    added = tokenizer.added_tokens_decoder  # their text as written: a byte-level tokenizer reads them before its map
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()} if is_byte_level(tokenizer) else None
    found: dict[bytes, int] = {}
    in_order = sorted(tokenizer.get_vocab().items(), key=lambda item: (bool(BYTE_FALLBACK.fullmatch(item[0])), item[1]))
    for token, token_id in in_order:
        if token_id in special:
            continue
        if byte_of is not None and token_id not in added and all(char in byte_of for char in token):
            data = bytes(byte_of[char] for char in token)
        elif BYTE_FALLBACK.fullmatch(token):
            data = bytes([int(BYTE_FALLBACK.fullmatch(token).group(1), 16)])
        else:
            data = token.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8")
        found.setdefault(data, token_id)
    return found


@dataclass
class VocabularyMap:
    """The tokens two vocabularies share: ``student_ids[k]`` and ``teacher_ids[k]`` write the same text."""

    student_ids: torch.Tensor  # [shared] long
    teacher_ids: torch.Tensor  # [shared] long
    student_size: int  # the student's vocabulary: its logit columns of its tokenizer's ids (no padding rows)
    teacher_size: int  # the teacher's vocabulary, likewise

    def __len__(self) -> int:
        return self.student_ids.numel()

    @property
    def shared_index(self) -> torch.Tensor:
        """[student_size] long: each student token's index among the shared ones, -1 when not shared."""
        index = torch.full((self.student_size,), -1, dtype=torch.long)
        index[self.student_ids] = torch.arange(len(self))
        return index

    def unmatched(self, ids: torch.Tensor, size: int) -> torch.Tensor:
        """[size] bool: the columns of one side that no shared token covers."""
        mask = torch.ones(size, dtype=torch.bool)
        mask[ids] = False
        return mask

    def to(self, device) -> "VocabularyMap":
        return VocabularyMap(self.student_ids.to(device), self.teacher_ids.to(device), self.student_size,
                             self.teacher_size)


def _one_to_one(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pairs, each student and each teacher id in one only (the first pair that names it wins), sorted."""
    students, teachers, kept = set(), set(), []
    for s, t in pairs:
        if s not in students and t not in teachers:
            students.add(s)
            teachers.add(t)
            kept.append((s, t))
    return sorted(kept)


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def token_pairs(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> list[tuple[int, int]]:
    """The (student id, teacher id) pairs of the tokens that write the same bytes, then of the document separators
    and the special roles both tokenizers have, first pairs first: what ``map_vocabularies`` keeps one-to-one. The
    slow part of a mapping (about a second for two vocabularies of 50k tokens), for a caller that maps twice."""
    teacher_bytes = token_bytes(teacher)
    pairs = [(s, teacher_bytes[data]) for data, s in token_bytes(student).items() if data in teacher_bytes]
    separators = (document_separator_id(student), document_separator_id(teacher))
    roles = [separators] + [(getattr(student, role), getattr(teacher, role)) for role in SPECIAL_ROLES]
    return pairs + [(s, t) for s, t in roles if s is not None and t is not None]


def map_vocabularies(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase,
                     student_size: Optional[int] = None, teacher_size: Optional[int] = None,
                     required: bool = True, pairs: Optional[list[tuple[int, int]]] = None) -> VocabularyMap:
    """The shared tokens of two tokenizers (of ``pairs``, their ``token_pairs`` found earlier, where given). Sizes:
    the models' logit columns (default the tokenizers' lengths), cut to the tokenizers' ids: the rows of an LM head
    padded past them (Qwen2's 151,936 for 151,665 tokens) are no token. With ``required``, a mapping that covers
    nothing is an error naming both tokenizers."""
    student_size = len(student) if student_size is None else min(student_size, len(student))
    teacher_size = len(teacher) if teacher_size is None else min(teacher_size, len(teacher))
    pairs = token_pairs(student, teacher) if pairs is None else pairs
    pairs = _one_to_one([(s, t) for s, t in pairs if s < student_size and t < teacher_size])
    if not pairs and required:
        raise DistilyConfigError(
            f"the student tokenizer {_name(student)!r} and the teacher tokenizer {_name(teacher)!r} share no token; "
            "expected overlapping vocabularies for the mapped losses (or cross_tokenizer_loss=uld)"
        )
    student_ids = torch.tensor([s for s, _ in pairs], dtype=torch.long)
    teacher_ids = torch.tensor([t for _, t in pairs], dtype=torch.long)
    return VocabularyMap(student_ids, teacher_ids, student_size, teacher_size)
