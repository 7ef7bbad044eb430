"""Cross-tokenizer chat data: each conversation rendered by each model's own chat template, tokenized by its own
tokenizer, and aligned inside the assistant's turns.

The two renderings differ everywhere but in the assistant's content (each template has its own role headers and
end-of-turn token), so positions are aligned in *turn coordinates*: a position is named by its assistant turn (the
message's index) and the number of characters left to that turn's content's end when its token closes (closes as
in ``distily.data.alignment``). Three kinds of position get one, on each side:

- the last token closing at or before the content's start, when it closes at or after the turn's start (the
  generation prompt's last token, or the last of what the model writes before the content, as Qwen3's empty
  ``<think>`` block): it has read the whole generation prompt and none of the content, and predicts the content's
  first token. Where a token spans the prompt's end into the content (`` the`` after a prompt ending ``Assistant: ``,
  as a byte-level BPE or SentencePiece's ``▁`` merges them), no position has, and that side gives none;
- each token closing inside the content;
- the end-of-turn token (when only whitespace lies between it and the content, as the assistant mask counts it),
  one past the content's end: a position the loss does not count (its next token is the template's), which makes
  the teacher's probability of ending the turn the target of the student's end-of-turn token.

Positions with the same coordinates on both sides are aligned. Content shown only in part by one template (Qwen3's
drops an earlier answer's reasoning) aligns on the part both show, the coordinates counting from the content's end.

A conversation longer than ``max_seq_length`` tokens on either side ends at the last answer both sides keep whole,
rendered as the conversation's last answer (as ``distily.data.chat`` does for one tokenizer), and is then cut to
the length on each side; pairs beyond either cut are not aligned. Each side keeps its assistant mask (the student's
``loss_mask``, the teacher's ``teacher_loss_mask`` for its own held-out metrics and its on-policy prompts).

On-policy (``CompletionAlignment``), the student's completion of a prompt is aligned with the teacher's tokens of
the same conversation's prompt in the teacher's template and the completion's text read as one text, on the
characters of that text.
"""

import bisect
import os
from dataclasses import dataclass
from typing import Optional

import datasets
from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase

from distily.data.alignment import (
    ALIGNED, ALIGNMENT_SCHEME, TEACHER_INPUT_IDS, TEACHER_LOSS_MASK, aligned_splits, cached_rows, closing_positions,
    offset_ends, shared_character_ends,
)
from distily.data.arguments import DataArguments
from distily.data.chat import (
    MESSAGES, ROW, ChatTemplate, ChatTokenization, RenderedConversation, assistant_turns, masked_assistant_turns,
    run_chat_template, target_mask,
)
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.data.tokenization_cache import default_cache_dir, tokenizer_fingerprint
from distily.data.training_data import DistillationData

END_OF_TURN = -1  # the coordinate of an end-of-turn token: one past the content's end
REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder writes for the bytes of a character it has not all of


@dataclass(frozen=True)
class ChatSide:
    """One model's side of cross-tokenizer chat data: its tokenizer and how it renders conversations."""

    tokenizer: PreTrainedTokenizerBase
    chat: ChatTokenization


def turn_coordinates(rendered: RenderedConversation) -> dict[tuple[int, int], int]:
    """(assistant message index, characters left to its content's end) -> token position, for the positions the
    module's docstring lists."""
    closing = closing_positions(offset_ends(rendered.offsets))  # character -> the token closing there
    characters = sorted(closing)
    starting = {start: position for position, (start, _) in enumerate(rendered.offsets)}
    found = {}
    for turn in rendered.turns:
        first = bisect.bisect_right(characters, turn.content_start)  # the first character inside the content
        if first > 0 and characters[first - 1] >= turn.start:  # it has read the whole generation prompt
            found[(turn.message, turn.content_end - turn.content_start)] = closing[characters[first - 1]]
        for character in characters[first : bisect.bisect_right(characters, turn.content_end)]:
            found[(turn.message, turn.content_end - character)] = closing[character]
        end_of_turn = rendered.end_of_turn_start(turn)
        if end_of_turn in starting:
            found[(turn.message, END_OF_TURN)] = starting[end_of_turn]
    return found


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
        LOSS_MASK: target_mask(student_mask, student_limit),
        TEACHER_LOSS_MASK: target_mask(teacher_mask, teacher_limit),
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
    identity = (f"aligned-chat|{ALIGNMENT_SCHEME}|{conversations._fingerprint}|"
                f"{tokenizer_fingerprint(student.tokenizer)}|{student.chat}|"
                f"{tokenizer_fingerprint(teacher.tokenizer)}|{teacher.chat}")
    return cached_rows(conversations, identity, _align_batch, {"student": student, "teacher": teacher}, cache_dir,
                       num_proc, "Rendering conversations with both templates and aligning")


def chat_templates(args: DataArguments, student_tokenizer: PreTrainedTokenizerBase,
                   teacher_tokenizer: PreTrainedTokenizerBase) -> tuple[ChatTemplate, ChatTemplate]:
    """The student's template (``student_chat_template``, or its tokenizer's own) and the teacher's
    (``chat_template``, or its tokenizer's own), both with ``chat_template_kwargs``."""
    kwargs, date = args.chat_template_kwargs, args.chat_template_date
    return (run_chat_template(student_tokenizer, args.student_chat_template, kwargs, "student",
                              "student_chat_template", date),
            run_chat_template(teacher_tokenizer, args.chat_template, kwargs, date=date))


def build_aligned_chat_datasets(args: DataArguments, templates: tuple[ChatTemplate, ChatTemplate],
                                student_tokenizer: PreTrainedTokenizerBase,
                                teacher_tokenizer: PreTrainedTokenizerBase, max_seq_length: int, seed: int,
                                conversations: datasets.Dataset) -> DistillationData:
    """Train and eval rows of checked conversations (``distily.data.chat.conversations``), each model's side
    rendered with its template of ``templates`` (student's, teacher's: ``chat_templates``); ``loss_on`` is
    ``assistant`` (``CrossTokenizerTeacher`` checks)."""
    student, teacher = (ChatSide(tokenizer, ChatTokenization(template, args.loss_on, max_seq_length))
                        for tokenizer, template in zip((student_tokenizer, teacher_tokenizer), templates))
    cache_dir = args.tokenization_cache_dir or default_cache_dir()

    def align(split: datasets.Dataset) -> datasets.Dataset:
        return align_conversations(split, student, teacher, cache_dir, args.preprocessing_num_workers)

    return aligned_splits(args, conversations, seed, max_seq_length, align, loss_on=args.loss_on)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> Optional[int]:
    """The special token that closes an assistant turn as ``template`` renders one (None when the turn ends
    otherwise), found on a two-turn probe conversation."""
    probe = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hello."}]
    where = "the conversation Distily renders to find the template's end-of-turn token"
    rendered = assistant_turns(probe, tokenizer, template, where)
    (turn,) = rendered.turns
    end_of_turn = rendered.end_of_turn_start(turn)
    return next((token for token, (start, _) in zip(rendered.ids, rendered.offsets) if start == end_of_turn), None)


def _decoded_ends(tokenizer: PreTrainedTokenizerBase, ids: list[int], text: str) -> list[int]:
    """Where each token of generated ``ids`` (decoded: ``text``) ends in ``text``: where the text of the tokens up
    to it ends; the tokens that split a character (its bytes: the text up to them decodes to a replacement character
    at its end) end where the token that completes it ends, as ``offset_ends`` reads an offset mapping
    (``closing_positions`` then closes the character at its last byte).

    A fast tokenizer's incremental decoder (``tokenizers``' ``DecodeStream``) gives most of them in one pass: the
    text each token appends. Where it appends nothing yet (a byte of a character, a token that decodes to nothing
    so far), or for a slow tokenizer, the tokens up to it are decoded whole (45-60 ms for 512 tokens if done for
    every token)."""
    stream = DecodeStream(skip_special_tokens=False) if tokenizer.is_fast else None
    written, ends, inside = 0, [], []
    for count in range(1, len(ids) + 1):
        try:
            piece = stream.step(tokenizer.backend_tokenizer, ids[count - 1]) if stream is not None else None
        except Exception:  # tokenizers raises a bare Exception where a token rewrites the text before it
            stream = piece = None
        if piece is not None and not text.startswith(piece, written):
            stream = piece = None  # the decoder's pieces left the text: decode whole from here on
        if piece is not None:
            written += len(piece)
            ends.append(written)
            inside.append(False)
            continue
        decoded = tokenizer.decode(ids[:count], clean_up_tokenization_spaces=False)
        common = len(os.path.commonprefix([decoded, text]))
        ends.append(common if text.startswith(decoded) else min(common + 1, len(text)))
        inside.append(decoded.endswith(REPLACEMENT_CHARACTER) and not text.startswith(decoded))
    return shared_character_ends(ends, inside)


@dataclass(frozen=True)
class CompletionAlignment:
    """How a student's completions become aligned rows: both tokenizers, the student's stop tokens, the teacher's
    end-of-turn token (None: its turns end otherwise) and the longest row the teacher takes."""

    student_tokenizer: PreTrainedTokenizerBase
    teacher_tokenizer: PreTrainedTokenizerBase
    stop_ids: tuple[int, ...]
    teacher_end: Optional[int]
    max_length: int

    def row(self, prompt: list[int], completion: list[int], teacher_prompt: list[int]) -> dict:
        """The aligned row of the student's ``completion`` of ``prompt``, whose teacher side is ``teacher_prompt``
        (the same conversation in the teacher's template). The completion's text is what the student wrote after
        its prompt (``written_after``); the teacher reads its prompt and that text as one text (``read_after``),
        then its end-of-turn token when the student ended its turn. Aligned: the two prompts' last positions (both
        predict the completion's first token; none where a teacher token spans the join, as a BPE merge can), the
        tokens closing at the same character of the completion's text, and the two end-of-turn tokens;
        ``loss_mask`` 1 at the positions that predict completion tokens."""
        ended = bool(completion) and completion[-1] in self.stop_ids
        content = completion[:-1] if ended else completion
        text, student_ends = written_after(self.student_tokenizer, prompt, content)
        kept, teacher_content, teacher_ends = read_after(self.teacher_tokenizer, teacher_prompt, text)
        ending = [self.teacher_end] if ended and self.teacher_end is not None else []
        teacher_ids = (teacher_prompt[:kept] + teacher_content + ending)[: self.max_length]
        start = len(prompt)
        aligned = [-1] * (start + len(completion))
        teacher_closing = closing_positions(teacher_ends)
        if 0 in teacher_closing:  # a teacher token ends at the join (none where one spans it)
            aligned[start - 1] = kept + teacher_closing[0]
        for character, position in closing_positions(student_ends).items():
            if character > 0 and character in teacher_closing:
                aligned[start + position] = kept + teacher_closing[character]
        if ending:
            aligned[start + len(content)] = kept + len(teacher_content)
        aligned = [partner if partner < len(teacher_ids) else -1 for partner in aligned]
        loss_mask = [0] * len(aligned)
        loss_mask[start - 1 : start + len(completion) - 1] = [1] * len(completion)
        return {INPUT_IDS: prompt + completion, TEACHER_INPUT_IDS: teacher_ids, ALIGNED: aligned,
                LOSS_MASK: loss_mask}


def last_segment(tokenizer: PreTrainedTokenizerBase, prompt: list[int]) -> int:
    """Where the prompt's last segment starts: at its last added token (0 without one). A tokenizer splits a text
    at its added tokens before anything else, so what it reads from there on does not depend on what came before."""
    added = tokenizer.added_tokens_decoder
    return max((at for at, token in enumerate(prompt) if token in added), default=0)


def written_after(tokenizer: PreTrainedTokenizerBase, prompt: list[int], ids: list[int]) -> tuple[str, list[int]]:
    """(text, ends): the text generated ``ids`` add after ``prompt``, decoded in its context (decoded alone, a
    SentencePiece token's leading space would be dropped as a text's first), and where each of them ends in it."""
    context = prompt[last_segment(tokenizer, prompt):]
    before = tokenizer.decode(context, clean_up_tokenization_spaces=False)
    whole = tokenizer.decode(context + ids, clean_up_tokenization_spaces=False)
    ends = _decoded_ends(tokenizer, context + ids, whole)[len(context):]
    return whole[len(before):], [end - len(before) for end in ends]


def read_after(tokenizer: PreTrainedTokenizerBase, prompt: list[int], text: str) -> tuple[int, list[int], list[int]]:
    """(kept, ids, ends): ``prompt`` followed by ``text`` as the tokenizer reads them as one text: ``prompt[:kept]``
    then ``ids``, which read the prompt's last segment and ``text`` together (a token may span the join; a
    SentencePiece tokenizer prepends its space at a text's start only), each ending at ``ends`` (characters of
    ``text``: 0 or less inside the prompt). The segment is given as its text: its added token's, then the rest
    decoded alone, which a tokenizer reads back as the same tokens after that added token."""
    kept = last_segment(tokenizer, prompt)
    segment = prompt[kept:]
    split = 1 if segment and segment[0] in tokenizer.added_tokens_decoder else 0
    before = "".join(tokenizer.decode(piece, clean_up_tokenization_spaces=False)
                     for piece in (segment[:split], segment[split:]))
    encoded = tokenizer(before + text, add_special_tokens=False, return_offsets_mapping=True)
    return kept, encoded[INPUT_IDS], [end - len(before) for end in offset_ends(encoded["offset_mapping"])]
