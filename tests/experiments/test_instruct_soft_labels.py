"""experiments/instruct_soft_labels.py: the teacher's distributions at the reference answers' tokens."""

import argparse
import json
import math

import torch
from transformers import AutoModelForCausalLM

import instruct
import instruct_soft_labels as script


def test_soft_labels_read_the_teacher_at_each_answer_token_one_conversation_at_a_time(tmp_path):
    torch.manual_seed(0)
    tokenizer = instruct.chat_tokenizer()
    config = instruct.teacher_config(argparse.Namespace(hidden_size=32, max_letters=12), tokenizer, layers=1)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    answers = {"reverse abc": "cba", "reverse hello": "olleh", "reverse xy": "yx"}  # answers of unequal length
    conversations = [instruct.conversation(prompt, answer) for prompt, answer in answers.items()]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "references.jsonl").write_text("".join(json.dumps({"messages": turns}) + "\n"
                                                                for turns in conversations))
    by_temperature = script.soft_labels(tmp_path, [1.0, 2.0, 4.0])
    assert list(by_temperature) == ["1", "2", "4"]
    for temperature in (1.0, 2.0):
        found = by_temperature[f"{temperature:g}"]
        # the same, one unpadded conversation at a time: the answer's letters, then the end of turn
        probabilities, entropies = [], []
        for turns in conversations:
            prompt = tokenizer.apply_chat_template(turns[:1], add_generation_prompt=True, tokenize=False)
            answer = tokenizer(turns[1]["content"] + instruct.END_OF_TURN, add_special_tokens=False).input_ids
            ids = tokenizer(prompt, add_special_tokens=False).input_ids + answer
            with torch.no_grad():
                logits = teacher(torch.tensor([ids])).logits[0, len(ids) - len(answer) - 1:-1]  # [answer, vocab]
            log_probs = (logits / temperature).log_softmax(-1)
            probabilities += log_probs.exp()[range(len(answer)), answer].tolist()
            entropies += (-(log_probs.exp() * log_probs).sum(-1)).tolist()
        assert found["answer_tokens"] == len(probabilities) == 3 + 5 + 2 + 3 and found["conversations"] == 3
        assert math.isclose(found["mean_reference_probability"], sum(probabilities) / len(probabilities),
                            rel_tol=1e-5)
        assert math.isclose(found["mean_entropy_nats"], sum(entropies) / len(entropies), rel_tol=1e-5)
        assert found["share_above_0.99"] == 0.0  # an untrained teacher: far from a hard label
    assert script.soft_labels(tmp_path, [1.0]) == {"1": by_temperature["1"]}  # one temperature as among several
    colder, hotter = by_temperature["1"], by_temperature["4"]
    assert 0.9 * math.log(len(tokenizer)) < colder["mean_entropy_nats"] < hotter["mean_entropy_nats"]
