"""Cross-tokenizer chat data: a byte-level teacher in one family's template and a SentencePiece student in another's
align inside the assistant's turns only, on the same characters of its content; so do a student's completions and
the teacher's tokens of their text."""

import logging
import os
import random
import re

import pytest

from distily.data.alignment import ALIGNED, TEACHER_INPUT_IDS, collate_aligned
from distily.data.alignment import TEACHER_LOSS_MASK
from distily.data.arguments import DataArguments
from distily.data.chat import ChatTemplate, ChatTokenization, assistant_turns, masked_assistant_turns, render_chat
from distily.data.chat_alignment import (
    ChatSide, CompletionAlignment, _decoded_ends, align_conversation, build_aligned_chat_datasets, chat_templates,
    end_of_turn_id, read_after,
)
from distily.data.documents import load_training_documents
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.errors import DistilyConfigError
from tests.tiny import (
    CHAT_STYLES, make_character_splitting_tokenizer, make_chat_tokenizer, make_conversations,
    make_sentencepiece_chat_tokenizer, make_sentencepiece_tokenizer, write_chat_jsonl,
)

PAIRS = [("llama3", "chatml"), ("gemma", "phi3"), ("qwen3", "llama3"), ("chatml", "qwen3")]  # teacher, student


def side(tokenizer, style: str, max_length: int = 512) -> ChatSide:
    return ChatSide(tokenizer, ChatTokenization(ChatTemplate(CHAT_STYLES[style][0]), "assistant", max_length))


def what_is_read(rendered, position: int) -> tuple:
    """(assistant message, whether its whole generation prompt was read, the characters of its content read) once
    the token at ``position`` was read, from the tokenizer's offsets and the turns' places in the rendering; the
    turn is the first whose end-of-turn token (or content's end) is not before the token."""
    start, end = rendered.offsets[position]
    turn = next(turn for turn in rendered.turns
                if start <= (turn.content_end if turn.closing is None else turn.closing))
    read = rendered.text[turn.content_start:min(max(end, turn.content_start), turn.content_end)]
    return turn.message, end >= turn.start, read


def is_end_of_turn(rendered, position: int) -> bool:
    return rendered.offsets[position][0] in {turn.closing for turn in rendered.turns}


def read_alike(renderings, aligned: list[int]) -> list[tuple[int, int]]:
    """The (student, teacher) positions ``aligned`` pairs, each checked: both have read their whole generation prompt
    and the same characters of the same answer, or both are end-of-turn tokens."""
    pairs = [(i, j) for i, j in enumerate(aligned) if j >= 0]
    for i, j in pairs:
        reads = what_is_read(renderings[0], i), what_is_read(renderings[1], j)
        endings = is_end_of_turn(renderings[0], i), is_end_of_turn(renderings[1], j)
        assert endings == (True, True) or (reads[0] == reads[1] and reads[0][1]), (i, j, reads)
    return pairs


@pytest.mark.parametrize("teacher_style, student_style", PAIRS)
def test_positions_align_on_the_same_characters_of_each_answer(teacher_style, student_style):
    """Every pair has read its whole generation prompt and the same characters of an answer, or is the two end-of-turn
    tokens (``read_alike``); each answer pairs from the position before it to its end, every one a loss position."""
    teacher = side(make_chat_tokenizer(teacher_style), teacher_style)
    student = side(make_sentencepiece_chat_tokenizer(student_style), student_style)
    for row, messages in enumerate(make_conversations(12, seed=2)):
        if teacher_style == "gemma" and messages[0]["role"] == "system":
            messages = messages[1:]  # Gemma's template folds a system turn into the first question: kept apart here
        aligned_row = align_conversation(messages, row, student, teacher)
        renderings = [assistant_turns(messages, s.tokenizer, s.chat.template, f"row {row}")
                      for s in (student, teacher)]
        student_rendered, teacher_rendered = renderings
        assert (aligned_row[INPUT_IDS], aligned_row[TEACHER_INPUT_IDS]) == (student_rendered.ids, teacher_rendered.ids)
        pairs = read_alike(renderings, aligned_row[ALIGNED])
        closing = [(i, j) for i, j in pairs if is_end_of_turn(student_rendered, i)]
        assert len(closing) == len(student_rendered.turns)  # each answer's end-of-turn tokens are paired
        assert all(is_end_of_turn(teacher_rendered, j) for _, j in closing)
        assert all(aligned_row[LOSS_MASK][i] == 0 for i, _ in closing)  # their next tokens are the templates'
        within = [i for i, j in pairs if (i, j) not in closing]
        assert all(aligned_row[LOSS_MASK][i] == 1 for i in within)  # every aligned position a loss position
        reads = [what_is_read(student_rendered, i) for i in within]
        for turn in student_rendered.turns:
            read = [characters for message, _, characters in reads if message == turn.message]
            assert read[0] == "" and all(read[1:])  # the last position before the answer: both predict its first token
            assert read[-1] == student_rendered.text[turn.content_start:turn.content_end]  # up to its end
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


LONG_QUESTION = [{"role": "user", "content": "the cat sees a book today. " * 12},
                 {"role": "assistant", "content": "ok"}]
CUT_ROWS = (  # distinct prompts: conversations answering one prompt stay on one side of the split
    [[{"role": "user", "content": f"hi {n}"}, {"role": "assistant", "content": "ok"}] for n in range(6)]
    + [[{**LONG_QUESTION[0], "content": f"{LONG_QUESTION[0]['content']} {n}"}, *LONG_QUESTION[1:]] for n in range(2)]
)


def _aligned_chat_data(tmp_path, conversations, max_length: int):
    """Train and eval rows of ``conversations`` for a ChatML teacher and a SentencePiece Llama 3 student."""
    teacher, student = make_chat_tokenizer("chatml"), make_sentencepiece_chat_tokenizer("llama3")
    path = write_chat_jsonl(tmp_path / "c.jsonl", conversations)
    args = DataArguments(dataset_name=path, tokenization_cache_dir=str(tmp_path / "cache"), eval_fraction=0.25)
    return build_aligned_chat_datasets(args, chat_templates(args, student, teacher), student, teacher, max_length, 0,
                                       load_training_documents(args))


def test_conversations_the_cut_drops_are_counted_in_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="distily"):
        data = _aligned_chat_data(tmp_path, CUT_ROWS, 128)  # a long question: 218 teacher tokens, 121 student ones
    counts = [re.match(r"(\d+) of (\d+) (train|eval) conversations were dropped: the turns before their first "
                       r"answer fill their first 128 tokens", record.getMessage()) for record in caplog.records]
    assert len(data.train) + len(data.eval) == 6
    assert all(counts) and sum(int(found[1]) for found in counts) == 2
    assert all(int(found[2]) == {"train": 6, "eval": 2}[found[3]] for found in counts)


def test_a_split_whose_conversations_the_cut_all_drops_asks_for_a_larger_max_seq_length(tmp_path):
    with pytest.raises(DistilyConfigError, match="\\A[^\n]*\\Z") as err:
        _aligned_chat_data(tmp_path, CUT_ROWS[-2:] * 2, 128)
    assert "conversation with an assistant token in its first 128 tokens" in str(err.value)
    assert str(err.value).endswith("expected a larger max_seq_length")


PLAIN_TEMPLATE = (  # role names, no role tokens: a generation prompt ending in a space, which the answer's first
    # token reads with it (' the' in a byte-level BPE, '▁the' in SentencePiece)
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + '</s>\\n' }}{% else %}{{ message['role'] + ': ' + message['content'] + "
    "'\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


@pytest.mark.parametrize("plain_role", ["teacher", "student"])
def test_the_position_before_an_answer_pairs_only_where_both_have_read_their_whole_generation_prompt(plain_role):
    """In a template whose generation prompt ends ``Assistant: ``, a byte-level BPE reads the answer's first word
    with the prompt's last space (`` the``): the position before it has not read the whole prompt, so it pairs with
    no position of the other side (which has read its own); every pair has read the whole prompt and the same
    characters of the answer, or is the two end-of-turn tokens. At every turn of a conversation, in either role."""
    tokenizer = make_chat_tokenizer("chatml")
    tokenizer.add_tokens(["</s>"], special_tokens=True)
    plain = ChatSide(tokenizer, ChatTokenization(ChatTemplate(PLAIN_TEMPLATE), "assistant", 512))
    chatml = side(make_sentencepiece_chat_tokenizer("chatml"), "chatml")
    student, teacher = (plain, chatml) if plain_role == "student" else (chatml, plain)
    for row, messages in enumerate(make_conversations(6, seed=2)):
        aligned = align_conversation(messages, row, student, teacher)[ALIGNED]
        renderings = [assistant_turns(messages, s.tokenizer, s.chat.template, f"row {row}")
                      for s in (student, teacher)]
        plain_rendered = renderings[0 if plain_role == "student" else 1]
        spanned = [any(start < turn.start < end for start, end in plain_rendered.offsets)
                   for turn in plain_rendered.turns]
        assert all(spanned)  # each answer's first token (' the', ' a', ...) starts in its prompt
        pairs = read_alike(renderings, aligned)
        assert all(what_is_read(renderings[0], i)[2] for i, _ in pairs)  # none before an answer
        assert len(pairs) > 4 * len(spanned)  # the answers' characters and end-of-turn tokens still pair


def sentencepiece_first_chat_tokenizer(style: str):
    """A SentencePiece chat tokenizer that prepends its space at a text's start only (``prepend_scheme: first``)."""
    tokenizer = make_sentencepiece_tokenizer(prepend_scheme="first")
    tokenizer.add_tokens(CHAT_STYLES[style][1], special_tokens=True)
    tokenizer.chat_template = CHAT_STYLES[style][0]
    return tokenizer


COMPLETION_SIDES = {  # student, teacher: (tokenizer, style)
    "sentencepiece_student": ((make_sentencepiece_chat_tokenizer, "chatml"), (make_chat_tokenizer, "llama3")),
    "byte_level_student": ((make_chat_tokenizer, "llama3"), (make_sentencepiece_chat_tokenizer, "chatml")),
    "prepend_first_teacher": ((make_chat_tokenizer, "llama3"), (sentencepiece_first_chat_tokenizer, "phi3")),
}


def test_a_template_that_refuses_the_end_of_turn_probe_is_refused_naming_the_probe_conversation():
    """distily generate and on-policy runs find the end-of-turn token on a conversation of their own; an error there
    names that conversation in one line (it named a 'row -1' of the user's data)."""
    with pytest.raises(DistilyConfigError) as err:
        end_of_turn_id(make_chat_tokenizer("chatml"), ChatTemplate("{{ raise_exception('Only tool conversations') }}"))
    message = str(err.value)
    assert "\n" not in message and not re.search(r"\brow\b", message)
    assert "the conversation Distily renders to find the template's end-of-turn token" in message


@pytest.mark.parametrize("text", ["a dog finds the tree slowly.", " the café sees 🙂 today.", "\nthe cat.", ""])
@pytest.mark.parametrize("sides", list(COMPLETION_SIDES))
def test_a_students_completion_aligns_with_the_teachers_reading_of_the_prompt_and_its_text(text, sides):
    """On-policy rows across tokenizers: the student's completion (its tokens of ``text`` after its prompt, then its
    end of turn) and, on the teacher's side, its tokens of the same conversation's prompt in its template followed by
    ``text``, read as one text, as its own rendering of the conversation gives them: a SentencePiece teacher
    prepends no space to the answer (it would to ``text`` read alone), and a SentencePiece student's leading space
    (``▁the`` after its prompt) is kept. Aligned pairs have read the same characters of ``text`` (the tokenizers'
    offsets in both renderings); tokens that split a character (bytes of an emoji) close it at its last byte."""
    (student_tokenizer, student_style), (teacher_tokenizer, teacher_style) = (
        (make(style), style) for make, style in COMPLETION_SIDES[sides])
    question = [{"role": "user", "content": "a dog finds the tree slowly."}]
    (student_prompt_text, student_read), (teacher_prompt_text, teacher_read) = (
        (prompt_text, tokenizer(prompt_text + text, add_special_tokens=False, return_offsets_mapping=True))
        for tokenizer, style in ((student_tokenizer, student_style), (teacher_tokenizer, teacher_style))
        for prompt_text in [render_chat(tokenizer, question, ChatTemplate(CHAT_STYLES[style][0]), True, "a test")])
    prompt, teacher_prompt = (tokenizer(prompt_text, add_special_tokens=False)[INPUT_IDS]
                              for tokenizer, prompt_text in ((student_tokenizer, student_prompt_text),
                                                             (teacher_tokenizer, teacher_prompt_text)))
    student_end, teacher_end = (tokenizer.convert_tokens_to_ids(CHAT_STYLES[style][2])
                                for tokenizer, style in ((student_tokenizer, student_style),
                                                         (teacher_tokenizer, teacher_style)))
    assert end_of_turn_id(teacher_tokenizer, ChatTemplate(CHAT_STYLES[teacher_style][0])) == teacher_end
    alignment = CompletionAlignment(student_tokenizer, teacher_tokenizer, (student_end,), teacher_end, 512)
    assert student_read[INPUT_IDS][: len(prompt)] == prompt
    words = student_read[INPUT_IDS][len(prompt):]
    row = alignment.row(prompt, words + [student_end], teacher_prompt)
    assert row[INPUT_IDS] == prompt + words + [student_end]
    assert row[TEACHER_INPUT_IDS] == teacher_read[INPUT_IDS] + [teacher_end]
    start = len(prompt)
    assert row[LOSS_MASK] == [0] * (start - 1) + [1] * (len(words) + 1) + [0]

    def read(offsets, prompt_text: str, position: int) -> int:  # characters of text read once position was read
        return offsets[position][1] - len(prompt_text)

    student_reads = [read(student_read["offset_mapping"], student_prompt_text, i) for i in range(len(words) + start)]
    teacher_reads = [read(teacher_read["offset_mapping"], teacher_prompt_text, j)
                     for j in range(len(teacher_read[INPUT_IDS]))]
    aligned = row[ALIGNED]
    assert all(j < 0 for j in aligned[: start - 1]) and aligned[-1] == len(row[TEACHER_INPUT_IDS]) - 1
    assert aligned[start - 1] >= 0 and teacher_reads[aligned[start - 1]] == 0  # the prompts' ends: no text read
    pairs = [(i, j) for i, j in enumerate(aligned[start : start + len(words)], start) if j >= 0]
    assert all(student_reads[i] == teacher_reads[j] > 0 for i, j in pairs)
    if words:  # the last token of the text always aligns: both have read all of it
        assert pairs[-1] == (start + len(words) - 1, len(teacher_reads) - 1)
    unended = alignment.row(prompt, words, teacher_prompt)  # no end of turn: max_new_tokens reached
    assert unended[TEACHER_INPUT_IDS] == teacher_read[INPUT_IDS]


def test_a_teacher_token_spanning_the_join_reads_both_sides_of_it_and_leaves_the_prompts_end_unaligned():
    """A prompt that ends inside a word (a prefilled answer): the teacher reads ``th`` + ``e tree`` as ``▁the``,
    ``▁tree``, as its rendering of the whole text does, so no teacher position has read the prompt alone; the
    student's ``e`` and the teacher's ``▁the`` have both read ``the``."""
    student_tokenizer, teacher_tokenizer = make_chat_tokenizer("llama3"), make_sentencepiece_chat_tokenizer("chatml")
    question = [{"role": "user", "content": "a dog finds the tree slowly."}]
    prompt_texts = [render_chat(tokenizer, question, ChatTemplate(CHAT_STYLES[style][0]), True, "a test") + "a dog th"
                    for tokenizer, style in ((student_tokenizer, "llama3"), (teacher_tokenizer, "chatml"))]
    prompt, teacher_prompt = (tokenizer(text, add_special_tokens=False)[INPUT_IDS]
                              for tokenizer, text in zip((student_tokenizer, teacher_tokenizer), prompt_texts))
    words = student_tokenizer("e tree", add_special_tokens=False)[INPUT_IDS]
    row = CompletionAlignment(student_tokenizer, teacher_tokenizer, (), None, 512).row(prompt, words, teacher_prompt)
    read = teacher_tokenizer(prompt_texts[1] + "e tree", add_special_tokens=False)[INPUT_IDS]
    joined = len(teacher_prompt) - 2  # the prompt's ▁t, h are read as ▁the with the completion's e
    assert row[TEACHER_INPUT_IDS] == read and read[:joined] == teacher_prompt[:joined]
    assert teacher_tokenizer.convert_ids_to_tokens(teacher_prompt[joined:]) == ["▁t", "h"]
    assert teacher_tokenizer.convert_ids_to_tokens(read[joined:]) == ["▁the", "▁tree"]
    start = len(prompt)
    assert row[ALIGNED][start - 1] == -1 and row[ALIGNED][start] == joined and row[ALIGNED][-1] == len(read) - 1


def prefix_decoded_ends(tokenizer, ids: list[int], text: str) -> list[int]:
    """The reference: decode every prefix; a prefix of ``text`` ends where it ends, one that ends inside a character
    (a replacement character at its end) where that character does, or later, where the first longer prefix that
    does not end inside a character ends (the tokens that split a character close together)."""
    ends, unfinished = [], []
    for count in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:count], clean_up_tokenization_spaces=False)
        common = len(os.path.commonprefix([decoded, text]))
        ends.append(common if text.startswith(decoded) else min(common + 1, len(text)))
        if decoded.endswith("\ufffd") and not text.startswith(decoded):
            unfinished.append(count - 1)
            continue
        for position in unfinished:
            ends[position] = max(ends[position], ends[-1])
        unfinished = []
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


def test_a_completion_token_that_splits_a_character_closes_it_with_the_token_that_completes_it():
    """On-policy rows: a byte-level student writes ``中文 ok`` as 中's first two bytes, then 中's last byte with 文.
    Both where its generated tokens end and where the tokens of a text read after a prompt end close 中 only with 文
    (the first token has not read 中), so the student's first token pairs with no teacher token that has read 中."""
    splitting, sentencepiece = make_character_splitting_tokenizer(), make_sentencepiece_tokenizer()
    text = "中文 ok"
    ids = splitting(text, add_special_tokens=False)[INPUT_IDS]
    assert _decoded_ends(splitting, ids, text) == [2, 2, 3, 4, 5]
    assert read_after(splitting, [], text) == (0, ids, [2, 2, 3, 4, 5])
    prompt, teacher_prompt = (tokenizer("Q: a dog?\nA:", add_special_tokens=False)[INPUT_IDS]
                              for tokenizer in (splitting, sentencepiece))
    row = CompletionAlignment(splitting, sentencepiece, (), None, 512).row(prompt, ids, teacher_prompt)
    start = len(prompt)
    assert row[ALIGNED][start] == -1 and row[ALIGNED][start + 1] >= 0
