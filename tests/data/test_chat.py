"""Chat data: formats, chat-template tokenization, assistant masks, framing and bad inputs."""

import datetime
import json
import logging
import re

import datasets
import pytest
import torch
from tokenizers import AddedToken
from transformers.utils import chat_template_utils

from distily.data.arguments import DataArguments
from distily.data import chat
from distily.data.batches import collate
from distily.data.chat import (
    MESSAGES_FORMAT, ChatTemplate, assistant_token_mask, conversations, prompt_ids, run_chat_template,
)
from distily.data.chat_alignment import end_of_turn_id
from distily.data.documents import load_training_documents
from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS, check_document_isolation, model_inputs
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.models.teacher import load_teacher
from distily.training.on_policy import batch_prompts
from tiny import (
    CHAT_STYLES, DATED_TEMPLATE, EMPTY_REASONING, HARMONY_TEMPLATE, LLAMA3_DATED_TEMPLATE, QWEN3_TEMPLATE,
    REASONING_CONTENT_TEMPLATE, make_chat_tokenizer, make_conversations, make_harmony_tokenizer, make_tokenizer,
    save_tiny_model, write_chat_jsonl,
)


def _expected_mask_ids(messages, tokenizer, style):
    """The assistant turns' content tokens, each followed by the end-of-turn token; with Qwen3's template the last
    answer opens with the empty reasoning block the model writes before it."""
    ids = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            opening = EMPTY_REASONING if style == "qwen3" and index == len(messages) - 1 else ""
            ids += tokenizer(opening + message["content"], add_special_tokens=False)[INPUT_IDS]
            ids.append(tokenizer.convert_tokens_to_ids(CHAT_STYLES[style][2]))
    return ids


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_assistant_mask_is_the_assistant_content_and_end_of_turn(style):
    tokenizer = make_chat_tokenizer(style)
    for row, messages in enumerate(make_conversations(6)):
        ids, mask = assistant_token_mask(messages, tokenizer, ChatTemplate(tokenizer.chat_template), row)
        assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)[INPUT_IDS]
        assert [token for token, kept in zip(ids, mask) if kept] == _expected_mask_ids(messages, tokenizer, style)
        turns = sum(message["role"] == "assistant" for message in messages)
        runs = sum(1 for i, kept in enumerate(mask) if kept and (i == 0 or not mask[i - 1]))
        assert runs == turns  # each turn one contiguous span


def _masked_text(messages, tokenizer) -> str:
    ids, mask = assistant_token_mask(messages, tokenizer, ChatTemplate(tokenizer.chat_template), 0)
    return tokenizer.decode([token for token, kept in zip(ids, mask) if kept])


def test_reasoning_in_qwen3s_last_answer_is_the_assistants_and_an_earlier_answer_is_what_the_template_keeps():
    tokenizer = make_chat_tokenizer("qwen3")
    question = {"role": "user", "content": "the cat sleeps."}
    thought = {"role": "assistant", "content": "<think>\nI repeat it.\n</think>\n\nthe cat sleeps."}
    assert _masked_text([question, thought], tokenizer) == thought["content"] + "<|im_end|>"
    # reasoning written without the template's newlines: the answer as the template writes it
    terse = {"role": "assistant", "content": "<think>I repeat it.</think>the cat sleeps."}
    assert _masked_text([question, terse], tokenizer) == thought["content"] + "<|im_end|>"
    # an answer that is a piece of the empty reasoning block: its own occurrence, the one that ends the turn
    for answer in ("k", "think", "\nin"):
        turns = [question, {"role": "assistant", "content": answer}]
        assert _masked_text(turns, tokenizer) == EMPTY_REASONING + answer + "<|im_end|>"
    # the template drops an earlier answer's reasoning: the answer it keeps is the assistant's
    later = {"role": "assistant", "content": "yes."}
    assert _masked_text([question, thought, question, later], tokenizer) == (
        f"the cat sleeps.<|im_end|>{EMPTY_REASONING}yes.<|im_end|>")
    # a template that leaves the assistant's turns out: nothing of them to mask
    dropping = QWEN3_TEMPLATE.replace("{{ answer + '<|im_end|>\\n' }}", "{{ '' }}")
    assert dropping != QWEN3_TEMPLATE
    with pytest.raises(DistilyConfigError, match="assistant turn 1 of row 0 .* verbatim, or its end"):
        assistant_token_mask([question, thought, question, later], tokenizer, ChatTemplate(dropping), 0)


R1_TEMPLATE = (  # the DeepSeek-R1 distills' habits: BOS and the system prompt first, every answer's <think> reasoning
    # dropped, and a generation prompt that opens a <think> block the conversation does not hold
    "{{ bos_token }}{% for m in messages if m['role'] == 'system' %}{{ m['content'] }}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'].split('</think>')[-1] + eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def _r1_tokenizer():
    tokenizer = make_tokenizer("<｜end▁of▁sentence｜>")
    tokenizer.add_tokens(["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"], special_tokens=True)
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.bos_token = "<｜begin▁of▁sentence｜>"
    tokenizer.chat_template = R1_TEMPLATE
    return tokenizer


def test_an_answer_that_starts_like_the_rest_of_the_generation_prompt_is_the_assistants_whole():
    """Where the conversation holds only part of the generation prompt (Qwen3's with enable_thinking=false before an
    earlier answer, the R1 distills' before every answer), only the prompt's whole tokens it holds are the
    prompt's: the ``<`` of an answer starting ``<b>`` is no part of ``<think>``."""
    question = {"role": "user", "content": "the cat sleeps."}
    tagged = {"role": "assistant", "content": "<b>the cat</b> sleeps."}
    qwen3 = make_chat_tokenizer("qwen3")
    no_thinking = ChatTemplate(qwen3.chat_template, {"enable_thinking": False})
    ids, mask = assistant_token_mask([question, tagged, question, tagged], qwen3, no_thinking, 0)
    assert qwen3.decode([token for token, kept in zip(ids, mask) if kept]) == (
        "<b>the cat</b> sleeps.<|im_end|><b>the cat</b> sleeps.<|im_end|>")
    r1 = _r1_tokenizer()
    for answer in (tagged, {"role": "assistant", "content": "the cat sleeps."}):
        assert _masked_text([question, answer], r1) == answer["content"] + r1.eos_token


def test_a_template_that_writes_only_the_end_of_the_last_answer_is_refused():
    """The R1 distills' template drops the reasoning of the last answer too: the student would learn the answer
    without the reasoning the teacher writes first. An earlier answer's reasoning is history it may drop."""
    r1 = _r1_tokenizer()
    question = {"role": "user", "content": "the cat sleeps."}
    thought = {"role": "assistant", "content": "<think>\nI repeat it.\n</think>\n\nthe cat sleeps."}
    with pytest.raises(DistilyConfigError, match=r"\A[^\n]*only the end of the last answer \(turn 1\) of row 0 "):
        assistant_token_mask([question, thought], r1, ChatTemplate(r1.chat_template), 0)
    assert _masked_text([question, thought, question, {"role": "assistant", "content": "yes."}], r1) == (
        "\n\nthe cat sleeps." + r1.eos_token + "yes." + r1.eos_token)
    # Qwen3's generation prompt with enable_thinking=false holds an empty <think> block: a last answer with
    # reasoning is no answer the model writes after it
    qwen3 = make_chat_tokenizer("qwen3")
    with pytest.raises(DistilyConfigError, match=r"only the end of the last answer \(turn 1\) of row 0 "):
        no_thinking = ChatTemplate(qwen3.chat_template, {"enable_thinking": False})
        assistant_token_mask([question, thought], qwen3, no_thinking, 0)


def test_a_role_token_that_takes_the_whitespace_after_it_stays_the_prompts():
    """Phi-3's role tokens strip the whitespace on their right (rstrip): before an answer that starts with a space
    (a completion " Paris."), ``<|assistant|>`` takes the generation prompt's newline and that space, and ends
    inside the answer; it is still the template's token, not the assistant's."""
    tokenizer = make_tokenizer()
    tokenizer.add_tokens([AddedToken(token, rstrip=True, special=True, normalized=False)
                          for token in CHAT_STYLES["phi3"][1]], special_tokens=True)
    tokenizer.chat_template = CHAT_STYLES["phi3"][0]
    turns = [{"role": "user", "content": "the cat sleeps."}, {"role": "assistant", "content": " the cat sleeps."}]
    assert _masked_text(turns, tokenizer) == "the cat sleeps.<|end|>"


def test_an_earlier_answer_that_starts_like_the_end_of_the_generation_prompt_keeps_those_tokens():
    """An answer before the last that starts as the generation prompt ends (``<think>``, where Qwen3's prompt with
    enable_thinking=false and the R1 distills' open a block the template writes before no earlier answer) holds
    those tokens itself: the mask is its content's tokens and its end of turn, as for any other answer."""
    question, later = {"role": "user", "content": "the cat sleeps."}, {"role": "assistant", "content": "yes."}
    qwen3 = make_chat_tokenizer("qwen3")
    no_thinking = ChatTemplate(qwen3.chat_template, {"enable_thinking": False})
    r1 = _r1_tokenizer()
    for answer in ("<think> is a tag.", "<think>\nthe cat sleeps."):
        turns = [question, {"role": "assistant", "content": answer}, question, later]
        ids, mask = assistant_token_mask(turns, qwen3, no_thinking, 0)
        assert qwen3.decode([token for token, kept in zip(ids, mask) if kept]) == f"{answer}<|im_end|>yes.<|im_end|>"
        assert _masked_text(turns, r1) == f"{answer}{r1.eos_token}yes.{r1.eos_token}"


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_an_answer_that_repeats_an_earlier_turn_is_masked_where_it_is_written(style):
    """Answers equal to the question before them and to each other: each turn's own tokens are masked, once."""
    tokenizer = make_chat_tokenizer(style)
    sentence = "the cat sleeps."
    messages = [{"role": role, "content": sentence} for role in ("user", "assistant") * 3]
    ids, mask = assistant_token_mask(messages, tokenizer, ChatTemplate(tokenizer.chat_template), 0)
    assert [token for token, kept in zip(ids, mask) if kept] == _expected_mask_ids(messages, tokenizer, style)
    assert sum(1 for i, kept in enumerate(mask) if kept and (i == 0 or not mask[i - 1])) == 3


MISTRAL_V3_TEMPLATE = (  # Mistral v3's habits (Nemo's alike, without the spaces): no generation prompt, the system
    # message written into the last user turn only, an answer opened by a space
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{{ bos_token }}{% for message in turns %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.last else '') + message['content'] + '[/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}"
)


def test_mistrals_system_message_in_the_last_user_turn_only_is_refused_saying_so():
    """Mistral v3's and Nemo's templates write the system message into the last user turn only, so a conversation
    that ends with an answer is rendered without it: the refusal says so in one line."""
    tokenizer = make_tokenizer("</s>")
    tokenizer.add_tokens(["<s>", "[INST]", "[/INST]"], special_tokens=True)
    tokenizer.bos_token = "<s>"
    template = ChatTemplate(MISTRAL_V3_TEMPLATE)
    turns = [{"role": "user", "content": "the cat sleeps."}, {"role": "assistant", "content": "yes."}]
    ids, mask = assistant_token_mask(turns * 2, tokenizer, template, 0)
    assert tokenizer.decode([token for token, kept in zip(ids, mask) if kept]) == " yes.</s> yes.</s>"
    system = [{"role": "system", "content": "Be brief."}]
    for conversation in (system + turns, system + turns * 2):
        with pytest.raises(DistilyConfigError, match=r"\A[^\n]*system message only where a user's turn is the "
                                                     r"conversation's last[^\n]*rows without a system message"):
            assistant_token_mask(conversation, tokenizer, template, 3)


def test_special_tokens_the_model_writes_before_its_answer_are_the_assistants_as_generation_markers_say():
    """gpt-oss's template: the answer follows special tokens the model writes after the generation prompt. The mask
    is transformers' {% generation %} mask (on the marked template; Distily renders it without the markers), also
    for answers that are a channel's or role's name and a thinking that repeats the answer; the end of turn is
    <|return|>; the on-policy prompt, the row up to its last answer, is the template's generation prompt."""
    tokenizer = make_harmony_tokenizer()
    plain = tokenizer.chat_template
    conversations = make_conversations(6)
    conversations[1][-1] = {"role": "assistant", "content": "user", "thinking": "user"}
    conversations[2][1]["content"] = "final"
    conversations[4][-1]["thinking"] = "the cat sees a book."
    for row, messages in enumerate(conversations):
        ids, mask = assistant_token_mask(messages, tokenizer, ChatTemplate(plain), row)
        marked = tokenizer.apply_chat_template(messages, chat_template=HARMONY_TEMPLATE, return_dict=True,
                                               return_assistant_tokens_mask=True)
        assert (ids, mask) == (marked[INPUT_IDS], marked["assistant_masks"])
        first_of_last = max(at for at in range(len(mask)) if mask[at] and not mask[at - 1])
        assert ids[:first_of_last] == tokenizer.apply_chat_template(
            messages[:-1], chat_template=plain, add_generation_prompt=True, return_dict=True)[INPUT_IDS]
    assert end_of_turn_id(tokenizer, ChatTemplate(plain)) == tokenizer.convert_tokens_to_ids("<|return|>")


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_an_answer_holding_a_special_tokens_text_is_refused_saying_so(style):
    """The tokenizer reads the text as the special token, which splits the answer: it was refused for a template that
    does not render the answer where it should. Elsewhere in a conversation the text is the user's to write."""
    tokenizer = make_chat_tokenizer(style)
    end = CHAT_STYLES[style][2]
    template = ChatTemplate(tokenizer.chat_template)
    question, answer = {"role": "user", "content": f"what ends a turn? {end}"}, {"role": "assistant", "content": "x"}
    assistant_token_mask([question, answer], tokenizer, template, 0)
    with pytest.raises(DistilyConfigError, match="\\A[^\n]*\\Z") as err:
        assistant_token_mask([question, {**answer, "content": f"this: {end} ends it"}], tokenizer, template, 3)
    assert str(err.value).startswith(f"row 3's assistant turn 1 holds '{end}', the text of one of the tokenizer's")


def _dataset(tmp_path, rows, name="chat.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _args(path, tmp_path, **overrides):
    values = {"dataset_name": path, "tokenization_cache_dir": str(tmp_path / "cache"), "eval_fraction": 0.25}
    return DataArguments(**{**values, **overrides})


def _rendered_loss_masks(conversations, tokenizer):
    """Each conversation's ids -> its loss mask (the assistant mask moved one position left)."""
    rendered = {}
    for messages in conversations:
        ids, mask = assistant_token_mask(messages, tokenizer, ChatTemplate(tokenizer.chat_template), 0)
        rendered[tuple(ids)] = mask[1:] + [0]
    return rendered


def test_by_default_each_conversation_is_one_padded_row_with_its_loss_mask(tmp_path):
    tokenizer = make_chat_tokenizer("llama3")
    conversations = make_conversations(12)
    data = build_datasets(_args(write_chat_jsonl(tmp_path / "c.jsonl", conversations), tmp_path), tokenizer, 256, 0)
    assert data.framing.packing == "padded" and not data.framing.document_masks and data.eval_documents is None
    assert POSITION_IDS not in data.train.column_names and len(data.train) == 9
    rendered = _rendered_loss_masks(conversations, tokenizer)
    for row in data.train:
        assert row[LOSS_MASK].tolist() == rendered[tuple(row[INPUT_IDS].tolist())]


def test_packed_blocks_carry_each_conversations_loss_mask(tmp_path):
    tokenizer = make_chat_tokenizer("chatml")
    conversations = make_conversations(12)
    path = write_chat_jsonl(tmp_path / "c.jsonl", conversations)
    data = build_datasets(_args(path, tmp_path, packing="documents"), tokenizer, 256, 0)
    assert data.framing.packing == "documents" and data.eval_documents is None
    rendered = _rendered_loss_masks(conversations, tokenizer)
    found = 0
    for row in data.train:
        starts = (row[POSITION_IDS] == 0).nonzero().flatten().tolist() + [len(row[INPUT_IDS])]
        for begin, end in zip(starts, starts[1:]):  # each conversation of the block, whole
            assert row[LOSS_MASK][begin:end].tolist() == rendered[tuple(row[INPUT_IDS][begin:end].tolist())]
            found += 1
    assert found == 9  # the 9 training conversations (of 12, eval_fraction 0.25), none cut


def test_prompt_completion_rows_read_as_user_and_assistant_turns(tmp_path):
    tokenizer = make_chat_tokenizer("llama3")
    rows = [{"prompt": f"say {i}", "completion": f"number {i}"} for i in range(6)]
    conversational = [
        {"prompt": [{"role": "user", "content": f"say {i}"}],
         "completion": [{"role": "assistant", "content": f"number {i}"}]}
        for i in range(6)
    ]
    plain = load_training_documents(_args(_dataset(tmp_path, rows, "a.jsonl"), tmp_path))
    messages = load_training_documents(_args(_dataset(tmp_path, conversational, "b.jsonl"), tmp_path))
    assert plain["messages"] == messages["messages"] == [
        [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"number {i}"}] for i in range(6)
    ]
    ids, mask = assistant_token_mask(plain["messages"][0], tokenizer, ChatTemplate(tokenizer.chat_template), 0)
    assert tokenizer.decode([t for t, kept in zip(ids, mask) if kept]) == "number 0<|eot_id|>"


def test_a_long_conversation_is_cut_and_one_with_no_assistant_token_left_is_dropped(tmp_path):
    tokenizer = make_chat_tokenizer("chatml")
    long_answer = " ".join(["the cat sees a book today."] * 12)
    rows = [{"messages": [{"role": "user", "content": f"hi {n}"}, {"role": "assistant", "content": long_answer}]}
            for n in range(4)]
    rows += [{"messages": [{"role": "user", "content": f"{long_answer} {n}"}, {"role": "assistant", "content": "ok"}]}
             for n in range(4)]
    data = build_datasets(_args(_dataset(tmp_path, rows), tmp_path, eval_fraction=0.5), tokenizer, 96, 0)
    assert len(data.train) + len(data.eval) == 4  # one block each
    for split in (data.train, data.eval):
        for row in split:
            assert len(row[INPUT_IDS]) == 96  # cut to the block; the others (answer past 96 tokens) dropped
            assert row[LOSS_MASK][-1] == 0 and row[LOSS_MASK].sum() > 0


@pytest.mark.parametrize("packing", ["padded", "documents"])
def test_conversations_the_cut_drops_are_counted_in_a_warning_on_every_run(tmp_path, caplog, packing):
    tokenizer = make_chat_tokenizer("chatml")
    long_question = " ".join(["the cat sees a book today."] * 12)
    rows = [{"messages": [{"role": "user", "content": f"hi {n}"}, {"role": "assistant", "content": "ok"}]}
            for n in range(6)]
    rows += [{"messages": [{"role": "user", "content": f"{long_question} {n}"}, {"role": "assistant", "content": "ok"}]}
             for n in range(2)]
    args = _args(_dataset(tmp_path, rows), tmp_path, eval_fraction=0.25, packing=packing)
    for _ in range(2):  # the second run reads the tokenization cache
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distily"):
            data = build_datasets(args, tokenizer, 128, 0)  # a short conversation is 54 tokens, a long one 221
        counts = [re.match(r"(\d+) of (\d+) (train|eval) conversations were dropped: the turns before their first "
                           r"answer fill their first 128 tokens", record.getMessage()) for record in caplog.records]
        assert sum(data.packed_rows.values()) == (6 if packing == "padded" else 3)  # documents: two a block
        assert all(counts) and sum(int(found[1]) for found in counts) == 2  # the two long questions
        assert all(int(found[2]) == {"train": 6, "eval": 2}[found[3]] for found in counts)  # of the split's rows


def test_a_split_whose_conversations_the_cut_all_drops_asks_for_a_larger_max_seq_length(tmp_path):
    tokenizer = make_chat_tokenizer("chatml")
    rows = [{"messages": [{"role": "user", "content": "the cat sees a book today. " * 12},
                          {"role": "assistant", "content": "ok"}]}] * 4
    with pytest.raises(DistilyConfigError, match="\\A[^\n]*\\Z") as err:
        build_datasets(_args(_dataset(tmp_path, rows), tmp_path), tokenizer, 64, 0)
    assert "conversation with an assistant token in its first 64 tokens" in str(err.value)
    assert str(err.value).endswith("expected a larger max_seq_length")


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_a_cut_that_leaves_earlier_answers_ends_the_row_at_the_last_answer_it_keeps(tmp_path, style):
    """That answer is rendered as the conversation's last, so the on-policy prompt taken from the row is the
    template's generation prompt (with Qwen3's enable_thinking=false, the empty reasoning block closes it)."""
    tokenizer = make_chat_tokenizer(style)
    kwargs = {"enable_thinking": False} if style == "qwen3" else {}
    template = ChatTemplate(tokenizer.chat_template, kwargs)
    first = [{"role": "user", "content": "the cat sleeps."}, {"role": "assistant", "content": "the cat sleeps."}]
    long_question = {"role": "user", "content": " ".join(["the cat sees a book today."] * 12)}
    messages = first + [long_question, {"role": "assistant", "content": "a book."}]
    kept = assistant_token_mask(first, tokenizer, template, 0)
    max_length = len(kept[0]) + 12  # the cut falls in the long question
    assert len(assistant_token_mask(messages, tokenizer, template, 0)[0]) > max_length + 20
    args = _args(_dataset(tmp_path, [{"messages": messages}] * 4), tmp_path, eval_fraction=0.5,
                 chat_template_kwargs=json.dumps(kwargs) if kwargs else None)
    data = build_datasets(args, tokenizer, max_length, 0)
    rows = list(data.train) + list(data.eval)
    assert len(rows) == 4
    for row in rows:
        assert row[INPUT_IDS].tolist() == kept[0] and row[LOSS_MASK].tolist() == kept[1][1:] + [0]
        assert batch_prompts(collate([row])) == [prompt_ids(tokenizer, first[:1], template, "row 0")]


def test_no_conversation_attends_to_another(tmp_path):
    tokenizer = make_chat_tokenizer("chatml")
    teacher = load_teacher(save_tiny_model(tmp_path / "llama", "llama", tokenizer, vocab_size=len(tokenizer)))
    check_document_isolation(teacher, "teacher")
    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(12))
    data = build_datasets(_args(path, tmp_path, packing="documents"), tokenizer, 256, 0)
    row = next(row for row in data.train if int((row[POSITION_IDS] == 0).sum()) >= 2)
    batch = collate([row])
    with torch.no_grad():
        packed = teacher(**model_inputs(batch)).logits[0]
        starts = (row[POSITION_IDS] == 0).nonzero().flatten().tolist() + [len(row[INPUT_IDS])]
        for begin, end in zip(starts, starts[1:]):
            alone = teacher(input_ids=row[INPUT_IDS][None, begin:end]).logits[0]
            torch.testing.assert_close(packed[begin:end], alone, atol=1e-4, rtol=1e-4)


def test_loss_on_all_gives_no_loss_mask(tmp_path):
    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(12))
    data = build_datasets(_args(path, tmp_path, loss_on="all"), make_chat_tokenizer("phi3"), 256, 0)
    assert LOSS_MASK not in data.train.column_names


def test_a_template_file_is_read(tmp_path):
    template = tmp_path / "phi3.jinja"
    template.write_text(CHAT_STYLES["phi3"][0])
    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(12))
    tokenizer = make_chat_tokenizer("phi3", with_template=False)
    data = build_datasets(_args(path, tmp_path, chat_template=str(template)), tokenizer, 256, 0)
    assert data.train[0][LOSS_MASK].sum() > 0


PARTS_TEMPLATE = (  # Llama 4's way with a message's content: a string, or its parts in order (an image as <|image|>)
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|image|>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _text_parts(messages: list[dict], parts: int) -> list[dict]:
    """``messages`` with each content as ``parts`` text parts (cut inside words and beside spaces)."""
    def cut(text: str) -> list[dict]:
        ends = [len(text) * part // parts for part in range(parts + 1)]
        return [{"type": "text", "text": text[start:end]} for start, end in zip(ends, ends[1:])]

    return [{**message, "content": cut(message["content"])} for message in messages]


def test_content_of_text_parts_is_read_as_their_texts_joined(tmp_path):
    """Content as a list of text parts (the OpenAI form, which Gemma 3's, Llama 4's and Qwen2.5-VL's templates take)
    was refused ('expected a string'). It reads as the string of the texts joined, whose ids are those of the list
    form as a template that iterates parts renders it."""
    tokenizer = make_chat_tokenizer("llama3")
    conversations = make_conversations(8)
    for parts in (1, 3):
        rows = [{"messages": _text_parts(messages, parts)} for messages in conversations]
        read = load_training_documents(_args(_dataset(tmp_path, rows, f"{parts}.jsonl"), tmp_path))["messages"]
        assert read == conversations
        for row, (messages, parted) in enumerate(zip(read, rows)):
            ids, _ = assistant_token_mask(messages, tokenizer, ChatTemplate(PARTS_TEMPLATE), row)
            assert ids == tokenizer.apply_chat_template(parted["messages"], chat_template=PARTS_TEMPLATE,
                                                        return_dict=True)[INPUT_IDS]


@pytest.mark.parametrize("part", [{"type": "image", "image": "cat.png"}, {"type": "audio", "audio": "cat.wav"}])
def test_a_part_that_is_not_text_is_refused_in_one_line_naming_the_row_and_its_type(tmp_path, part):
    good = _text_parts([{"role": "user", "content": "a cat"}, {"role": "assistant", "content": "a cat"}], 1)
    bad = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}, good[1]]
    rows = [{"messages": good}] * 2 + [{"messages": bad}, {"messages": good}]
    with pytest.raises(DistilyConfigError, match="\\A[^\n]*\\Z") as err:
        load_training_documents(_args(_dataset(tmp_path, rows), tmp_path))
    assert f"row 2 has a user message with a part of type {part['type']!r}; expected text parts only" in str(err.value)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
         "row 0 has a message with role='bot'; expected one of system, user, assistant"),
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
         "row 0 has no assistant turn with content"),
        ([{"prompt": "a", "completion": "  "}], "row 0 has an empty completion"),
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "},
                        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
         "row 0 has an empty assistant turn (message 1); expected the text the assistant answers"),
        ([{"messages": [{"role": "user", "content": "a"}], "prompt": "a", "completion": "b"}],
         "has both a messages column ('messages') and prompt + completion columns"),
        ([{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"}]}],
         "row 0 opens with an assistant turn; expected a system or user turn before the first answer"),
    ],
)
def test_bad_chat_rows_are_refused_in_one_line(tmp_path, rows, message):
    good = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    keys = set(rows[0])
    filler = [{key: good.get(key, "x") if key != "messages" else good["messages"] for key in keys}] * 3
    with pytest.raises(DistilyConfigError, match="\\A[^\n]*\\Z") as err:
        load_training_documents(_args(_dataset(tmp_path, rows + filler), tmp_path))
    assert message in str(err.value)


def test_a_string_prompt_with_a_message_list_completion_is_refused(tmp_path):
    rows = [{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}] * 3
    dataset = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(dataset))
    with pytest.raises(DistilyConfigError, match="row 0 mixes a str prompt and a list completion; expected both"):
        load_training_documents(_args(str(dataset), tmp_path))


@pytest.mark.parametrize("completion", [[{"role": "assistant", "content": " "}], []])
def test_an_empty_conversational_completion_is_refused_in_one_line(tmp_path, completion):
    """TRL's conversational form: a completion with no answer is refused, though its prompt holds one."""
    prompt = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    rows = [{"prompt": prompt, "completion": completion}] + [{"prompt": prompt, "completion": prompt[1:2]}] * 3
    with pytest.raises(DistilyConfigError, match="\\A[^\n]*row 0 has an empty completion; expected the text the"):
        load_training_documents(_args(_dataset(tmp_path, rows), tmp_path))


def test_a_tokenizer_without_a_chat_template_is_refused(tmp_path):
    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(8))
    with pytest.raises(DistilyConfigError, match="has no chat template; expected chat_template"):
        build_datasets(_args(path, tmp_path), make_chat_tokenizer("chatml", with_template=False), 256, 0)
    with pytest.raises(DistilyConfigError, match="chat_template='missing.jinja' does not exist"):
        build_datasets(_args(path, tmp_path, chat_template="missing.jinja"), make_chat_tokenizer("chatml"), 256, 0)


def test_chat_template_kwargs_reach_the_template_and_key_the_tokenization_cache(tmp_path):
    """Qwen3's enable_thinking=false writes the empty reasoning block into the generation prompt: it is then the
    prompt's, not the assistant's to write."""
    tokenizer = make_chat_tokenizer("qwen3")
    turns = [{"role": "user", "content": "the cat sleeps."}, {"role": "assistant", "content": "the cat sleeps."}]
    plain = ChatTemplate(tokenizer.chat_template)
    no_thinking = ChatTemplate(tokenizer.chat_template, {"enable_thinking": False})
    assert _masked_text(turns, tokenizer) == EMPTY_REASONING + "the cat sleeps.<|im_end|>"
    ids, mask = assistant_token_mask(turns, tokenizer, no_thinking, 0)
    assert ids == assistant_token_mask(turns, tokenizer, plain, 0)[0]  # the same text: the block moves sides
    assert tokenizer.decode([token for token, kept in zip(ids, mask) if kept]) == "the cat sleeps.<|im_end|>"
    # before an earlier answer the conversation holds the generation prompt without the block: it starts there
    two = turns + [{"role": "user", "content": "a dog runs."}, {"role": "assistant", "content": "a dog runs."}]
    ids, mask = assistant_token_mask(two, tokenizer, no_thinking, 0)
    assert tokenizer.decode([token for token, kept in zip(ids, mask) if kept]) == (
        "the cat sleeps.<|im_end|>a dog runs.<|im_end|>")

    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(8))
    targets = {}
    for kwargs in (None, '{"enable_thinking": false}'):  # one cache directory: each its own entry
        data = build_datasets(_args(path, tmp_path, chat_template_kwargs=kwargs), tokenizer, 256, 0)
        targets[kwargs] = sum(sum(row) for row in data.train[LOSS_MASK])
    think_tokens = len(tokenizer(EMPTY_REASONING, add_special_tokens=False)[INPUT_IDS])
    assert targets[None] - targets['{"enable_thinking": false}'] == think_tokens * len(data.train)


@pytest.mark.parametrize("kwargs, message", [
    ('{"add_generation_prompt": true}', "chat_template_kwargs sets add_generation_prompt, which Distily sets"),
    ("[1]", "chat_template_kwargs='[1]' is a JSON list; expected a JSON object"),
])
def test_bad_chat_template_kwargs_are_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(DistilyConfigError, match=re.escape(message)):
        _args("c.jsonl", tmp_path, chat_template_kwargs=kwargs)


def test_a_conversation_the_template_refuses_is_one_line_naming_the_row(tmp_path):
    conversations = make_conversations(8)
    conversations[5] = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                        {"role": "assistant", "content": "c"}]  # Gemma's template takes alternating roles only
    path = write_chat_jsonl(tmp_path / "c.jsonl", conversations)
    expected = r"\Athe chat template refuses row 5 \(roles \['user', 'user', 'assistant'\]\): Conversation [^\n]*\Z"
    with pytest.raises(DistilyConfigError, match=expected):
        build_datasets(_args(path, tmp_path), make_chat_tokenizer("gemma"), 256, 0)


def test_a_template_that_is_not_prefix_consistent_is_refused_naming_the_row(tmp_path):
    # renders only the last turn: the conversation up to an assistant turn does not start the whole
    template = "{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}{% if add_generation_prompt %}A: {% endif %}"
    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(8))
    with pytest.raises(DistilyConfigError, match="renders row [0-9]+ up to its assistant turn [0-9]+ .*prefix-cons"):
        build_datasets(_args(path, tmp_path, chat_template=template), make_chat_tokenizer("chatml"), 256, 0)


@pytest.mark.parametrize("packing", ["stream", "bos_blocks"])
def test_chat_data_refuses_packings_that_mix_or_cut_conversations(tmp_path, packing):
    path = write_chat_jsonl(tmp_path / "c.jsonl", make_conversations(8))
    with pytest.raises(DistilyConfigError, match=f"packing='{packing}' would let conversations attend"):
        build_datasets(_args(path, tmp_path, packing=packing), make_chat_tokenizer("chatml"), 256, 0)


def test_read_conversations_are_fingerprinted_by_their_rows_and_columns_only(tmp_path):
    """A store recorded on chat data checks the run's documents by this fingerprint: settings that leave the rows
    alone must not change it (they made the store refuse the same file as other documents)."""
    rows = datasets.Dataset.from_list([{"messages": turns} for turns in make_conversations(8)])
    base = DataArguments(dataset_name="chat.jsonl")
    fingerprint = conversations(rows, MESSAGES_FORMAT, base)._fingerprint
    for same in ({"max_samples": 4}, {"tokenization_cache_dir": str(tmp_path)}, {"preprocessing_num_workers": 1}):
        assert conversations(rows, MESSAGES_FORMAT, DataArguments(dataset_name="chat.jsonl", **same))._fingerprint \
            == fingerprint, same
    other = rows.rename_column("messages", "turns")
    assert conversations(other, MESSAGES_FORMAT, DataArguments(dataset_name="chat.jsonl",
                                                               dataset_messages_column="turns"))._fingerprint \
        != fingerprint


def test_reasoning_content_is_rendered_and_masked_as_the_template_writes_it():
    """A message's reasoning_content (a reasoning dataset's traces) reaches the template, and the mask is what each
    assistant turn adds to the rendering after its generation prompt (rendered independently, turn by turn)."""
    tokenizer = make_chat_tokenizer("chatml", with_template=False)
    tokenizer.chat_template = REASONING_CONTENT_TEMPLATE
    messages = [{"role": "user", "content": "the cat sleeps."},  # no reasoning_content: None once read (Arrow)
                {"role": "assistant", "content": "the cat sleeps.", "reasoning_content": "I repeat it."},
                {"role": "user", "content": "a dog runs."},
                {"role": "assistant", "content": "a dog runs.", "reasoning_content": "Again."}]
    documents = datasets.Dataset.from_list([{"messages": messages}])
    read = conversations(documents, MESSAGES_FORMAT, DataArguments(dataset_name="reasoning"))["messages"][0]
    ids, mask = assistant_token_mask(read, tokenizer, ChatTemplate(REASONING_CONTENT_TEMPLATE), 0)
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)[INPUT_IDS]

    def render(turns, generation_prompt):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    answers = [render(messages[: turn + 1], False)[len(render(messages[:turn], True)):].rstrip("\n")
               for turn in (1, 3)]
    assert answers[0] == "<think>\nI repeat it.\n</think>\n\nthe cat sleeps.<|im_end|>"
    assert tokenizer.decode([token for token, kept in zip(ids, mask) if kept]) == "".join(answers)


class _Clock:
    """transformers' clock (``datetime`` in its chat template module) stopped on ``day``."""

    def __init__(self, day: str):
        self.day = day

    def now(self, *_):
        return datetime.datetime.fromisoformat(self.day)


def _dated_run_rows(tmp_path, monkeypatch, day: str, **settings) -> list[str]:
    """The training rows (decoded) of chat data rendered with a template that writes the day, in a run on ``day``
    whose tokenization cache is the same as every other's."""
    monkeypatch.setattr(chat_template_utils, "datetime", _Clock(day))
    monkeypatch.setattr(chat, "today", lambda: day, raising=False)
    tokenizer = make_chat_tokenizer("chatml", with_template=False)
    tokenizer.chat_template = DATED_TEMPLATE
    path = tmp_path / "c.jsonl"
    if not path.exists():  # the same file (its time stamp is in the cache's key)
        write_chat_jsonl(path, make_conversations(8))
    data = build_datasets(_args(str(path), tmp_path, **settings), tokenizer, 256, 0)
    return [tokenizer.decode(row[INPUT_IDS]) for row in data.train]


def test_a_template_that_writes_the_day_renders_the_runs_date_and_the_cache_keys_on_it(tmp_path, monkeypatch):
    """SmolLM3's and Mistral Small 3's templates write today's date (strftime_now): a run on another day renders
    its own date, not the tokens cached the day before; a given chat_template_date is what every day renders."""
    first = _dated_run_rows(tmp_path, monkeypatch, "2024-07-26")
    assert all(row.startswith("<|im_start|>system\nToday: 26 Jul 2024<|im_end|>") for row in first)
    later = _dated_run_rows(tmp_path, monkeypatch, "2024-07-27")
    assert all(row.startswith("<|im_start|>system\nToday: 27 Jul 2024<|im_end|>") for row in later)
    pinned = _dated_run_rows(tmp_path, monkeypatch, "2024-07-28", chat_template_date="2024-07-26")
    assert pinned == first


def test_a_dated_templates_prompts_are_rendered_with_the_runs_date():
    tokenizer = make_chat_tokenizer("chatml", with_template=False)
    template = run_chat_template(tokenizer, DATED_TEMPLATE, date="2024-07-26")
    question = [{"role": "user", "content": "hi"}]
    assert tokenizer.decode(prompt_ids(tokenizer, question, template, "row 0")).startswith(
        "<|im_start|>system\nToday: 26 Jul 2024<|im_end|>")
    assert run_chat_template(tokenizer, QWEN3_TEMPLATE, date="2024-07-26").date is None  # no date in it
    unknown = run_chat_template(tokenizer, DATED_TEMPLATE.replace("'%d %b %Y'", "style"), date="2024-07-26")
    with pytest.raises(DistilyConfigError, match="strftime_now with a format that is not a string literal"):
        prompt_ids(tokenizer, question, unknown, "row 0")
    with pytest.raises(DistilyConfigError, match="chat_template_date='26 Jul 2024' is not a date; expected YYYY-MM-DD"):
        DataArguments(chat_template_date="26 Jul 2024")


def test_a_llama3_template_given_date_string_writes_no_day_of_its_own():
    """Llama 3's template writes the day it is rendered only without date_string: given one, the template is not
    dated (no run date in its cache key, none a store checks), and renders the date_string given."""
    tokenizer = make_chat_tokenizer("llama3", with_template=False)
    question = [{"role": "user", "content": "hi"}]
    clocked = run_chat_template(tokenizer, LLAMA3_DATED_TEMPLATE, date="2024-07-26")
    assert clocked.date == "2024-07-26"
    assert "Today Date: 26 Jul 2024<|eot_id|>" in tokenizer.decode(prompt_ids(tokenizer, question, clocked, "row 0"))
    given = run_chat_template(tokenizer, LLAMA3_DATED_TEMPLATE, {"date_string": "01 Jan 2025"}, date="2024-07-26")
    assert given.date is None
    assert "Today Date: 01 Jan 2025<|eot_id|>" in tokenizer.decode(prompt_ids(tokenizer, question, given, "row 0"))
