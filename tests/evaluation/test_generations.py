"""Greedy answers to held-out prompts: exact match and a user metric against answers computed by a plain
one-prompt-at-a-time greedy loop, the KL on the model's own answers against a direct float64 computation, the
bad inputs, and a chat distillation run whose metrics, table and card carry teacher and student."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from distily.cli import main
from distily.commands.eval import run_evaluation
from distily.config import parse_config, parse_eval_config
from distily.data.arguments import DataArguments
from distily.errors import DistilyConfigError
from distily.evaluation.arguments import EvaluationArguments
from distily.evaluation import generations
from distily.evaluation.generations import (
    GenerationEval,
    exact_match,
    kl_on_answers,
    load_heldout_prompts,
)
from distily.training.distill import run_distillation
from store_values import store_values
from tiny import (
    EMPTY_REASONING, make_chat_tokenizer, make_conversations, make_harmony_tokenizer, save_tiny_model, tiny_config,
    write_chat_jsonl,
)

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generations")
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(root / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    student = save_tiny_model(root / "student", "llama", tokenizer, seed=1, layers=2, vocab_size=len(tokenizer))
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    return tokenizer, load(teacher), load(student), teacher, student


def prompt_tokens(tokenizer, turns: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def plain_greedy(model, tokenizer, turns: list[dict]) -> tuple[list[int], str]:
    """One prompt alone, no cache, no padding: argmax token by token until end of text (ids, decoded answer)."""
    prompt, completion = prompt_tokens(tokenizer, turns), []
    for _ in range(MAX_NEW_TOKENS):
        token = int(model(torch.tensor([prompt + completion])).logits[0, -1].argmax())
        completion.append(token)
        if token == tokenizer.eos_token_id:
            break
    ids = completion[:-1] if completion[-1] == tokenizer.eos_token_id else completion
    return completion, tokenizer.decode(ids, skip_special_tokens=True)


def user_turns(count: int, seed: int) -> list[list[dict]]:
    return [turns[:2] if turns[0]["role"] == "user" else turns[:3] for turns in make_conversations(count, seed)][:count]


def answered_file(path, model, tokenizer, count: int, seed: int, right: set[int]) -> tuple[str, list[str]]:
    """``count`` prompts whose reference is ``model``'s own answer (padded with whitespace) at the rows in ``right``,
    a wrong one elsewhere; the answers' texts."""
    rows, answers = [], []
    for index, turns in enumerate(user_turns(count, seed)):
        prompt = turns[:-1]
        _, answer = plain_greedy(model, tokenizer, prompt)
        assert answer.strip(), "the test needs answers with text"
        reference = f"  {answer}\n" if index in right else "not the answer"
        rows.append(prompt + [{"role": "assistant", "content": reference}])
        answers.append(answer)
    return write_chat_jsonl(path, rows), answers


def test_exact_match_and_a_user_metric_match_a_plain_greedy_loop(chat_models, tmp_path, monkeypatch):
    tokenizer, teacher, student, *_ = chat_models
    path, answers = answered_file(tmp_path / "heldout.jsonl", student, tokenizer, 10, seed=3, right={0, 2, 3, 7})
    (tmp_path / "my_metrics.py").write_text(
        "def first_letter(prediction, reference):\n    return float(prediction.strip()[:1] == reference.strip()[:1])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = EvaluationArguments(generation_eval_dataset=path, generation_eval_max_samples=10,
                               generation_eval_metric="my_metrics:first_letter")
    prompts = load_heldout_prompts(args, DataArguments())
    scores = GenerationEval(prompts, None, MAX_NEW_TOKENS, batch_size=4, metric=args.generation_eval_metric).scores(
        student, tokenizer)

    assert scores["generation/exact_match"] == pytest.approx(40.0)  # 4 of 10, by construction
    first_letters = [a.strip()[:1] == r.strip()[:1] for a, r in zip(answers, prompts.references)]
    assert scores["generation/first_letter"] == pytest.approx(sum(first_letters) / 10)
    assert scores["generation/samples"] == 10 and "generation/kl_to_teacher" not in scores
    assert exact_match([" a ", "b", "c"], ["a", "b ", "x"]) == pytest.approx(200 / 3)


def test_answering_shows_a_progress_bar_over_its_batches(chat_models, capsys):
    """The prompts were answered without a bar: 128 prompts of 128 tokens at every evaluation (and the teacher's once)
    ran for minutes on a large model with nothing on the screen after the held-out evaluation's bar."""
    tokenizer, _, student, *_ = chat_models
    prompts = [prompt_tokens(tokenizer, turns[:-1]) for turns in user_turns(3, seed=3)]
    answers = generations.greedy_answers(student, tokenizer, prompts, [tokenizer.eos_token_id], 2, batch_size=2)
    assert len(answers) == 3 and "Answering the generation prompts:   0%|          | 0/2" in capsys.readouterr().err


def test_an_answer_is_read_after_the_opening_its_template_writes_before_the_content(tmp_path, monkeypatch):
    """Qwen3's template opens the last answer with an empty <think> block: a model that writes it, then the
    reference, answers exactly; so does one that leaves it out; one that reasons first does not."""
    tokenizer = make_chat_tokenizer("qwen3")
    rows = user_turns(5, seed=2)
    references = [turns[-1]["content"] for turns in rows]
    reasoned = f"<think>\nI repeat it.\n</think>\n\n{references[2]}"
    written = [EMPTY_REASONING + references[0], references[1], reasoned, EMPTY_REASONING + "not the answer.",
               f"  {EMPTY_REASONING}{references[4]}  "]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def greedy_answers(model, tokenizer_, prompts, stops, max_new_tokens, batch_size):
        assert len(prompts) == len(written)
        return [tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn] for text in written]

    monkeypatch.setattr(generations, "greedy_answers", greedy_answers)
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=2)
    assert heldout.scores(None, tokenizer)["generation/exact_match"] == pytest.approx(60.0)  # rows 0, 1 and 4


def test_an_answer_is_read_after_the_special_tokens_its_template_writes_before_the_content(tmp_path, monkeypatch):
    """gpt-oss's template: after the generation prompt the model writes <|channel|>final<|message|>, the answer and
    <|return|>, which a completion's text (special tokens skipped) shows as 'final' glued to the answer. A model
    that writes each reference as apply_chat_template frames it answers exactly (none did), also a reference that
    starts like the channel's name; a wrong answer does not."""
    tokenizer = make_harmony_tokenizer()
    rows = user_turns(5, seed=2)
    rows[1][-1]["content"] = "final answer"
    rows[4][-1]["content"] = "the reference"

    def framed(turns: list[dict]) -> str:  # what the template writes after the generation prompt
        prompt = tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
        return tokenizer.apply_chat_template(turns, tokenize=False).removeprefix(prompt)

    written = [framed(turns) for turns in rows[:4]] + [framed(rows[4][:-1] + [{"role": "assistant", "content": "no"}])]

    def greedy_answers(model, tokenizer_, prompts, stops, max_new_tokens, batch_size):
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in written]

    monkeypatch.setattr(generations, "greedy_answers", greedy_answers)
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=2)
    assert written[1] == "<|channel|>final<|message|>final answer<|return|>"
    assert heldout.scores(None, tokenizer)["generation/exact_match"] == pytest.approx(80.0)


def test_answers_stop_at_the_templates_end_of_turn_whatever_the_models_generation_config(tmp_path, monkeypatch):
    """A base model given a chat template lists only its end of text as a stop: its greedy answers ran on into the
    next turn, which exact match then compared with the reference (0 of 20 right against 5 with the stop)."""
    tokenizer = make_chat_tokenizer("llama3")  # ends texts with <eos>, turns with <|eot_id|>
    found = []

    def greedy_answers(model, tokenizer_, prompts, stops, max_new_tokens, batch_size):
        found.append(stops)
        return [[] for _ in prompts]

    monkeypatch.setattr(generations, "greedy_answers", greedy_answers)
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", user_turns(3, 1)))
    GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=2).scores(
        None, tokenizer)
    assert found == [[tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.eos_token_id]]


def test_chat_template_kwargs_render_the_prompts(tmp_path, monkeypatch):
    """Qwen3's enable_thinking=false: the empty reasoning block closes every prompt, the answer is the content."""
    tokenizer = make_chat_tokenizer("qwen3")
    rows = user_turns(3, seed=2)
    asked = []

    def greedy_answers(model, tokenizer_, prompts, stops, max_new_tokens, batch_size):
        asked.extend(prompts)
        return [tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"] for turns in rows]

    monkeypatch.setattr(generations, "greedy_answers", greedy_answers)
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=2,
                             chat_template_kwargs={"enable_thinking": False})
    assert heldout.scores(None, tokenizer)["generation/exact_match"] == pytest.approx(100.0)
    block = tokenizer(EMPTY_REASONING, add_special_tokens=False)["input_ids"]
    assert len(asked) == 3 and all(prompt[-len(block):] == block for prompt in asked)


def test_an_answer_is_read_after_its_reasoning_when_asked(tmp_path, monkeypatch):
    tokenizer = make_chat_tokenizer("qwen3")
    rows = user_turns(4, seed=2)
    references = [turns[-1]["content"] for turns in rows]
    written = [f"<think>\nI repeat it.\n</think>\n\n{references[0]}", references[1],  # no reasoning: read whole
               f"<think>\nit is {references[2]}\n</think>\n\nnot it.", f"<think>\n</think> x </think> {references[3]}"]

    def greedy_answers(model, tokenizer_, prompts, stops, max_new_tokens, batch_size):
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in written]

    monkeypatch.setattr(generations, "greedy_answers", greedy_answers)
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    prompts = load_heldout_prompts(args, DataArguments())
    scores = {after: GenerationEval(prompts, None, MAX_NEW_TOKENS, batch_size=2, answer_after=after).scores(
        None, tokenizer)["generation/exact_match"] for after in (None, "</think>")}
    assert scores == {None: pytest.approx(25.0), "</think>": pytest.approx(75.0)}  # rows 1 / 0, 1 and 3


@pytest.mark.parametrize("values, message", [
    ({"generation_eval_answer_after": "</think>"}, "generation_eval_answer_after='</think>' is set without "
                                                   "generation_eval_dataset"),
    ({"generation_eval_answer_after": " ", "generation_eval_dataset": "org/prompts"}, "marks nothing; expected text"),
])
def test_bad_answer_markers_are_one_line_errors(values, message):
    with pytest.raises(DistilyConfigError, match=re.escape(message)):
        EvaluationArguments(**values)


def test_a_prompt_the_template_refuses_names_the_dataset_and_row(tmp_path):
    rows = user_turns(3, seed=2)
    rows[1] = [rows[1][-2]] + rows[1][-2:]  # two user turns in a row: Gemma's template refuses them
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=2)
    expected = r"^generation_eval_dataset='.*heldout.jsonl': the chat template refuses row 1 \(roles \['user', 'user'"
    with pytest.raises(DistilyConfigError, match=expected):
        heldout.scores(None, make_chat_tokenizer("gemma"))


def test_kl_on_the_models_own_answers_is_the_direct_float64_kl_on_the_answer_positions(chat_models, tmp_path):
    tokenizer, teacher, student, *_ = chat_models
    prompts, completions = [], []
    for turns in user_turns(7, seed=5):
        prompts.append(prompt_tokens(tokenizer, turns[:-1]))
        completions.append(plain_greedy(student, tokenizer, turns[:-1])[0])
    total, tokens = 0.0, 0
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            ids = torch.tensor([prompt + completion])
            positions = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)  # those predicting the answer
            student_logprobs = F.log_softmax(student(ids).logits[0, positions].double(), -1)
            teacher_logprobs = F.log_softmax(teacher(ids).logits[0, positions].double(), -1)
            total += float(F.kl_div(student_logprobs, teacher_logprobs, log_target=True, reduction="sum"))
            tokens += len(completion)
    expected = total / tokens
    assert expected > 0
    measured = kl_on_answers(student, teacher, prompts, completions, tokenizer.pad_token_id or 0, batch_size=3)
    assert measured == pytest.approx(expected, rel=1e-4)

    rows = [turns[:-1] + [{"role": "assistant", "content": "x"}] for turns in user_turns(7, seed=5)]
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=3)
    assert heldout.scores(student, tokenizer, teacher)["generation/kl_to_teacher"] == pytest.approx(expected, rel=1e-4)


def test_a_student_whose_head_has_padding_columns_answers_in_the_tokenizers_ids(chat_models, tmp_path, monkeypatch):
    """A student with 64 logit columns past the tokenizer's ids (an embedding padded to a multiple of 64), the
    likeliest here: its greedy answers were those columns, which the teacher (no such rows) failed to read."""
    tokenizer, teacher, *_ = chat_models
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1, vocab_size=len(tokenizer) + 64)).eval()
    with torch.no_grad():
        student.lm_head.weight[len(tokenizer):] *= 50
    answered = []
    original = generations.greedy_answers
    monkeypatch.setattr(generations, "greedy_answers", lambda *args: answered.extend(original(*args)) or answered)
    rows = [turns[:-1] + [{"role": "assistant", "content": "x"}] for turns in user_turns(5, seed=5)]
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=3)
    scores = heldout.scores(student, tokenizer, teacher, vocab_size=len(tokenizer))
    assert len(answered) == 5 and all(token < len(tokenizer) for answer in answered for token in answer)
    assert 0 < scores["generation/kl_to_teacher"] < float("inf")


def test_kl_on_answers_of_heads_of_one_width_reads_the_tokenizers_ids_only(chat_models, tmp_path, monkeypatch):
    """Teacher and student heads both 64 columns wider than the tokenizer (one width: vocab_size None). The answers
    hold only the tokenizer's ids, and the KL on them is the float64 KL over those columns; it counted the padding
    columns too (2.431 against 2.419 here)."""
    tokenizer = chat_models[0]
    models = []
    for seed, layers in ((0, 2), (1, 1)):
        torch.manual_seed(seed)
        config = tiny_config("llama", layers=layers, vocab_size=len(tokenizer) + 64)
        models.append(AutoModelForCausalLM.from_config(config).eval())
    teacher, student = models
    answered = []
    original = generations.greedy_answers
    monkeypatch.setattr(generations, "greedy_answers", lambda *args: answered.extend(original(*args)) or answered)
    conversations = user_turns(5, seed=5)
    rows = [turns[:-1] + [{"role": "assistant", "content": "x"}] for turns in conversations]
    args = EvaluationArguments(generation_eval_dataset=write_chat_jsonl(tmp_path / "heldout.jsonl", rows))
    heldout = GenerationEval(load_heldout_prompts(args, DataArguments()), None, MAX_NEW_TOKENS, batch_size=3)
    measured = heldout.scores(student, tokenizer, teacher)["generation/kl_to_teacher"]
    total, tokens, columns = 0.0, 0, len(tokenizer)
    with torch.no_grad():
        for turns, completion in zip(conversations, answered):
            prompt = prompt_tokens(tokenizer, turns[:-1])
            ids = torch.tensor([prompt + completion])
            positions = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)  # those predicting the answer
            student_logprobs = F.log_softmax(student(ids).logits[0, positions, :columns].double(), -1)
            teacher_logprobs = F.log_softmax(teacher(ids).logits[0, positions, :columns].double(), -1)
            total += float(F.kl_div(student_logprobs, teacher_logprobs, log_target=True, reduction="sum"))
            tokens += len(completion)
    assert len(answered) == 5 and all(token < columns for answer in answered for token in answer)
    assert measured == pytest.approx(total / tokens, rel=1e-4)


@pytest.mark.parametrize("values, expected", [
    ({"generation_eval_metric": "no_such_module_here:f"}, r"generation_eval_metric='no_such_module_here:f': module "
                                                          r"'no_such_module_here' cannot be imported"),
    ({"generation_eval_metric": "json:no_such_function"}, r"'json' has no function 'no_such_function'"),
    ({"generation_eval_metric": "json.loads"}, r"generation_eval_metric='json.loads' is not usable; expected "
                                               r"module:function"),
    ({"generation_eval_metric": "json:exact_match"}, r"named like a built-in metric"),
    ({"generation_eval_dataset": None, "generation_eval_metric": "json:loads"}, r"set without generation_eval_dataset"),
    ({"generation_eval_max_new_tokens": 0}, r"^generation_eval_max_new_tokens=0 must be a positive integer$"),
    ({"generation_eval_max_samples": -1}, r"^generation_eval_max_samples=-1 must be a positive integer$"),
])  # fmt: skip
def test_bad_generation_settings_are_one_line(values, expected):
    with pytest.raises(DistilyConfigError, match=expected) as error:
        EvaluationArguments(**{"generation_eval_dataset": "org/prompts", **values})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("rows, expected", [
    ([{"text": "no prompts here"}],
     r": it has the columns text; expected prompts with references: a 'messages' column"),
    ([{"prompt": "a prompt without its reference"}], r": it has the columns prompt; expected prompts with references"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "and?"}]}], r"row 0 has the turns \['user', 'assistant', 'user'\]"),
    ([{"messages": [{"role": "system", "content": "be nice"}, {"role": "assistant", "content": "hello"}]}],
     r"row 0 has the turns \['system', 'assistant'\]; expected the user's turn, then the assistant's reference"),
    ([{"prompt": "say hi", "completion": " "}], r"has an empty completion"),
])  # fmt: skip
def test_a_dataset_without_prompts_and_references_is_refused(rows, expected, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DistilyConfigError, match=expected) as error:
        load_heldout_prompts(EvaluationArguments(generation_eval_dataset=str(path)), DataArguments())
    assert str(error.value).startswith(f"generation_eval_dataset={str(path)!r}") and "\n" not in str(error.value)


def test_the_eval_command_refuses_a_bad_metric_in_one_line(capsys):
    assert main(["eval", "some/model", "--generation_eval_dataset", "org/prompts", "--generation_eval_metric",
                 "x"]) == 2
    assert "generation_eval_metric='x' is not usable; expected module:function" in capsys.readouterr().err
    parse_eval_config(["--model_name_or_path", "some/model", "--generation_eval_dataset", "org/prompts"])  # enough


def test_the_eval_command_answers_with_model_and_teacher(chat_models, tmp_path):
    tokenizer, teacher, _, teacher_dir, student_dir = chat_models
    heldout, _ = answered_file(tmp_path / "heldout.jsonl", teacher, tokenizer, 5, seed=4, right={1, 2})
    found = run_evaluation(parse_eval_config([
        "--model_name_or_path", student_dir, "--teacher_model_name_or_path", teacher_dir, "--generation_eval_dataset",
        heldout, "--generation_eval_max_new_tokens", str(MAX_NEW_TOKENS), "--output_dir", str(tmp_path / "eval"),
    ]))
    teacher_column, student_column = found["columns"]["teacher"], found["columns"]["student"]
    assert teacher_column["generation/exact_match"] == pytest.approx(40.0)  # its own answers at 2 of 5 rows
    assert "generation/kl_to_teacher" not in teacher_column and student_column["generation/kl_to_teacher"] > 0
    assert "| held-out prompts: exact match (%) (n=5) | 40.0 |" in found["table"]


def test_chat_distillation_reports_teacher_and_student_answers(chat_models, tmp_path):
    tokenizer, teacher, _, teacher_dir, _ = chat_models
    train = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(120))
    heldout, _ = answered_file(tmp_path / "heldout.jsonl", teacher, tokenizer, 6, seed=9, right=set(range(6)))
    values = store_values(teacher_dir, train, tmp_path, max_seq_length=128, student_config_overrides=None,
                          generation_eval_dataset=heldout, generation_eval_max_new_tokens=MAX_NEW_TOKENS,
                          per_device_eval_batch_size=4)
    metrics = run_distillation(parse_config(**values))

    assert metrics["teacher"]["generation/exact_match"] == 100.0  # the references are its own greedy answers
    assert metrics["teacher"]["generation/samples"] == 6
    student = metrics["student"]
    assert student["before_generation/exact_match"] == 100.0  # the student starts as a copy of the teacher
    assert student["before_generation/kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    # a copy of the teacher sits at the forward KL's minimum, where its gradient, p_s - p_t, is exactly zero
    assert student["after_generation/exact_match"] == 100.0
    assert student["after_generation/kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    results = (tmp_path / "run" / "results.md").read_text()
    assert "| held-out prompts: exact match (%) (n=6) | 100.0 | 100.0 |" in results
    card = (tmp_path / "run" / "README.md").read_text()
    assert "answered greedily (at most 6 new tokens)" in card and "- type: exact_match" in card
