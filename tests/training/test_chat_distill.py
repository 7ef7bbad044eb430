"""Distillation on chat data, end to end: the assistant-only loss improves, the held-out metrics and the logit
loss count the same positions, and a store recorded from chat data keeps its loss masks."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, GenerationConfig

from distily.config import parse_config, parse_record_config
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.data.store import TeacherStore
from distily.errors import DistilyConfigError
from distily.models.teacher import load_teacher
from distily.recording.targets import fidelity_sums
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from distily.training import on_policy
from distily.training.on_policy import OnPolicyBatches, batch_prompts
from store_values import store_values
from tiny import EMPTY_REASONING, make_chat_tokenizer, make_conversations, save_tiny_model, write_chat_jsonl


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(root / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    data = write_chat_jsonl(root / "chat.jsonl", make_conversations(160))
    return teacher, data


def _values(chat_run, tmp_path, **overrides):
    teacher, data = chat_run
    return store_values(teacher, data, tmp_path, max_seq_length=128, **overrides)


@pytest.mark.parametrize("packing", ["padded", "documents"])
def test_assistant_only_distillation_lowers_the_kl_on_assistant_tokens(chat_run, tmp_path, packing):
    values = _values(chat_run, tmp_path, max_steps=30, learning_rate=3e-3, warmup_steps=2, student_init="random",
                     packing=packing)
    metrics = run_distillation(parse_config(**values))
    student = metrics["student"]
    assert student["after_kl_to_teacher"] < 0.8 * student["before_kl_to_teacher"], student
    assert student["after_loss_logits"] == pytest.approx(student["after_kl_to_teacher"], rel=1e-4)


def test_a_store_of_chat_data_keeps_the_loss_masks_and_trains_as_the_live_teacher(chat_run, tmp_path):
    tokenizer_size = len(make_chat_tokenizer("llama3"))
    values = _values(chat_run, tmp_path, record_top_k=tokenizer_size, learning_rate=1e-3)
    run_recording(parse_record_config(**values))
    rows = TeacherStore(values["teacher_store"]).dataset("train")
    assert all(LOSS_MASK in rows[i] for i in range(len(rows)))
    assert 0 < sum(int(rows[i][LOSS_MASK].sum()) for i in range(len(rows))) < sum(len(rows[i][LOSS_MASK])
                                                                                   for i in range(len(rows)))
    live = run_distillation(parse_config(**{**values, "output_dir": str(tmp_path / "live")}))
    stored = run_distillation(parse_config(**{**values, "teacher_source": "recorded"}))
    assert stored["train"]["train_loss"] == pytest.approx(live["train"]["train_loss"], rel=2e-3)
    for key in ("before_loss_logits", "after_kl_to_teacher", "after_lm_loss"):
        assert stored["student"][key] == pytest.approx(live["student"][key], rel=2e-3), key
    assert torch.isfinite(torch.tensor(stored["teacher"]["lm_loss"]))
    with pytest.raises(DistilyConfigError, match="loss_on='all' differs from the 'assistant' teacher_store="):
        run_distillation(parse_config(**{**values, "teacher_source": "recorded", "loss_on": "all",
                                         "output_dir": str(tmp_path / "all")}))


def test_a_chat_stores_fidelity_report_averages_over_the_assistants_positions(chat_run, tmp_path):
    """The report measured every token of the held-out conversations (907 positions here), where the losses read
    the assistant's alone (loss_on: assistant; 251): it now averages over the positions the losses read."""
    values = _values(chat_run, tmp_path, record_top_k=8)
    report = run_recording(parse_record_config(**values))["fidelity"]
    teacher = load_teacher(chat_run[0])
    rows = TeacherStore(values["teacher_store"]).dataset("eval")
    sums, read, every = {}, 0, 0
    for row in (rows[i] for i in range(len(rows))):
        with torch.no_grad():
            logits = teacher(input_ids=row[INPUT_IDS][None]).logits[0]  # [seq, vocab]: one unpacked conversation
        assistant = row[LOSS_MASK].bool()  # [seq]
        read, every = read + int(assistant.sum()), every + len(assistant)
        for k, row_sums in fidelity_sums(logits[assistant], [8, 32], 1.0).items():
            sums[k] = {name: sums.get(k, {}).get(name, 0.0) + value for name, value in row_sums.items()}
    assert report["tokens"] == read < every
    for k, total in sums.items():
        assert report["by_k"][k]["kl"] == pytest.approx(total["kl_sum"] / read, rel=1e-4), k
        assert report["by_k"][k]["tail_mass"] == pytest.approx(total["tail_mass_sum"] / read, rel=1e-4), k


def test_a_store_of_chat_data_keeps_its_template_for_the_student_and_refuses_another(chat_run, tmp_path):
    """Rows recorded with a run's own template: the store's tokenizer carries it, so the student is saved with the
    template its training rows were rendered in; a run naming another template or other arguments is refused."""
    template = make_chat_tokenizer("chatml").chat_template
    values = _values(chat_run, tmp_path, chat_template=template, max_steps=1, student_init="random")
    run_recording(parse_record_config(**values))
    recorded = {key: value for key, value in values.items() if key != "chat_template"}
    run_distillation(parse_config(**{**recorded, "teacher_source": "recorded"}))
    assert AutoTokenizer.from_pretrained(values["output_dir"]).chat_template == template
    other = make_chat_tokenizer("llama3").chat_template
    for change, message in (({"chat_template": other}, "is not the template"),
                            ({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs=")):
        with pytest.raises(DistilyConfigError, match=message):
            run_distillation(parse_config(**{**recorded, **change, "teacher_source": "recorded",
                                             "output_dir": str(tmp_path / "refused")}))


def test_a_student_of_chat_data_stops_generating_at_its_templates_end_of_turn(chat_run, tmp_path):
    """A base teacher's generation config stops at its end of text only: given a chat template, its student's
    completions (on-policy, in the generation eval, the saved student's) ran on into the next turn. The saved
    student's config lists the template's end-of-turn token first."""
    teacher, _ = chat_run
    end_of_turn = make_chat_tokenizer("llama3").convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn not in (GenerationConfig.from_pretrained(teacher).eos_token_id or [])
    values = _values(chat_run, tmp_path, max_steps=1, student_init="random")
    run_distillation(parse_config(**values))
    stops = GenerationConfig.from_pretrained(values["output_dir"]).eos_token_id
    assert isinstance(stops, list) and stops[0] == end_of_turn


def test_on_policy_distillation_on_chat_data_learns_from_the_students_completions(chat_run, tmp_path, monkeypatch):
    generated = []  # (prompt lengths, completion lengths) of each on-policy micro-batch
    original = OnPolicyBatches._generated

    def counting(self, batch, step, index, student, sharded):
        result = original(self, batch, step, index, student, sharded)
        generated.append(int(result[LOSS_MASK].sum()))
        return result

    monkeypatch.setattr(OnPolicyBatches, "_generated", counting)
    values = _values(chat_run, tmp_path, max_steps=30, learning_rate=3e-3, warmup_steps=2, student_init="random",
                     lmbda=0.5, on_policy_max_new_tokens=12, logits_loss="jsd")
    student = run_distillation(parse_config(**values))["student"]
    assert student["after_kl_to_teacher"] < 0.8 * student["before_kl_to_teacher"], student
    assert 5 < len(generated) < 25 and all(count > 0 for count in generated), generated  # about half of 30 steps


def test_an_on_policy_run_resumed_from_a_checkpoint_samples_and_trains_as_the_uninterrupted_one(chat_run, tmp_path):
    """The Trainer restores a checkpoint's random state only after collecting the first resumed step's batches:
    completions sampled from the running state differed there, and the resumed run drifted from step 3 on."""
    values = _values(chat_run, tmp_path, max_steps=4, lmbda=1.0, on_policy_max_new_tokens=6, learning_rate=1e-3,
                     save_strategy="steps", save_steps=1, save_total_limit=0)  # 0: keep every checkpoint
    run_distillation(parse_config(**values))
    resumed = tmp_path / "resumed"
    shutil.copytree(values["output_dir"], resumed)
    for finished in ("metrics.json", "checkpoint-3", "checkpoint-4"):
        path = resumed / finished
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_distillation(parse_config(**{**values, "output_dir": str(resumed), "resume_from_checkpoint": "true"}))
    expected, found = (load_file(Path(run) / "model.safetensors") for run in (values["output_dir"], resumed))
    assert expected.keys() == found.keys() and all(torch.equal(expected[name], found[name]) for name in expected)


def test_a_qwen3_style_teacher_distills_on_policy_in_its_non_thinking_mode(tmp_path, monkeypatch):
    """Qwen3's habits end to end: its template with enable_thinking=false (the empty <think> block closes every
    prompt the student answers on-policy and in the generation eval), <|im_end|> a stop token only in its
    generation config, which the student inherits."""
    tokenizer = make_chat_tokenizer("qwen3")
    teacher = save_tiny_model(tmp_path / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = GenerationConfig.from_pretrained(teacher)
    config.eos_token_id = [end_of_turn, tokenizer.eos_token_id]
    config.save_pretrained(teacher)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(48))
    prompts = []

    def recorded_prompts(batch):
        found = batch_prompts(batch)
        prompts.extend(found)
        return found

    monkeypatch.setattr(on_policy, "batch_prompts", recorded_prompts)
    values = store_values(teacher, data, tmp_path, max_seq_length=256, max_steps=6, lmbda=1.0,  # none cut
                          on_policy_max_new_tokens=8, chat_template_kwargs={"enable_thinking": False},
                          generation_eval_dataset=data, generation_eval_max_samples=4, generation_eval_max_new_tokens=8)
    metrics = run_distillation(parse_config(**values))
    block = tokenizer(EMPTY_REASONING, add_special_tokens=False)["input_ids"]
    assert len(prompts) == 6 * 4 and all(prompt[-len(block):] == block for prompt in prompts)
    assert metrics["student"]["after_generation/samples"] == 4 and "generation/exact_match" in metrics["teacher"]
    saved = GenerationConfig.from_pretrained(values["output_dir"])
    assert saved.eos_token_id == [end_of_turn, tokenizer.eos_token_id]


def test_a_teacher_without_a_chat_template_gives_its_student_the_runs_template(tmp_path):
    """chat_template renders the data, and the student is saved with it: a student of a base teacher is a chat
    model with the template it was distilled on."""
    base = make_chat_tokenizer("chatml", with_template=False)
    teacher = save_tiny_model(tmp_path / "teacher", "llama", base, vocab_size=len(base))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", make_conversations(40))
    template = tmp_path / "chatml.jinja"
    template.write_text(make_chat_tokenizer("chatml").chat_template, encoding="utf-8")
    values = store_values(teacher, data, tmp_path, max_seq_length=128, max_steps=2, chat_template=str(template))
    run_distillation(parse_config(**values))
    saved = AutoTokenizer.from_pretrained(values["output_dir"])
    assert saved.chat_template == template.read_text(encoding="utf-8")
    conversation = make_conversations(1)[0]
    assert saved.apply_chat_template(conversation, tokenize=False) == base.apply_chat_template(
        conversation, chat_template=template.read_text(encoding="utf-8"), tokenize=False)
