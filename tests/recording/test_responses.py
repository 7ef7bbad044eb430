"""``distily generate`` with ``generate_prompts``: the teacher's responses written as a ``messages`` dataset."""

import json

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.config import parse_config, parse_generate_config
from distily.data import chat
from distily.data.chat import ChatTemplate, prompt_ids
from distily.data.store import TeacherStore
from distily.errors import DistilyConfigError
from distily.generation.arguments import SamplingSettings
from distily.generation.engine import HFGenerator
from distily.models.teacher import load_tokenizer
from distily.recording.generate import run_generation
from distily.recording import responses
from distily.recording.responses import load_prompts, prompt_conversations
from distily.training.distill import run_distillation
from tiny import CHATML_TEMPLATE, GEMMA_TEMPLATE, make_chat_tokenizer, make_harmony_tokenizer, save_tiny_model

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def write_rows(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def values(teacher_dirs, tmp_path, prompts: str, **overrides) -> dict:
    return {
        "teacher_model_name_or_path": teacher_dirs["llama"], "generate_prompts": prompts,
        "generate_output": str(tmp_path / "responses.jsonl"), "generate_length": 12, "generate_temperature": 1.0,
        "per_device_eval_batch_size": 4, "chat_template": TEMPLATE, "seed": 0,
        "generate_keep_unfinished": True,  # the tiny teacher seldom stops within generate_length
        **overrides,
    }


def test_prompts_become_conversations_with_the_teachers_responses(teacher_dirs, tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"the cat sees {n} books"} for n in range(5)])
    config = parse_generate_config(**values(teacher_dirs, tmp_path, prompts, generate_num_return_sequences=3))
    result = run_generation(config)
    rows = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == result["conversations"] == 15 - result["empty_dropped"] and result["empty_dropped"] <= 2
    assert all([turn["role"] for turn in row["messages"]] == ["user", "assistant"] for row in rows)
    assert {row["messages"][0]["content"] for row in rows} == {f"the cat sees {n} books" for n in range(5)}
    assert all(row["messages"][1]["content"].strip() for row in rows)


def test_greedy_responses_are_plain_transformers_greedy_generation(teacher_dirs, tmp_path):
    """generate_temperature 0: each prompt's response is what ``generate(do_sample=False)`` writes after the prompt
    that ``apply_chat_template`` renders, cut at the end of text."""
    texts = [f"the cat sees {n} books" for n in range(4)]
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": text} for text in texts])
    result = run_generation(parse_generate_config(**values(teacher_dirs, tmp_path, prompts, generate_temperature=0)))
    written = [json.loads(line)["messages"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"]).eval()
    expected = {}
    for text in texts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], chat_template=TEMPLATE,
                                            add_generation_prompt=True, return_dict=True, return_tensors="pt")
        new = teacher.generate(**ids, do_sample=False, max_new_tokens=12)[0, ids["input_ids"].shape[1]:].tolist()
        new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        expected[text] = tokenizer.decode(new)
    assert result["conversations"] == len(written) == 4 - result["empty_dropped"] > 0
    assert {turns[0]["content"]: turns[1]["content"] for turns in written} == {
        text: response for text, response in expected.items() if response.strip()}


def test_messages_prompts_keep_their_turns_and_parquet_is_written(teacher_dirs, tmp_path, capsys):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a dog reads"}]
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"messages": turns}] * 2)
    output = tmp_path / "responses.parquet"
    assert main(["generate", *sum(([f"--{key}", str(value)] for key, value in values(
        teacher_dirs, tmp_path, prompts, generate_output=str(output), generate_temperature=0).items()), [])]) == 0
    assert "conversations with the teacher's responses" in capsys.readouterr().out
    rows = datasets.load_dataset("parquet", data_files=str(output), split="train")
    assert [[turn["role"] for turn in messages] for messages in rows["messages"]] == [
        ["system", "user", "assistant"]] * len(rows)
    assert rows["messages"][0][:2] == turns


@pytest.mark.parametrize("rows, overrides, message", [
    ([{"prompt": "a dog"}, {"prompt": "  "}], {}, r"generate_prompts row 1 has an empty prompt '  '; expected text"),
    ([{"question": "a dog"}], {}, r"generate_prompts has the columns question; expected a 'prompt' column"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}], {},
     r"generate_prompts row 0 ends with a 'assistant' turn; expected the user's turn last"),
    ([{"messages": []}], {}, r"generate_prompts row 0 has no messages; expected a list of role/content turns"),
    ([{"prompt": "a dog"}], {"chat_template": None},
     r"the teacher's tokenizer \(\w+\) has no chat template; expected chat_template"),
    ([{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"role": "user", "content": "b"}] * 2}],
     {"chat_template": GEMMA_TEMPLATE},
     r"the chat template refuses generate_prompts row 1 \(roles \['user', 'user'\]\): Conversation roles must"),
])
def test_bad_prompts_are_one_line_errors_and_nothing_is_written(rows, overrides, message, teacher_dirs, tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(DistilyConfigError, match=message):
        run_generation(parse_generate_config(**values(teacher_dirs, tmp_path, prompts, **overrides)))
    assert not (tmp_path / "responses.jsonl").exists()


def test_prompts_of_text_parts_read_as_their_texts_joined_and_a_part_that_is_not_text_is_refused():
    """Content as a list of text parts (the OpenAI form) was refused; an image part is, naming the row and its type."""
    parted = [{"role": "user", "content": [{"type": "text", "text": "a dog "}, {"type": "text", "text": "reads"}]}]
    assert prompt_conversations(datasets.Dataset.from_list([{"messages": parted}])) == [
        [{"role": "user", "content": "a dog reads"}]]
    image = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image", "text": None}]}]
    with pytest.raises(DistilyConfigError, match=r"^generate_prompts row 1 has a user message with a part of type "
                                                 r"'image'; expected text parts only [^\n]*$"):
        prompt_conversations(datasets.Dataset.from_list([{"messages": parted}, {"messages": image}]))


def test_prompt_turns_are_checked_as_chat_data_reads_them():
    """generate_prompts took any string role ('tool'), writing conversations that distill then refused as chat data;
    the turns are now read by chat data's own check (message_turns)."""
    tool = [{"role": "tool", "content": "42"}, {"role": "user", "content": "and so?"}]
    with pytest.raises(DistilyConfigError, match=r"^generate_prompts row 0 has a message with role='tool'; expected "
                                                 r"one of system, user, assistant$"):
        prompt_conversations(datasets.Dataset.from_list([{"messages": tool}]))
    kept = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert prompt_conversations(datasets.Dataset.from_list([{"messages": kept}])) == [kept]


def test_the_responses_are_recorded_with_their_assistant_mask_and_a_student_trains_on_the_store(
        teacher_dirs, tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"the cat sees {n} books"} for n in range(12)])
    keys = values(teacher_dirs, tmp_path, prompts, generate_record=True, teacher_store=str(tmp_path / "store"),
                  record_top_k=8, max_seq_length=128, eval_fraction=0.25)
    result = run_generation(parse_generate_config(**keys))
    store = TeacherStore(keys["teacher_store"])
    assert store.settings["loss_on"] == "assistant"
    assert store.manifest["rows"]["train"] + store.manifest["rows"]["eval"] == result["conversations"]
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    conversations = datasets.load_dataset("json", data_files=keys["generate_output"], split="train")["messages"]
    rows = store.dataset("train", None)
    for row in rows:  # each row's targets are its assistant's response (and the end-of-turn newline) exactly
        ids, mask = row["input_ids"].tolist(), row["loss_mask"].tolist()
        text = tokenizer.decode([ids[t + 1] for t in range(len(ids)) if mask[t]])
        assert any(text.strip() == conversation[1]["content"].strip() for conversation in conversations)
    distilled = run_distillation(parse_config(**{
        key: value for key, value in keys.items() if not key.startswith("generate_") and key != "seed"},
        teacher_source="recorded", dataset_name=None, output_dir=str(tmp_path / "run"), max_steps=2,
        per_device_train_batch_size=4, student_config_overrides={"num_hidden_layers": 1}))
    assert distilled["teacher"]["source"] == "recorded"


def test_a_dated_templates_prompts_and_the_store_of_the_responses_read_one_date(teacher_dirs, tmp_path, monkeypatch,
                                                                                capsys):
    """A template that writes the day renders the prompts with the run's date (chat_template_date, else today), which
    the command reports and a store of the responses records (the prompts used to read today's, unrecorded)."""
    prompted = []  # each prompt as the teacher read it

    def reading(tokenizer, turns, template, where):
        ids = prompt_ids(tokenizer, turns, template, where)
        prompted.append(tokenizer.decode(ids))
        return ids

    monkeypatch.setattr(responses, "prompt_ids", reading)
    monkeypatch.setattr(chat, "today", lambda: "2024-07-27")
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"the cat sees {n} books"} for n in range(6)])
    keys = values(teacher_dirs, tmp_path, prompts, chat_template="Today: {{ strftime_now('%d %b %Y') }}\n" + TEMPLATE,
                  generate_record=True, teacher_store=str(tmp_path / "store"), record_top_k=8, max_seq_length=128,
                  eval_fraction=0.25, chat_template_date="2024-07-26")
    assert main(["generate", *sum(([f"--{key}", str(value)] for key, value in keys.items()), [])]) == 0
    assert prompted and all(prompt.startswith("Today: 26 Jul 2024") for prompt in prompted)
    assert "distill with chat_template_date=2024-07-26" in capsys.readouterr().out
    assert TeacherStore(keys["teacher_store"]).settings["chat_template_date"] == "2024-07-26"


def test_the_responses_are_recorded_from_the_column_written_whatever_dataset_messages_column_says(
        teacher_dirs, tmp_path):
    """dataset_messages_column names a column of dataset_name's chat data; the responses are written as ``messages``
    and recorded from there (the recording used to look for the configured column, after all the generation)."""
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": f"the cat sees {n} books"} for n in range(6)])
    keys = values(teacher_dirs, tmp_path, prompts, generate_record=True, teacher_store=str(tmp_path / "store"),
                  record_top_k=8, max_seq_length=128, eval_fraction=0.25, dataset_messages_column="conversation")
    result = run_generation(parse_generate_config(**keys))
    assert sum(result["manifest"]["rows"].values()) == result["conversations"]
    assert "loss_mask" in TeacherStore(keys["teacher_store"]).dataset("train")[0]


def test_responses_without_a_stop_token_are_dropped_and_counted_unless_kept(teacher_dirs, tmp_path):
    """A teacher whose generation config lists a second stop token (as chat models list their end of turn): the
    responses that reach it within generate_length stay, the others are dropped and counted."""
    turns = [[{"role": "user", "content": f"the cat sees {n} books"}] for n in range(8)]
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"messages": conversation} for conversation in turns])
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["llama"]).eval()
    greedy = HFGenerator(teacher, SamplingSettings(12, temperature=0), [], 0)
    free = greedy.generate([prompt_ids(tokenizer, t, ChatTemplate(TEMPLATE), "row") for t in turns])
    stop = free[0][2]  # the first prompt's answer stops after two tokens
    teacher.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    finished = {row for row, completion in enumerate(free) if {stop, tokenizer.eos_token_id} & set(completion)}
    results = {}
    for keep in (False, True):
        output = tmp_path / f"responses-{keep}.jsonl"
        results[keep] = run_generation(parse_generate_config(**values(
            {"llama": str(tmp_path / "teacher")}, tmp_path, prompts, generate_output=str(output),
            generate_temperature=0, generate_keep_unfinished=keep)))
    assert 0 < len(finished) < 8  # the test needs both kinds
    assert results[False]["unfinished_dropped"] == 8 - len(finished)
    assert results[False]["conversations"] == len(finished) - results[False]["empty_dropped"]
    assert results[True]["conversations"] == 8 - results[True]["empty_dropped"]
    assert results[True]["unfinished_dropped"] == 0


def test_a_response_ends_at_the_chat_templates_end_of_turn_that_the_generation_config_leaves_out(tmp_path):
    """A base teacher given ChatML stops only at its end of text (<eos>): its answer ends where it writes <|im_end|>.
    It used to run on into the turns after it, written as one response (or dropped as unfinished)."""
    tokenizer = make_chat_tokenizer("chatml")
    path = save_tiny_model(tmp_path / "teacher", "llama", tokenizer, vocab_size=len(tokenizer),
                           tie_word_embeddings=False)
    teacher = AutoModelForCausalLM.from_pretrained(path).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "a dog reads"}], ChatTemplate(CHATML_TEMPLATE), "row")
    written = HFGenerator(teacher, SamplingSettings(12, temperature=0), [], 0).generate([prompt])[0]
    with torch.no_grad():  # the teacher ends its turn where it wrote its third token, and writes on after it
        teacher.lm_head.weight[end] = 3 * teacher.lm_head.weight[written[2]]
    teacher.save_pretrained(path)
    free = HFGenerator(teacher, SamplingSettings(12, temperature=0), [], 0).generate([prompt])[0]
    assert end in free[1:-1] and teacher.generation_config.eos_token_id == tokenizer.eos_token_id
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "a dog reads"}])
    result = run_generation(parse_generate_config(**values(
        {"llama": path}, tmp_path, prompts, chat_template=None, generate_temperature=0,
        generate_keep_unfinished=False)))
    assert (result["conversations"], result["unfinished_dropped"]) == (1, 0)
    response = json.loads((tmp_path / "responses.jsonl").read_text())["messages"][-1]["content"]
    assert response == tokenizer.decode(free[:free.index(end)])


def test_a_response_is_the_answer_without_the_special_tokens_its_template_writes_before_it(tmp_path, monkeypatch):
    """gpt-oss's template: the teacher writes <|channel|>final<|message|>, its answer and <|return|>. The response is
    the answer (it was 'final' glued to it, which the template then framed again): the conversation written renders
    as the prompt and what the teacher wrote, also for an answer that starts like the channel's name."""
    tokenizer = make_harmony_tokenizer()
    path = save_tiny_model(tmp_path / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    answers = ["a dog reads.", "final answer"]
    written = [f"<|channel|>final<|message|>{answer}<|return|>" for answer in answers]
    open_hf = responses.open_generator

    def open_generator(*args, **kwargs):  # the teacher's generator, writing ``written``
        generator = open_hf(*args, **kwargs)
        generator.generate = lambda prompts: [tokenizer(text, add_special_tokens=False)["input_ids"]
                                              for text in written]
        return generator

    monkeypatch.setattr(responses, "open_generator", open_generator)
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "a dog"}, {"prompt": "the cat"}])
    run_generation(parse_generate_config(**values({"llama": path}, tmp_path, prompts, chat_template=None)))
    rows = [json.loads(line)["messages"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert [turns[-1]["content"] for turns in rows] == answers
    for turns, text in zip(rows, written):
        prompt = tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
        assert tokenizer.apply_chat_template(turns, tokenize=False) == prompt + text


def test_every_response_dropped_is_a_one_line_error_and_nothing_is_written(teacher_dirs, tmp_path):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "a dog"}])
    keys = values(teacher_dirs, tmp_path, prompts, generate_keep_unfinished=False, generate_length=2)
    with pytest.raises(DistilyConfigError, match=r"^every response was dropped \(0 empty, 1 without a stop token .*"
                                                 r"expected a longer generate_length; or generate_keep_unfinished"):
        run_generation(parse_generate_config(**keys))
    assert not (tmp_path / "responses.jsonl").exists()


def test_generate_prompts_split_picks_the_split_of_a_directory(teacher_dirs, tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    write_rows(folder / "train.jsonl", [{"prompt": "a train prompt"}])
    write_rows(folder / "test.jsonl", [{"prompt": "a test prompt"}])
    config = parse_generate_config(**values(teacher_dirs, tmp_path, str(folder), generate_prompts_split="test"))
    assert load_prompts(config)["prompt"] == ["a test prompt"]
    config = parse_generate_config(**values(teacher_dirs, tmp_path, str(folder), generate_prompts_split="dev"))
    with pytest.raises(DistilyConfigError, match=r"^generate_prompts='.*prompts': '.*prompts' has no split 'dev'; "
                                                 r"expected one of train, test"):
        load_prompts(config)


def test_prompts_that_fill_the_teachers_positions_are_counted_apart_and_named(tokenizer, tmp_path):
    """A prompt that leaves the teacher no position gets no response: it used to be counted as an empty one, and the
    error advised a longer generate_length."""
    teacher = {"llama": save_tiny_model(tmp_path / "teacher", "gpt2", tokenizer, n_positions=24)}
    long_prompt = {"prompt": " ".join(["the cat sees a book"] * 8)}
    prompts = write_rows(tmp_path / "prompts.jsonl", [long_prompt, {"prompt": "a dog"}, long_prompt])
    result = run_generation(parse_generate_config(**values(teacher, tmp_path, prompts, generate_length=4)))
    assert (result["too_long_dropped"], result["conversations"] + result["empty_dropped"]) == (2, 1)
    only_long = write_rows(tmp_path / "long.jsonl", [long_prompt])
    keys = values(teacher, tmp_path, only_long, generate_output=str(tmp_path / "none.jsonl"),
                  generate_num_return_sequences=2)
    with pytest.raises(DistilyConfigError) as error:
        run_generation(parse_generate_config(**keys))
    assert str(error.value) == ("every response was dropped (2 to prompts that fill the teacher's 24 positions, 0 "
                                "empty, 0 without a stop token within generate_length=12); expected shorter prompts, "
                                "or a teacher with more positions")
    assert not (tmp_path / "none.jsonl").exists()


def test_a_missing_prompt_file_is_refused_as_the_config_is_read(teacher_dirs, tmp_path, capsys):
    """It was reported only once the teacher had loaded."""
    with pytest.raises(DistilyConfigError, match=r"^generate_prompts='./nowhere.jsonl' does not exist; expected an "
                                                 r"existing local path or a Hub id$"):
        parse_generate_config(**values(teacher_dirs, tmp_path, "./nowhere.jsonl"))
    keys = values(teacher_dirs, tmp_path, "./nowhere.jsonl")
    assert main(["generate", *sum(([f"--{key}", str(value)] for key, value in keys.items()), [])]) == 2
    assert "generate_prompts='./nowhere.jsonl' does not exist" in capsys.readouterr().err


def test_responses_cut_at_the_teachers_last_position_name_that_limit_not_generate_length(tokenizer, tmp_path, caplog,
                                                                                          monkeypatch):
    """generate_length 40 on a teacher of 24 positions: the responses stop at its last position, and the error said
    they reached generate_length=40, advising a longer one; so did the warning when some response was kept."""
    teacher = {"llama": save_tiny_model(tmp_path / "teacher", "gpt2", tokenizer, n_positions=24)}
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "a dog"}, {"prompt": "the cat"}])
    keys = values(teacher, tmp_path, prompts, generate_length=40, generate_temperature=0,
                  generate_keep_unfinished=False)
    with pytest.raises(DistilyConfigError) as error:
        run_generation(parse_generate_config(**keys))
    assert str(error.value) == ("every response was dropped (0 empty, 2 without a stop token within the teacher's 24 "
                                "positions); expected shorter prompts, or a teacher with more positions; or "
                                "generate_keep_unfinished=true")
    assert not (tmp_path / "responses.jsonl").exists()
    open_hf = responses.open_generator

    def open_generator(*args, **kwargs):  # the first answer stops, the second runs to the last position
        generator = open_hf(*args, **kwargs)
        generate = generator.generate
        generator.generate = lambda prompts: [[7, generator.stop_ids[0]], generate(prompts[1:])[0]]
        return generator

    monkeypatch.setattr(responses, "open_generator", open_generator)
    result = run_generation(parse_generate_config(**keys))
    assert (result["conversations"], result["unfinished_dropped"]) == (1, 1)
    assert "responses were dropped: 1 without a stop token within the teacher's 24 positions" in caplog.text
