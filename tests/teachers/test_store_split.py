"""How a run from a store of chat data holds out its conversations: as the store did (``eval_split_by``)."""

import pytest
from transformers import AutoModelForCausalLM

from distily.config import parse_config, parse_record_config
from distily.data.framing import INPUT_IDS
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.models.teacher import load_tokenizer
from distily.recording.run import run_recording
from distily.teachers.recorded import RecordedTeacher
from store_values import store_values
from tiny import make_chat_tokenizer, make_conversations, save_tiny_model, tiny_config, write_chat_jsonl


@pytest.fixture(scope="module")
def repeated_prompts(tmp_path_factory):
    """A tiny chat teacher and 40 prompts answered three times each (the prompt split keeps each prompt's answers on
    one side; the conversation split does not)."""
    root = tmp_path_factory.mktemp("repeated_prompts")
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(root / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    conversations = [turns for turns in make_conversations(40) for _ in range(3)]
    return teacher, write_chat_jsonl(root / "chat.jsonl", conversations), len(tokenizer)


def _record(repeated_prompts, root, **overrides) -> dict:
    teacher, data, _ = repeated_prompts
    values = store_values(teacher, data, root, max_seq_length=128, max_samples=None, max_eval_samples=None,
                          eval_fraction=0.2, record_top_k=8, **overrides)
    run_recording(parse_record_config(**values))
    return values


def test_a_store_split_by_conversation_is_held_out_so_by_its_runs(repeated_prompts, tmp_path, caplog):
    """eval_split_by was not in a store's settings: a run from a store split by conversation held out the store's rows
    but said eval_split_by prompt (run_settings.json, the card), and a live run with its settings held out others."""
    values = _record(repeated_prompts, tmp_path, eval_split_by="conversation")
    run = {key: value for key, value in values.items() if key != "eval_split_by"}
    with caplog.at_level("INFO", logger="distily.teachers.store_split"):
        config = RecordedTeacher.settled_config(parse_config(**run, teacher_source="recorded"))
    assert config.data.eval_split_by == "conversation"
    assert "eval_split_by: the store's 'conversation' applies (its rows were drawn with it)" in caplog.text
    student = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=repeated_prompts[2]))
    stored = RecordedTeacher(config).datasets(student).eval
    live = build_datasets(config.data, load_tokenizer(values["teacher_model_name_or_path"], "teacher"), 128,
                          config.training.split_seed).eval
    assert [stored[i][INPUT_IDS].tolist() for i in range(len(stored))] == [row.tolist() for row in live[INPUT_IDS]]
    with pytest.raises(DistilyConfigError, match=r"holds a recording with eval_split_by='conversation'"):
        run_recording(parse_record_config(**run))  # recording into it again by prompt


def test_a_run_splitting_otherwise_than_its_store_is_refused(repeated_prompts, tmp_path):
    """A store split by prompt (the default) trained from with eval_split_by conversation: the run took the store's
    rows and recorded conversation, with which a live run holds out other conversations."""
    values = _record(repeated_prompts, tmp_path)
    config = parse_config(**values, teacher_source="recorded", eval_split_by="conversation")
    with pytest.raises(DistilyConfigError, match=r"^eval_split_by='conversation' would draw other rows than the "
                                                 r"'prompt' teacher_store=.* was recorded with; expected no "
                                                 r"eval_split_by \(the store's then\), or a store recorded with"):
        RecordedTeacher.settled_config(config)
