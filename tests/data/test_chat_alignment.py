"""Cross-tokenizer chat data: a byte-level teacher in one family's template and a SentencePiece student in another's
align inside the assistant's turns only, on the same characters of its content; so do a student's completions and
the teacher's tokens of their text."""

import os
import random

import pytest

from distily.data.alignment import ALIGNED, TEACHER_INPUT_IDS, collate_aligned
from distily.data.chat import (
    ChatTemplate, ChatTokenization, assistant_turns, masked_assistant_turns, prompt_ids,
)
from distily.data.alignment import TEACHER_LOSS_MASK
from distily.data.chat_alignment import (
    ChatSide, CompletionAlignment, _decoded_ends, align_conversation, end_of_turn_id,
)
from distily.data.framing import INPUT_IDS, LOSS_MASK
from tests.tiny import (
    CHAT_STYLES, make_chat_tokenizer, make_conversations, make_sentencepiece_chat_tokenizer,
)

PAIRS = [("llama3", "chatml"), ("gemma", "phi3"), ("qwen3", "llama3"), ("chatml", "qwen3")]  # teacher, student


def side(tokenizer, style: str, max_length: int = 512) -> ChatSide:
    return ChatSide(tokenizer, ChatTokenization(ChatTemplate(CHAT_STYLES[style][0]), "assistant", max_length))


def content_read(rendered, position: int, message: int):
    """The characters of assistant ``message``'s content a model has read once it read the token at ``position``
    (None before the content starts), from the tokenizer's offsets and the turn's place in the rendering."""
    turn = next(turn for turn in rendered.turns if turn.message == message)
    end = rendered.offsets[position][1]
    return rendered.text[turn.content_start:end] if end > turn.content_start else None


@pytest.mark.parametrize("teacher_style, student_style", PAIRS)
def test_positions_align_on_the_same_characters_of_each_answer(teacher_style, student_style):
    teacher = side(make_chat_tokenizer(teacher_style), teacher_style)
    student = side(make_sentencepiece_chat_tokenizer(student_style), student_style)
    for row, messages in enumerate(make_conversations(12, seed=2)):
        if teacher_style == "gemma" and messages[0]["role"] == "system":
            messages = messages[1:]  # Gemma's template folds a system turn into the first question: kept apart here
        aligned_row = align_conversation(messages, row, student, teacher)
        renderings = [assistant_turns(messages, s.tokenizer, s.chat.template, row) for s in (student, teacher)]
        student_rendered, teacher_rendered = renderings
        assert (aligned_row[INPUT_IDS], aligned_row[TEACHER_INPUT_IDS]) == (student_rendered.ids, teacher_rendered.ids)
        student_end, teacher_end = (s.tokenizer.convert_tokens_to_ids(CHAT_STYLES[style][2])
                                    for s, style in ((student, student_style), (teacher, teacher_style)))
        pairs = [(i, j) for i, j in enumerate(aligned_row[ALIGNED]) if j >= 0]
        closing = [(i, j) for i, j in pairs if student_rendered.ids[i] == student_end]
        assert len(closing) == len(student_rendered.turns)  # each answer's end-of-turn tokens are paired
        assert all(teacher_rendered.ids[j] == teacher_end for _, j in closing)
        assert all(aligned_row[LOSS_MASK][i] == 0 for i, _ in closing)  # their next tokens are the templates'
        for turn in student_rendered.turns:
            within = [(i, j) for i, j in pairs if (i, j) not in closing
                      and student_rendered.offsets[i][1] <= turn.content_end
                      and (i + 1 >= len(student_rendered.offsets) or student_rendered.offsets[i + 1][1] > turn.start)]
            reads = [(content_read(student_rendered, i, turn.message), content_read(teacher_rendered, j, turn.message))
                     for i, j in within]
            assert reads[0] == (None, None)  # the last position before the answer: both predict its first token
            assert all(s == t and s for s, t in reads[1:])  # then the same characters of the answer read by both
            assert reads[-1][0] == student_rendered.text[turn.content_start:turn.content_end]  # up to its end
            assert all(aligned_row[LOSS_MASK][i] == 1 for i, _ in within)  # every aligned position a loss position
        assert len(pairs) > len(closing) + 2 * len(student_rendered.turns)  # most of each answer aligns


def test_a_conversation_too_long_for_one_side_ends_at_the_last_answer_both_keep():
    """The teacher's side is cut before its last answer's first token: the row is the conversation up to its
    second answer, rendered whole on both sides (the student's side would have fitted)."""
    llama3, student = make_chat_tokenizer("llama3"), side(make_sentencepiece_chat_tokenizer("chatml"), "chatml")
    messages = next(m for m in make_conversations(40, seed=5) if sum(t["role"] == "assistant" for t in m) == 3)
    _, _, firsts = masked_assistant_turns(messages, llama3, side(llama3, "llama3").chat.template, 0)
    row = align_conversation(messages, 0, student, side(llama3, "llama3", max_length=firsts[2]))
    second_answer = [k for k, turn in enumerate(messages) if turn["role"] == "assistant"][1]
    assert row == align_conversation(messages[: second_answer + 1], 0, student, side(llama3, "llama3"))
    assert len(row[TEACHER_INPUT_IDS]) <= firsts[2]
    assert len(row[TEACHER_LOSS_MASK]) == len(row[TEACHER_INPUT_IDS]) and sum(row[TEACHER_LOSS_MASK]) > 0


def test_a_first_answer_longer_than_a_side_is_cut_there_and_aligned_within_both_cuts():
    llama3, chatml = make_chat_tokenizer("llama3"), make_sentencepiece_chat_tokenizer("chatml")
    messages = [{"role": "user", "content": "the cat sees a book today."},
                {"role": "assistant", "content": "the cat sees a book today. " * 4}]
    (_, _, (teacher_first,)), (_, _, (student_first,)) = (
        masked_assistant_turns(messages, tokenizer, side(tokenizer, style).chat.template, 0)
        for tokenizer, style in ((llama3, "llama3"), (chatml, "chatml")))
    teacher_limit, student_limit = teacher_first + 6, student_first + 10
    teacher, student = side(llama3, "llama3", teacher_limit), side(chatml, "chatml", student_limit)
    row = align_conversation(messages, 0, student, teacher)
    assert len(row[INPUT_IDS]) == student_limit and len(row[TEACHER_INPUT_IDS]) == teacher_limit
    assert 0 < max(row[ALIGNED]) < teacher_limit and len(row[ALIGNED]) == len(row[LOSS_MASK]) == student_limit
    assert row[LOSS_MASK][-1] == 0  # the last kept position's target was cut
    short = align_conversation(messages[:1] + [{"role": "assistant", "content": "a dog."}], 1, student, teacher)
    batch = collate_aligned([row, short])
    assert batch[LOSS_MASK].shape == batch[INPUT_IDS].shape and batch[LOSS_MASK][1].sum() == sum(short[LOSS_MASK])


@pytest.mark.parametrize("text", ["a dog finds the tree slowly.", "the café sees a book 🙂 today.", ""])
@pytest.mark.parametrize("sentencepiece_student", [True, False], ids=["sentencepiece_student", "byte_level_student"])
def test_a_students_completion_aligns_with_the_teachers_tokens_of_its_text(text, sentencepiece_student):
    """On-policy rows across tokenizers: the student's completion (its tokens of ``text``, then its end of turn)
    after its prompt, the teacher's tokens of the same text after the same conversation in its template; the
    tokens that split a character (bytes of an emoji) close it at its last byte, on either side."""
    sides = [(make_sentencepiece_chat_tokenizer("chatml"), "chatml"), (make_chat_tokenizer("llama3"), "llama3")]
    (student_tokenizer, student_style), (teacher_tokenizer, teacher_style) = sides[::1 if sentencepiece_student else -1]
    question = [{"role": "user", "content": "a dog finds the tree slowly."}]
    prompt, teacher_prompt = (prompt_ids(tokenizer, question, ChatTemplate(CHAT_STYLES[style][0]), "the prompt")
                              for tokenizer, style in ((student_tokenizer, student_style),
                                                       (teacher_tokenizer, teacher_style)))
    student_end, teacher_end = (tokenizer.convert_tokens_to_ids(CHAT_STYLES[style][2])
                                for tokenizer, style in ((student_tokenizer, student_style),
                                                         (teacher_tokenizer, teacher_style)))
    assert end_of_turn_id(teacher_tokenizer, ChatTemplate(CHAT_STYLES[teacher_style][0])) == teacher_end
    alignment = CompletionAlignment(student_tokenizer, teacher_tokenizer, (student_end,), teacher_end, 512)
    words = student_tokenizer(text, add_special_tokens=False)[INPUT_IDS]
    row = alignment.row(prompt, words + [student_end], teacher_prompt)
    teacher_words = teacher_tokenizer(text, add_special_tokens=False)[INPUT_IDS]
    assert row[INPUT_IDS] == prompt + words + [student_end]
    assert row[TEACHER_INPUT_IDS] == teacher_prompt + teacher_words + [teacher_end]
    start, teacher_start = len(prompt), len(teacher_prompt)
    assert row[LOSS_MASK] == [0] * (start - 1) + [1] * (len(words) + 1) + [0]
    aligned = row[ALIGNED]
    assert aligned[start - 1] == teacher_start - 1 and aligned[-1] == len(row[TEACHER_INPUT_IDS]) - 1
    assert all(j < 0 for j in aligned[: start - 1])
    for i in range(start, start + len(words)):  # the same text read on both sides
        j = aligned[i]
        if j >= 0:
            assert student_tokenizer.decode(words[: i - start + 1]) == teacher_tokenizer.decode(
                teacher_words[: j - teacher_start + 1])
    if words:  # the last token of the text always aligns: both have read all of it
        assert aligned[start + len(words) - 1] == teacher_start + len(teacher_words) - 1
    unended = alignment.row(prompt, words, teacher_prompt)  # no end of turn: max_new_tokens reached
    assert unended[TEACHER_INPUT_IDS] == teacher_prompt + teacher_words


def prefix_decoded_ends(tokenizer, ids: list[int], text: str) -> list[int]:
    """The reference: decode every prefix; a prefix of ``text`` ends where it ends, one that ends inside a character
    (a replacement character at its end) ends where that character does."""
    ends = []
    for count in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:count], clean_up_tokenization_spaces=False)
        common = len(os.path.commonprefix([decoded, text]))
        ends.append(common if text.startswith(decoded) else min(common + 1, len(text)))
    return ends


@pytest.mark.parametrize("sentencepiece", [True, False], ids=["sentencepiece", "byte_level"])
def test_where_generated_tokens_end_matches_decoding_every_prefix_in_one_pass(sentencepiece, monkeypatch):
    """Completions are sampled, so any ids: random ones (byte pieces out of order, special tokens, pieces that
    decode to nothing) and a tokenized text with an emoji. The incremental decoder gives the reference's ends, and
    decodes whole only where a token appends nothing yet: a few times for 200 tokens, not 200 times."""
    tokenizer = make_sentencepiece_chat_tokenizer("chatml") if sentencepiece else make_chat_tokenizer("llama3")
    rng = random.Random(0)
    samples = [[rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 30))] for _ in range(200)]
    text = " ".join(rng.choice(["a dog", "finds", "the café", "tree 🙂", "slowly."]) for _ in range(60))
    words = tokenizer(text, add_special_tokens=False)[INPUT_IDS][:200]
    for ids in samples + [words]:
        decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        assert _decoded_ends(tokenizer, ids, decoded) == prefix_decoded_ends(tokenizer, ids, decoded), ids
    decoded = tokenizer.decode(words, clean_up_tokenization_spaces=False)
    inner_bytes = sum(len(character.encode()) - 1 for character in decoded)
    calls = []
    decode = type(tokenizer).decode
    monkeypatch.setattr(type(tokenizer), "decode", lambda self, *a, **k: calls.append(1) or decode(self, *a, **k))
    _decoded_ends(tokenizer, words, decoded)
    # whole decodes: at a token ending inside a character (at most once per byte but its last) and at a first
    # piece that decodes to nothing
    assert 0 < inner_bytes and len(calls) <= 1 + inner_bytes < len(words) / 2
