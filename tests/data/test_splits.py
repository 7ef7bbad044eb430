"""The held-out split: conversations that answer one prompt stay on one side."""

import json

import datasets

from distily.data.splits import split_documents


def _conversations(prompts: int, answers: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"messages": [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {p}"},
         {"role": "assistant", "content": f"answer {a} to {p}"}]
        for p in range(prompts) for a in range(answers)]})


def _prompts(rows: datasets.Dataset) -> set[str]:
    return {json.dumps(turns[:-1]) for turns in rows["messages"]}


def test_the_answers_to_one_prompt_stay_on_one_side():
    """Three answers per prompt (as generate_num_return_sequences 3 writes): no held-out prompt is trained on, and
    the held-out share is eval_fraction of the prompts, with all their answers."""
    split = split_documents(_conversations(40, 3), 0.25, seed=7)
    assert not _prompts(split["train"]) & _prompts(split["test"])
    assert (len(_prompts(split["test"])), len(split["test"]), len(split["train"])) == (10, 30, 90)
    again = split_documents(_conversations(40, 3), 0.25, seed=7)
    assert again["test"]["messages"] == split["test"]["messages"]  # seeded
    other = split_documents(_conversations(40, 3), 0.25, seed=8)
    assert _prompts(other["test"]) != _prompts(split["test"])


def test_distinct_prompts_and_text_split_row_by_row_as_before():
    for documents in (_conversations(40, 1), datasets.Dataset.from_dict({"text": [f"doc {n}" for n in range(40)]})):
        split = split_documents(documents, 0.25, seed=7)
        expected = documents.train_test_split(test_size=0.25, seed=7)
        assert split["test"].to_dict() == expected["test"].to_dict()
        assert split["train"].to_dict() == expected["train"].to_dict()


def test_chat_data_split_by_conversation_splits_row_by_row():
    """eval_split_by: conversation, for many answers per prompt drawn alike: held-out answers to trained prompts."""
    documents = _conversations(40, 3)
    split = split_documents(documents, 0.25, seed=7, by="conversation")
    expected = documents.train_test_split(test_size=0.25, seed=7)
    assert split["test"]["messages"] == expected["test"]["messages"]
    assert _prompts(split["train"]) & _prompts(split["test"])
