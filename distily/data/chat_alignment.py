"""Cross-tokenizer chat data: each conversation rendered by each model's own chat template, tokenized by its own
tokenizer, and aligned inside the assistant's turns.

The two renderings differ everywhere but in the assistant's content (each template has its own role headers and
end-of-turn token), so positions are aligned in *turn coordinates*: a position is named by its assistant turn (the
message's index) and the number of characters left to that turn's content's end when its token closes (closes as
in ``distily.data.alignment``). Three kinds of position get one, on each side:

- the last token closing at or before the content's start (the generation prompt's last token, or the last of what
  the model writes before the content, as Qwen3's empty ``<think>`` block): it predicts the content's first token;
- each token closing inside the content;
- the end-of-turn token (when only whitespace lies between it and the content, as the assistant mask counts it),
  one past the content's end: a position the loss does not count (its next token is the template's), which makes
  the teacher's probability of ending the turn the target of the student's end-of-turn token.

Positions with the same coordinates on both sides are aligned. Content shown only in part by one template (Qwen3's
drops an earlier answer's reasoning) aligns on the part both show, the coordinates counting from the content's end.

A conversation longer than ``max_seq_length`` tokens on either side ends at the last answer both sides keep whole,
rendered as the conversation's last answer (as ``distily.data.chat`` does for one tokenizer), and is then cut to
the length on each side; pairs beyond either cut are not aligned. Each side keeps its assistant mask (the student's
``loss_mask``, the teacher's ``teacher_loss_mask`` for its own held-out metrics).
"""

import bisect
import hashlib
from dataclasses import dataclass
from typing import Optional

import datasets
from transformers import PreTrainedTokenizerBase

from distily.data.alignment import ALIGNED, TEACHER_INPUT_IDS, aligned_splits, closing_positions
from distily.data.arguments import DataArguments
from distily.data.chat import (
    MESSAGES, ROW, ChatTokenization, RenderedConversation, masked_assistant_turns, run_chat_template,
)
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.data.text import DistillationData, cached_dataset, default_cache_dir, tokenizer_fingerprint
from distily.errors import DistilyConfigError

TEACHER_LOSS_MASK = "teacher_loss_mask"
END_OF_TURN = -1  # the coordinate of an end-of-turn token: one past the content's end


@dataclass(frozen=True)
class ChatSide:
    """One model's side of cross-tokenizer chat data: its tokenizer and how it renders conversations."""

    tokenizer: PreTrainedTokenizerBase
    chat: ChatTokenization


def turn_coordinates(rendered: RenderedConversation) -> dict[tuple[int, int], int]:
    """(assistant message index, characters left to its content's end) -> token position, for the positions the
    module's docstring lists."""
    closing = closing_positions([end for _, end in rendered.offsets])  # character -> the token closing there
    characters = sorted(closing)
    starting = {start: position for position, (start, _) in enumerate(rendered.offsets)}
    found = {}
    for turn in rendered.turns:
        first = bisect.bisect_right(characters, turn.content_start)  # the first character inside the content
        if first > 0:
            found[(turn.message, turn.content_end - turn.content_start)] = closing[characters[first - 1]]
        for character in characters[first : bisect.bisect_right(characters, turn.content_end)]:
            found[(turn.message, turn.content_end - character)] = closing[character]
        if turn.closing is not None and not rendered.text[turn.content_end : turn.closing].strip():
            if turn.closing in starting:
                found[(turn.message, END_OF_TURN)] = starting[turn.closing]
    return found


def _shifted(mask: list[int], length: int, cut: bool) -> list[int]:
    """The assistant mask moved one position left (1 at t when the token at t + 1 is the assistant's), cut to
    ``length``; the last kept position loses its target when the cut took it."""
    shifted = (mask[1:] + [0])[:length]
    if cut:
        shifted[-1] = 0
    return shifted


def align_conversation(messages: list[dict], row: int, student: ChatSide, teacher: ChatSide) -> Optional[dict]:
    """One aligned row of a conversation (see the module's docstring), None when no aligned pair is left."""
    sides = [masked_assistant_turns(messages, side.tokenizer, side.chat.template, row) for side in (student, teacher)]
    limits = [side.chat.max_length for side in (student, teacher)]
    kept = min(sum(first < limit for first in firsts) for (_, _, firsts), limit in zip(sides, limits))
    turns = sides[0][0].turns
    if 0 < kept < len(turns):
        return align_conversation(messages[: turns[kept - 1].message + 1], row, student, teacher)
    (student_rendered, student_mask, _), (teacher_rendered, teacher_mask, _) = sides
    student_limit, teacher_limit = limits
    teacher_at = turn_coordinates(teacher_rendered)
    aligned = [-1] * min(len(student_rendered.ids), student_limit)
    for coordinate, position in turn_coordinates(student_rendered).items():
        partner = teacher_at.get(coordinate, -1)
        if position < len(aligned) and 0 <= partner < teacher_limit:
            aligned[position] = partner
    if all(partner < 0 for partner in aligned):
        return None
    return {
        INPUT_IDS: student_rendered.ids[:student_limit],
        TEACHER_INPUT_IDS: teacher_rendered.ids[:teacher_limit],
        ALIGNED: aligned,
        LOSS_MASK: _shifted(student_mask, len(aligned), len(student_rendered.ids) > student_limit),
        TEACHER_LOSS_MASK: _shifted(teacher_mask, min(len(teacher_rendered.ids), teacher_limit),
                                    len(teacher_rendered.ids) > teacher_limit),
    }


COLUMNS = (INPUT_IDS, TEACHER_INPUT_IDS, ALIGNED, LOSS_MASK, TEACHER_LOSS_MASK)


def _align_batch(batch, student: ChatSide, teacher: ChatSide):
    rows = [align_conversation(messages, row, student, teacher) for messages, row in zip(batch[MESSAGES], batch[ROW])]
    rows = [found for found in rows if found is not None]
    return {key: [found[key] for found in rows] for key in COLUMNS}


def align_conversations(conversations: datasets.Dataset, student: ChatSide, teacher: ChatSide, cache_dir: str,
                        num_proc: Optional[int] = None) -> datasets.Dataset:
    """Aligned rows of ``conversations`` (``COLUMNS``), cached by (data, both tokenizers, both chat
    tokenizations) like ``align_documents``."""
    key = hashlib.sha256(
        f"aligned-chat|{conversations._fingerprint}|{tokenizer_fingerprint(student.tokenizer)}|{student.chat}|"
        f"{tokenizer_fingerprint(teacher.tokenizer)}|{teacher.chat}".encode()
    ).hexdigest()[:24]

    def build() -> datasets.Dataset:
        return conversations.map(
            _align_batch, batched=True, num_proc=num_proc, remove_columns=conversations.column_names,
            fn_kwargs={"student": student, "teacher": teacher},
            desc="Rendering conversations with both templates and aligning",
        )

    return cached_dataset(cache_dir, key, build)


def build_aligned_chat_datasets(args: DataArguments, student_tokenizer: PreTrainedTokenizerBase,
                                teacher_tokenizer: PreTrainedTokenizerBase, max_seq_length: int, seed: int,
                                conversations: datasets.Dataset) -> DistillationData:
    """Train and eval rows of checked conversations (``distily.data.chat.conversations``), each model's side
    rendered with its template: the teacher's ``chat_template`` (or its tokenizer's own), the student's
    ``student_chat_template`` (or its tokenizer's own), both with ``chat_template_kwargs``."""
    if args.loss_on != "assistant":
        raise DistilyConfigError(
            f"loss_on={args.loss_on!r}: across tokenizers only the assistant's turns align (each template frames the "
            "rest its own way); expected loss_on=assistant"
        )
    kwargs = args.chat_template_kwargs
    student = ChatSide(student_tokenizer, ChatTokenization(
        run_chat_template(student_tokenizer, args.student_chat_template, kwargs, "student", "student_chat_template"),
        args.loss_on, max_seq_length))
    teacher = ChatSide(teacher_tokenizer, ChatTokenization(
        run_chat_template(teacher_tokenizer, args.chat_template, kwargs), args.loss_on, max_seq_length))
    cache_dir = args.tokenization_cache_dir or default_cache_dir()

    def align(split: datasets.Dataset) -> datasets.Dataset:
        return align_conversations(split, student, teacher, cache_dir, args.preprocessing_num_workers)

    return aligned_splits(args, conversations, seed, max_seq_length, align, loss_on=args.loss_on)
