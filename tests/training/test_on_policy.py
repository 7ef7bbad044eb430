"""On-policy distillation (GKD): the batches built from the student's completions, the seeded choice of batches,
the refusals, and a short on-policy training run."""

import math
import os
import sys
from types import SimpleNamespace

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.config import parse_config
from distily.data.batches import collate
from distily.data.chat import ChatTemplate, assistant_token_mask
from distily.data.framing import model_inputs
from distily.errors import DistilyConfigError
from distily.generation.arguments import SamplingSettings
from distily.generation.backends import open_generator
from distily.generation.engine import CompletionGenerator
from distily.models.teacher import load_tokenizer
from distily.objectives.arguments import ObjectiveArguments
from distily.objectives.objective import build_objective
from distily.teachers.live import LiveTeacher
from distily.training.distill import run_distillation
from distily.training.on_policy import LOSS_MASK, OnPolicyBatches, batch_prompts, on_policy_batches
from distily.training.trainer import DistillationTrainer
from store_values import store_values
from tiny import (
    CHAT_STYLES, CHATML_TEMPLATE, VOCAB, make_chat_tokenizer, make_conversations, make_documents, save_tiny_model,
    tiny_config, write_chat_jsonl,
)

PAD = 0


class FixedCompletions(CompletionGenerator):
    """A stand-in generator: the same completions every time; records what it was asked."""

    settings = SamplingSettings(max_new_tokens=4)

    def __init__(self, completions: list[list[int]]):
        self.completions, self.prompts, self.loaded = completions, [], []

    def load_weights(self, model, sharded=False) -> None:
        self.loaded.append(model)

    def generate(self, prompts):
        self.prompts.append(prompts)
        return [list(completion) for completion in self.completions[: len(prompts)]]


def chat_batch() -> dict:
    """Two right-padded rows: prompt [10, 11, 12] then targets 13, 14; prompt [20, 21] then target 22."""
    return {
        "input_ids": torch.tensor([[10, 11, 12, 13, 14, PAD], [20, 21, 22, PAD, PAD, PAD]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]),
        LOSS_MASK: torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]),
    }


def test_the_prompt_is_each_rows_tokens_up_to_the_one_that_predicts_the_first_target():
    assert batch_prompts(chat_batch()) == [[10, 11, 12], [20, 21]]
    no_target = {**chat_batch(), LOSS_MASK: torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])}
    assert batch_prompts(no_target)[1] == [20, 21, 22]  # no target: the whole row is the prompt


def test_a_multi_turn_conversation_is_prompted_with_its_earlier_turns_and_answers_the_last():
    # user 10 11, assistant 12 13, user 14 15, assistant 16 17: targets 12, 13 and 16, 17
    batch = {"input_ids": torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]]),
             "attention_mask": torch.ones(1, 8, dtype=torch.long),
             LOSS_MASK: torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0]])}  # fmt: skip
    assert batch_prompts(batch) == [[10, 11, 12, 13, 14, 15]]


@pytest.mark.parametrize("style", CHAT_STYLES)
def test_a_conversations_prompt_is_its_templates_rendering_up_to_the_generation_prompt(style):
    """The chat data's masks give the prompt the template itself gives for generation: with Qwen3's, the model
    writes the empty reasoning block that opens its last answer, so it is not in the prompt."""
    tokenizer = make_chat_tokenizer(style)
    for messages in make_conversations(6, seed=4):
        ids, mask = assistant_token_mask(messages, tokenizer, ChatTemplate(tokenizer.chat_template), 0)
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                 LOSS_MASK: torch.tensor([mask[1:] + [0]])}
        expected = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)
        assert batch_prompts(batch) == [expected["input_ids"]]


def test_each_conversation_of_a_block_under_document_masks_gives_a_prompt():
    """Two conversations packed in one row (position_ids restart at the second), a padded second row."""
    features = [{"input_ids": [10, 11, 12, 13, 20, 21, 22], "position_ids": [0, 1, 2, 3, 0, 1, 2],
                 LOSS_MASK: [0, 1, 1, 0, 0, 1, 0]},
                {"input_ids": [30, 31, 32], "position_ids": [0, 1, 2], LOSS_MASK: [0, 1, 0]}]  # fmt: skip
    batch = collate(features, PAD)
    assert batch_prompts(batch) == [[10, 11], [20, 21], [30, 31]]
    generator = FixedCompletions([[40], [41, 0], [42]])
    on_policy = OnPolicyBatches(generator, lmbda=1.0, seed=0, pad_token_id=PAD, max_seq_length=32)
    (replaced,) = on_policy.replace([batch], step=0, student=torch.nn.Linear(1, 1))
    assert replaced["input_ids"].tolist() == [[10, 11, 40, PAD], [20, 21, 41, 0], [30, 31, 42, PAD]]
    assert replaced[LOSS_MASK].tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]]


def test_an_on_policy_step_builds_prompt_plus_completion_with_the_mask_on_completion_positions():
    generator = FixedCompletions([[30, 31, 0], [40]])
    student = torch.nn.Linear(1, 1)
    on_policy = OnPolicyBatches(generator, lmbda=1.0, seed=0, pad_token_id=PAD, max_seq_length=32)
    (batch,) = on_policy.replace([chat_batch()], step=0, student=student)
    assert generator.prompts == [[[10, 11, 12], [20, 21]]] and generator.loaded == [student]
    assert batch["input_ids"].tolist() == [[10, 11, 12, 30, 31, 0], [20, 21, 40, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    # position t predicts token t + 1: row 0 predicts 30, 31, 0 from positions 2..4; row 1 predicts 40 from 1
    assert batch[LOSS_MASK].tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[10, 11, 12, 30, 31, 0], [20, 21, 40, -100, -100, -100]]
    on_policy.replace([chat_batch()], step=0, student=student)
    assert len(generator.loaded) == 1  # the weights are loaded again only after an optimizer step
    on_policy.replace([chat_batch()], step=1, student=student)
    assert len(generator.loaded) == 2
    logs = on_policy.logs()
    assert logs["on_policy/fraction"] == 1.0 and logs["on_policy/mean_completion_length"] == 2.0
    assert logs["on_policy/generated_tokens_per_second"] > 0
    assert on_policy.logs() == {"on_policy/fraction": 0.0}  # reset at each log


def test_completions_are_cut_to_the_runs_sequence_length():
    on_policy = OnPolicyBatches(FixedCompletions([[30, 31, 32, 33], [40]]), 1.0, 0, PAD, max_seq_length=5)
    (batch,) = on_policy.replace([chat_batch()], 0, None)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 30, 31], [20, 21, 40, PAD, PAD]]
    assert batch[LOSS_MASK].tolist() == [[0, 0, 1, 1, 0], [0, 1, 0, 0, 0]]


def test_the_batches_that_go_on_policy_are_drawn_from_the_seed():
    def draws(seed: int, lmbda: float = 0.5) -> list[bool]:
        on_policy = OnPolicyBatches(FixedCompletions([]), lmbda, seed, PAD, 32)
        return [on_policy.is_on_policy(step, index) for step in range(250) for index in range(4)]

    assert draws(seed=1) == draws(seed=1)
    assert draws(seed=1) != draws(seed=2)
    assert abs(sum(draws(seed=1)) / 1000 - 0.5) < 0.05
    assert not any(draws(seed=1, lmbda=0.0)) and all(draws(seed=1, lmbda=1.0))


def test_batches_without_prompts_are_refused_at_the_first_batch():
    on_policy = OnPolicyBatches(FixedCompletions([]), 0.5, 0, PAD, 32)
    plain = {key: value for key, value in chat_batch().items() if key != LOSS_MASK}
    with pytest.raises(DistilyConfigError, match=r"^lmbda=0.5 needs prompts, .* no loss_mask \(plain text\); expected"):
        on_policy.replace([plain], 0, None)


def test_the_loss_gradient_flows_only_from_completion_positions():
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2)).eval()
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=1)).eval()
    on_policy = OnPolicyBatches(FixedCompletions([[30, 31, 0], [40]]), 1.0, 0, PAD, 32)
    (batch,) = on_policy.replace([chat_batch()], 0, student)
    for loss in ("reverse_kl", "jsd"):
        objective = build_objective(ObjectiveArguments(logits_loss=loss), vocab_size=VOCAB)
        objective.attach(student, teacher)
        outputs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        outputs.logits.retain_grad()
        with torch.no_grad():
            teacher_outputs = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        objective(outputs, teacher_outputs, batch).loss.backward()
        reached = outputs.logits.grad.abs().sum(-1) > 0  # [batch, seq]
        assert reached.tolist() == batch[LOSS_MASK].bool().tolist()


def test_an_on_policy_batchs_loss_is_gkds_jsd_on_each_rows_completion_run_alone():
    """The student's own sampled completions (its stop token first, later, or none before max_new_tokens): each row's
    loss positions are exactly those predicting its completion's tokens, and the objective on the padded batch
    equals GKD's generalized JSD in float64 over those positions, teacher and student run on each unpadded
    prompt + completion alone."""
    tokenizer, beta, max_new_tokens = make_chat_tokenizer("chatml"), 0.3, 8
    torch.manual_seed(0)
    student, teacher = (AutoModelForCausalLM.from_config(tiny_config("llama", layers=layers,
                                                                     vocab_size=len(tokenizer))).eval()
                        for layers in (2, 3))
    template = ChatTemplate(tokenizer.chat_template)
    rows = [assistant_token_mask(messages, tokenizer, template, 0) for messages in make_conversations(12, seed=4)]
    batch = collate([{"input_ids": ids, LOSS_MASK: mask[1:] + [0]} for ids, mask in rows], PAD)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    student.generation_config.eos_token_id = end
    with torch.no_grad():  # the end of turn as likely as the first prompt's favourite next token: some stop at once
        head = student.get_output_embeddings().weight
        head[end] = 4 * head[student(torch.tensor([batch_prompts(batch)[0]])).logits[0, -1].argmax()]
    generator = open_generator("hf", student, tokenizer, SamplingSettings(max_new_tokens, 1.0, 0.9), 256)
    (new,) = OnPolicyBatches(generator, 1.0, 0, PAD, 256).replace([batch], step=0, student=student)
    prompts, kinds = batch_prompts(batch), set()
    for row, prompt in enumerate(prompts):
        length = int(new["attention_mask"][row].sum())
        completion = new["input_ids"][row, len(prompt):length].tolist()
        assert new["input_ids"][row, :len(prompt)].tolist() == prompt and end not in completion[:-1]
        assert completion[-1] == end or len(completion) == max_new_tokens
        kinds.add("stop first" if completion == [end] else "stopped" if completion[-1] == end else "cut")
        assert new[LOSS_MASK][row].nonzero().flatten().tolist() == list(range(len(prompt) - 1, length - 1))
    assert kinds == {"stop first", "stopped", "cut"}
    objective = build_objective(ObjectiveArguments(logits_loss="jsd", logits_loss_kwargs={"beta": beta}))
    objective.attach(student, teacher)
    with torch.no_grad():
        loss = objective(student(**model_inputs(new)), teacher(**model_inputs(new)), new).loss.item()
        expected = []
        for row in range(len(prompts)):
            ids = new["input_ids"][row : row + 1, : int(new["attention_mask"][row].sum())]
            student_logprobs, teacher_logprobs = (model(input_ids=ids).logits[0].double().log_softmax(-1)
                                                  for model in (student, teacher))
            mixture = torch.logaddexp(teacher_logprobs + math.log(beta), student_logprobs + math.log(1 - beta))
            divergence = (beta * (teacher_logprobs.exp() * (teacher_logprobs - mixture)).sum(-1)
                          + (1 - beta) * (student_logprobs.exp() * (student_logprobs - mixture)).sum(-1))
            expected.append(divergence[new[LOSS_MASK][row, : ids.shape[1]].bool()])
    assert loss == pytest.approx(torch.cat(expected).mean().item(), rel=1e-5)


@pytest.mark.parametrize("values, message", [
    ({"lmbda": 1.5}, r"lmbda=1.5 is out of range; expected 0 <= x <= 1"),
    ({"on_policy_temperature": -1.0}, r"on_policy_temperature=-1.0 must be >= 0"),
    ({"on_policy_top_p": 0.0}, r"on_policy_top_p=0.0 is out of range"),
    ({"on_policy_max_new_tokens": 0}, r"on_policy_max_new_tokens=0 must be a positive integer"),
    ({"on_policy_backend": "sglang"}, r"on_policy_backend='sglang' is not supported; expected one of hf, vllm"),
    ({"lmbda": 0.5, "teacher_source": "recorded", "teacher_store": "store"},
     r"lmbda=0.5 needs a live teacher: a recorded store cannot score the student's new completions; expected"),
    ({"lmbda": 0.5, "loss_on": "all"},
     r"^lmbda=0.5 with loss_on='all': on-policy batches find each conversation's prompt by its assistant mask, "
     r"which loss_on='all' does not build; expected loss_on=assistant or lmbda=0$"),
])
def test_bad_on_policy_settings_are_one_line_errors(values, message, teacher_dirs, run_values):
    with pytest.raises(DistilyConfigError, match=message):
        parse_config(**run_values(teacher_dirs["llama"], **values))


def test_plain_text_with_lmbda_is_refused_before_the_models_load(teacher_dirs, run_values, monkeypatch):
    """Refused at the first batch, it came after the models loaded, the data were tokenized, the student evaluated
    and output_dir written: the documents say it as they load."""
    import distily.teachers.live as live

    monkeypatch.setattr(live, "load_teacher", lambda *args: pytest.fail("the teacher was loaded"))
    values = run_values(teacher_dirs["llama"], lmbda=0.5, max_steps=1)
    with pytest.raises(DistilyConfigError, match=r"^lmbda=0.5: on-policy distillation completes the prompts of chat "
                                                 r"data, and '.*docs.jsonl' holds none; expected messages"):
        run_distillation(parse_config(**values))
    assert not os.path.exists(values["output_dir"])


@pytest.mark.slow
def test_lmbda_zero_is_todays_supervised_distillation(teacher_dirs, run_values, tmp_path):
    results = []
    for index, extra in enumerate([{}, {"lmbda": 0.0, "on_policy_backend": "vllm"}]):  # the back end is never opened
        metrics = run_distillation(parse_config(**run_values(
            teacher_dirs["llama"], output_dir=str(tmp_path / f"run{index}"), max_steps=3,
            student_config_overrides={"num_hidden_layers": 2}, **extra,
        )))
        student = metrics["student"]
        results.append((metrics["train"]["train_loss"], student["after_loss"], student["after_kl_to_teacher"]))
    assert results[0] == results[1] and results[0][0] > 0


def prompt_completion_rows(tokenizer, count: int) -> datasets.Dataset:
    """Rows of a prompt (a document's first 8 tokens) and its completion (the next 6), with the loss mask."""
    rows = {"input_ids": [], LOSS_MASK: []}
    for document in make_documents(count, seed=3):
        ids = tokenizer(document)["input_ids"][:14]
        rows["input_ids"].append(ids)
        rows[LOSS_MASK].append([0] * 7 + [1] * (len(ids) - 8) + [0])
    return datasets.Dataset.from_dict(rows)


def collate_with_loss_mask(features: list[dict]) -> dict:
    batch = collate(features, PAD)
    loss_mask = torch.zeros_like(batch["input_ids"])
    for row, feature in enumerate(features):
        loss_mask[row, : len(feature[LOSS_MASK])] = torch.as_tensor(feature[LOSS_MASK])
    return {**batch, LOSS_MASK: loss_mask}


@pytest.mark.slow
def test_an_on_policy_run_trains_on_the_students_completions(teacher_dirs, run_values):
    values = run_values(
        teacher_dirs["llama"], lmbda=1.0, on_policy_max_new_tokens=6, on_policy_temperature=1.0, max_steps=3,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, activation_checkpointing=True, logging_steps=1,
        logits_loss="jsd", logits_loss_kwargs={"beta": 0.5},
    )
    config = parse_config(**values)
    # the teacher opened on the run's text, off-policy (an on-policy run on text is refused as it loads); the trainer
    # below trains on its own prompt + completion rows, on-policy
    teacher = LiveTeacher(parse_config(**{**values, "lmbda": 0.0}))
    tokenizer = load_tokenizer(teacher_dirs["llama"], "teacher")
    torch.manual_seed(1)
    student = AutoModelForCausalLM.from_config(tiny_config("llama", layers=2, vocab_size=len(tokenizer)))
    before = {name: value.clone() for name, value in student.state_dict().items()}
    objective = build_objective(config.objective, teacher.model.config, student.config, len(tokenizer))
    on_policy = on_policy_batches(config.training, student, tokenizer, PAD, max_seq_length=32)
    trainer = DistillationTrainer(
        model=student, teacher=teacher, objective=objective, args=config.training, on_policy=on_policy,
        train_dataset=prompt_completion_rows(tokenizer, 24), data_collator=collate_with_loss_mask,
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        assert entry["on_policy/fraction"] == 1.0 and entry["on_policy/generated_tokens_per_second"] > 0
        assert 1 <= entry["on_policy/mean_completion_length"] <= 6 and math.isfinite(entry["loss"])
    assert student.training  # generation handed the student back in training mode
    assert any(not torch.equal(before[name], value) for name, value in student.state_dict().items())


def test_a_student_whose_head_is_wider_than_the_teachers_distills_on_policy(tmp_path):
    """A student with 64 logit columns past the tokenizer's ids (an embedding padded to a multiple of 64) sampled
    them, and the teacher, which has no such rows, failed at the first on-policy batch (index out of range)."""
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(tmp_path / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(24))
    values = store_values(teacher, data, tmp_path, max_seq_length=128, max_steps=2, lmbda=1.0, student_init="random",
                          on_policy_max_new_tokens=12, logging_steps=2,
                          student_config_overrides={"num_hidden_layers": 1, "vocab_size": len(tokenizer) + 64})
    metrics = run_distillation(parse_config(**values))
    assert math.isfinite(metrics["train"]["train_loss"])


def test_an_on_policy_completion_ends_at_the_chat_templates_end_of_turn(teacher_dirs, run_values, tmp_path):
    """A base student given ChatML stops only at its end of text: its completion ran on past the <|im_end|> it
    wrote, into turns the teacher then scored. With the run's template, it ends there (as generate's responses)."""
    tokenizer = make_chat_tokenizer("chatml")
    path = save_tiny_model(tmp_path / "student", "llama", tokenizer, vocab_size=len(tokenizer),
                           tie_word_embeddings=False)
    student = AutoModelForCausalLM.from_pretrained(path).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    template = ChatTemplate(CHATML_TEMPLATE)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "a dog reads"}], chat_template=CHATML_TEMPLATE,
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
    settings = SamplingSettings(12, temperature=0)
    written = open_generator("hf", student, tokenizer, settings, 64).generate([prompt])[0]
    with torch.no_grad():  # the student ends its turn where it wrote its third token, and writes on after it
        student.lm_head.weight[end] = 3 * student.lm_head.weight[written[2]]
    assert student.generation_config.eos_token_id == tokenizer.eos_token_id != end
    config = parse_config(**run_values(teacher_dirs["llama"], lmbda=1.0, on_policy_max_new_tokens=12,
                                       on_policy_temperature=0.0))
    free = on_policy_batches(config.training, student, tokenizer, PAD, 64).generator.generate([prompt])[0]
    assert end in free[:-1]  # without the template: on past the end of turn
    ended = on_policy_batches(config.training, student, tokenizer, PAD, 64, template=template)
    assert ended.generator.generate([prompt])[0] == free[: free.index(end) + 1]


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_the_vllm_engine_loads_the_student_with_the_runs_trust_remote_code(trust_remote_code, tmp_path, monkeypatch):
    """vLLM reads the saved copy's config as transformers does: one naming its checkpoint's code (auto_map) loads
    only with trust_remote_code, which the engine was never given."""
    built = []

    class Built(Exception):
        pass

    def engine(**settings):
        built.append(settings)
        raise Built  # the engine, as the run builds it: enough here

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=engine, SamplingParams=dict))
    tokenizer = make_chat_tokenizer("chatml")
    teacher = save_tiny_model(tmp_path / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(8))
    values = store_values(teacher, data, tmp_path, max_seq_length=64, lmbda=1.0, on_policy_backend="vllm",
                          trust_remote_code=trust_remote_code)
    with pytest.raises(Built):
        run_distillation(parse_config(**values))
    assert [settings["trust_remote_code"] for settings in built] == [trust_remote_code]
