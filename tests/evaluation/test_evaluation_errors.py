"""Each mistake in the evaluation settings: one line naming the bad value and what was expected."""

import json

import pytest

from distily.cli import main
from distily.config import parse_config, parse_eval_config
from distily.errors import DistilyConfigError
from distily.evaluation.perplexity import load_eval_set
from tiny import (
    make_conversations, make_documents, make_sentencepiece_tokenizer, make_tokenizer, save_tiny_model, write_chat_jsonl,
    write_jsonl,
)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"eval_datasets": "[1, 2]"}, "eval_datasets='[1, 2]' is a JSON list; expected a JSON object"),
        ({"eval_datasets": {"heldout": "x.jsonl"}}, "eval_datasets['heldout']: the name is not usable"),
        ({"eval_datasets": {"a b": "x.jsonl"}}, "eval_datasets['a b']: the name is not usable"),
        ({"eval_datasets": {"a": {"split": "test"}}}, "expected a path or Hub id, or an object with a 'path'"),
        ({"eval_datasets": {"a": {"path": "x", "splt": "test"}}}, "eval_datasets['a'] has unknown key 'splt'"),
        ({"eval_datasets": {"a": {"path": "x", "max_samples": 0}}}, "max_samples=0 must be a positive integer"),
        ({"eval_datasets": {"recent": "data/wiki_2025.jsonl"}}, "eval_datasets['recent'] path='data/wiki_2025.jsonl' "
         "does not exist; expected an existing local path or a Hub id"),
        ({"generation_eval_dataset": "data/prompts.jsonl"}, "generation_eval_dataset='data/prompts.jsonl' does not "
         "exist; expected an existing local path or a Hub id"),
        ({"eval_overlap_ngram": -1}, "eval_overlap_ngram=-1 must be >= 0"),
        ({"lm_eval_bootstrap_iters": -5}, "lm_eval_bootstrap_iters=-5 must be >= 0"),
        ({"lm_eval_limit": 2.5}, "lm_eval_limit=2.5 is not usable; expected a count, or a fraction 0 < x < 1"),
        ({"lm_eval_limit": -3}, "lm_eval_limit=-3.0 is not usable"),
        ({"lm_eval_include_path": "/no/such/tasks", "lm_eval_tasks": ["t"]}, "is not a directory"),
        ({"lm_eval_include_path": "."}, "lm_eval_include_path='.' is set without lm_eval_tasks"),
    ],
)
def test_bad_evaluation_settings(values, message, tmp_path):
    with pytest.raises(DistilyConfigError) as error:
        parse_config(output_dir=str(tmp_path), **values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_eval_set_that_cannot_be_read_is_named(tokenizer, tmp_path):
    spec = {"path": str(tmp_path / "missing.jsonl"), "config": None, "split": "train", "text_column": "text",
            "max_samples": None}
    with pytest.raises(DistilyConfigError, match=r"^eval_datasets\['recent'\]: dataset_name=.* does not exist"):
        load_eval_set("recent", spec, tokenizer, 32, str(tmp_path))
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "Too short."}) + "\n")
    with pytest.raises(DistilyConfigError, match=r"gives no sequence of 32 tokens; expected more text"):
        load_eval_set("short", {**spec, "path": str(short)}, tokenizer, 32, str(tmp_path))
    chat = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(4))
    with pytest.raises(DistilyConfigError, match=r"^eval_datasets\['chat'\]: chat data \(a messages column\)"):
        load_eval_set("chat", {**spec, "path": chat}, tokenizer, 32, str(tmp_path))


def test_eval_command_errors(capsys):
    assert main(["eval"]) == 2
    assert "no model to evaluate; expected `distily eval MODEL`" in capsys.readouterr().err
    assert main(["eval", "some/model", "--lm_eval_limt", "3"]) == 2
    assert capsys.readouterr().err == ("distily eval: error: unknown config key 'lm_eval_limt' (did you mean "
                                       "'lm_eval_limit'?); see `distily eval --help` for the keys\n")
    assert main(["eval", "some/model", "--eval_datasets", "wikitext", "--max_steps", "3"]) == 2
    assert capsys.readouterr().err == ("distily eval: error: max_steps is not used by `distily eval`; expected a key "
                                       "of `distily eval --help`\n")
    assert main(["eval", "some/model", "--teacher_model_name_or_pat", "t"]) == 2
    assert "(did you mean 'teacher_model_name_or_path'?)" in capsys.readouterr().err
    assert main(["eval", "some/model", "other/model"]) == 2
    assert capsys.readouterr().err == ("distily eval: error: unexpected argument 'other/model'; expected a key of "
                                       "`distily eval --help`\n")
    with pytest.raises(DistilyConfigError, match="nothing to evaluate; expected --eval_datasets"):
        parse_eval_config(["--model_name_or_path", "some/model"])


@pytest.mark.parametrize("recording", [False, True])
@pytest.mark.parametrize("key", ["model_name_or_path", "teacher_model_name_or_path"])
def test_eval_refuses_a_teacher_store_where_a_model_is_expected(key, recording, tmp_path, capsys):
    """A teacher store (finished: manifest.json; or still recording: progress.json) holds a config in teacher/, not at
    its top: it used to be refused with transformers' "Unrecognized model ... model_type key" line."""
    store = tmp_path / "store"
    (store / "teacher").mkdir(parents=True)
    (store / "teacher" / "config.json").write_text("{}")
    (store / ("progress.json" if recording else "manifest.json")).write_text("{}")
    paths = {"model_name_or_path": str(tmp_path / "model"), "teacher_model_name_or_path": str(tmp_path / "teacher"),
             key: str(store)}
    assert main(["eval", paths["model_name_or_path"], "--teacher_model_name_or_path",
                 paths["teacher_model_name_or_path"], "--eval_datasets", '{"s": "org/s"}']) == 2
    assert capsys.readouterr().err == (
        f"distily eval: error: {key}='{store}' is a teacher store (distily record's outputs of a teacher), not a "
        "model; expected a model's directory or Hub id, such as the teacher the store recorded\n"
    )


def test_eval_names_the_model_it_was_given_not_a_student(tmp_path, capsys):
    """distily eval evaluates any model, but its tokenizer and logit-width errors said 'the student's tokenizer' and
    'student logits'."""
    teacher = save_tiny_model(tmp_path / "teacher", "llama", make_tokenizer())
    other = save_tiny_model(tmp_path / "other", "llama", make_sentencepiece_tokenizer())
    narrow = save_tiny_model(tmp_path / "narrow", "llama", make_tokenizer(), vocab_size=100)
    sets = json.dumps({"s": write_jsonl(tmp_path / "s.jsonl", make_documents(4))})
    capsys.readouterr()
    assert main(["eval", other, "--teacher_model_name_or_path", teacher, "--eval_datasets", sets]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"distily eval: error: the tokenizer of {other!r} (400 tokens) differs from the teacher's (320 tokens): "
        "'<eos>' is id none in it, 0 in the teacher's; expected the same tokenizer (the agreement metrics compare the two "
        "models token by token)")
    assert main(["eval", narrow, "--teacher_model_name_or_path", teacher, "--eval_datasets", sets]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"distily eval: error: the teacher's logits have 320 columns and those of {narrow!r} 100, but the tokenizer "
        "has 320 tokens; expected both to cover the tokenizer (differing only by padding rows)")
