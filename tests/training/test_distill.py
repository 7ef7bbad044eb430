"""End to end: ``run_distillation`` on tiny models, for every architecture as teacher and student."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from distily.cli import main
from distily.config import parse_config
from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError
from distily.evaluation.heldout import heldout_metrics
from distily.models.arguments import ModelArguments
from distily.models.student import build_student
from distily.models.teacher import load_teacher
from distily.training.distill import run_distillation
from distily.training.trainer_internals import CHECKPOINT_STAGING_DIR
from tiny import ARCHITECTURES, VOCAB, make_tokenizer, save_tiny_model


@pytest.mark.slow
def test_distillation_halves_heldout_kl_of_a_random_student(teacher_dirs, run_values):
    values = run_values(
        teacher_dirs["llama"],
        student_config_overrides={"num_hidden_layers": 2},
        student_init="random",
        max_steps=80,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        warmup_steps=5,
    )
    metrics = run_distillation(parse_config(**values))
    student = metrics["student"]
    assert student["after_kl_to_teacher"] <= 0.5 * student["before_kl_to_teacher"], student
    assert student["after_loss_logits"] == pytest.approx(student["after_kl_to_teacher"], rel=1e-4)
    assert student["after_top1_agreement"] > student["before_top1_agreement"]


def test_the_evaluations_loss_is_per_token_over_the_set_whatever_its_batches(teacher_dirs, run_values):
    """13 held-out rows in batches of 4: the last batch holds one row. The objective's evaluation loss was the mean
    of the batch means, that row weighed as four; it is per token over the set, as the held-out KL is."""
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, max_steps=1,
                        max_eval_samples=13, per_device_eval_batch_size=4, student_init="random")
    student = run_distillation(parse_config(**values))["student"]
    for key in ("before_loss", "before_loss_logits", "after_loss", "after_loss_logits"):
        when = key.split("_")[0]
        assert student[key] == pytest.approx(student[f"{when}_kl_to_teacher"], rel=1e-5), key


def test_teacher_initialised_student_starts_closer_than_a_random_one(teacher_dirs, tokenizer, text_file, tmp_path):
    teacher = load_teacher(teacher_dirs["llama"])
    data = build_datasets(
        DataArguments(dataset_name=text_file, tokenization_cache_dir=str(tmp_path)), tokenizer, 32, seed=0
    )
    kl = {}
    for init in ("teacher", "random"):
        student = build_student(ModelArguments(student_config_overrides={"num_hidden_layers": 3}, student_init=init),
                                teacher)
        kl[init] = heldout_metrics(student, data.eval, collate, teacher=teacher)["kl_to_teacher"]
    assert kl["teacher"] < kl["random"], kl


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_distills_into_a_smaller_copy_of_itself(arch, teacher_dirs, run_values):
    values = run_values(teacher_dirs[arch], student_config_overrides={"num_hidden_layers": 2}, bf16=True)
    metrics = run_distillation(parse_config(**values))
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]
    assert torch.isfinite(torch.tensor(metrics["student"]["after_loss"]))
    AutoModelForCausalLM.from_pretrained(values["output_dir"])  # the saved student loads again


# Not Qwen2 here: transformers loads our generic test tokenizer as a Qwen2Tokenizer beside a Qwen2 config,
# which adds a token, and the tokenizers then (rightly) differ.
@pytest.mark.parametrize("teacher_arch, student_arch", [("gpt2", "llama"), ("llama", "phi3"), ("phi3", "gpt2")])
def test_student_of_another_architecture_from_a_checkpoint(
    teacher_arch, student_arch, teacher_dirs, tokenizer, run_values, tmp_path
):
    student_dir = save_tiny_model(tmp_path / "student", student_arch, tokenizer, seed=1, layers=2)
    values = run_values(teacher_dirs[teacher_arch], student_model_name_or_path=student_dir)
    metrics = run_distillation(parse_config(**values))
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]


def test_a_finished_run_prints_teacher_against_student_and_where_its_outputs_are(teacher_dirs, run_values, capsys):
    """``distily distill`` used to end on the last progress bar, saying neither how the student did nor where it was
    written."""
    values = run_values(teacher_dirs["gpt2"], student_config_overrides={"n_layer": 1}, max_steps=1)
    flags = [part for key, value in values.items()
             for part in (f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value))]
    assert main(["distill", *flags]) == 0
    printed = capsys.readouterr().out.splitlines()
    results = (Path(values["output_dir"]) / "results.md").read_text()
    table = [line for line in results.splitlines() if line.startswith("|")]
    assert table[0] == "| metric | teacher | student (before) | student (after) |"
    start = printed.index(table[0])
    assert printed[start:start + len(table)] == table
    assert printed[-1].endswith(f"metrics.json are in {values['output_dir']}")


def test_outputs_of_a_run(teacher_dirs, run_values):
    values = run_values(
        teacher_dirs["gpt2"],
        student_config_overrides={"n_layer": 2},
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        report_to="tensorboard",
    )
    run_distillation(parse_config(**values))
    out = Path(values["output_dir"])
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert (out / "tokenizer.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / CHECKPOINT_STAGING_DIR).exists()  # checkpoints were staged there, and nothing is left
    assert list(out.glob("runs/**/events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"teacher", "student", "train"} <= set(metrics)
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert any("loss_logits" in entry for entry in history)
    assert any("eval_loss_logits" in entry for entry in history)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.n_layer == 2
    assert (AutoTokenizer.from_pretrained(out).get_vocab()
            == AutoTokenizer.from_pretrained(teacher_dirs["gpt2"]).get_vocab())


def test_gradient_accumulation_gives_the_same_training_curve(teacher_dirs, run_values, tmp_path):
    losses = {}
    for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
        values = run_values(
            teacher_dirs["llama"],
            student_config_overrides={"num_hidden_layers": 2},
            hard_label_weight=0.5,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            logging_steps=1,
            output_dir=str(tmp_path / f"run{batch}"),
        )
        config = parse_config(**values)
        run_distillation(config)
        state = json.loads((Path(config.training.output_dir) / "metrics.json").read_text())
        losses[(batch, accumulation)] = state["train"]["train_loss"]
    reference = losses[(4, 1)]
    for value in losses.values():
        assert value == pytest.approx(reference, rel=1e-4), losses


def test_a_finished_run_can_be_resumed_for_more_steps(teacher_dirs, run_values):
    values = run_values(
        teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, save_strategy="steps", save_steps=2
    )
    run_distillation(parse_config(**values))
    metrics = run_distillation(parse_config(**{**values, "max_steps": 6, "resume_from_checkpoint": "true"}))
    state = json.loads((Path(values["output_dir"]) / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert metrics["train"]["train_runtime"] > 0


def test_cakld_beta_is_calibrated_from_the_teacher_when_not_given(teacher_dirs, run_values):
    """The calibrated beta trains the student and is reported in the model card; the user's config stays as given."""
    config = parse_config(**run_values(teacher_dirs["llama"], logits_loss="cakld", max_steps=2))
    run_distillation(config)
    assert config.objective.logits_loss_kwargs == {}  # nothing written back
    card = (Path(config.training.output_dir) / "README.md").read_text()
    reported = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])["logits_loss_kwargs"]["beta"]
    teacher = load_teacher(teacher_dirs["llama"])
    tokenizer = AutoTokenizer.from_pretrained(teacher_dirs["llama"])
    data = build_datasets(config.data, tokenizer, 32, config.training.seed)
    blocks = torch.stack([row["input_ids"] for row in data.train])[:160]  # the 20 calibration batches of 8
    confidence = teacher(input_ids=blocks).logits.softmax(-1).max(-1).values.mean().item()
    assert reported == pytest.approx(confidence, rel=1e-4)


@pytest.mark.parametrize("bf16", [True, False])
def test_teacher_and_loss_run_in_the_students_mixed_precision(bf16, teacher_dirs, run_values, monkeypatch):
    from distily.objectives.objective import DistillationObjective
    from distily.training.trainer import DistillationTrainer

    seen = {"teacher": [], "objective": []}

    def recording(name, method):
        def wrapped(self, *args, **kwargs):
            if torch.is_grad_enabled():  # training steps, not evaluation
                seen[name].append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return method(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(DistillationTrainer, "_forward_teacher",
                        recording("teacher", DistillationTrainer._forward_teacher))
    monkeypatch.setattr(DistillationObjective, "__call__", recording("objective", DistillationObjective.__call__))
    run_distillation(parse_config(**run_values(teacher_dirs["llama"], max_steps=2, bf16=bf16)))
    expected = torch.bfloat16 if bf16 else None
    assert seen["teacher"] == [expected] * 2 and seen["objective"] == [expected] * 2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_teacher_runs_without_its_lm_head_and_the_losses_are_unchanged(arch, teacher_dirs, run_values, monkeypatch):
    import distily.teachers.live as live
    import distily.training.trainer as trainer_module

    outputs = []
    forward_teacher = trainer_module.DistillationTrainer._forward_teacher

    def recording(self, inputs):
        result = forward_teacher(self, inputs)
        outputs.append(result)
        return result

    monkeypatch.setattr(trainer_module.DistillationTrainer, "_forward_teacher", recording)
    values = run_values(teacher_dirs[arch], max_steps=3, hidden_states_weight=1.0, eval_strategy="steps", eval_steps=3)
    fused = run_distillation(parse_config(**values))
    assert outputs and all(getattr(output, "logits", None) is None for output in outputs)  # the decoder alone

    outputs.clear()
    monkeypatch.setattr(live, "teacher_is_sharded", lambda accelerator: True)  # as if: the full teacher
    whole = run_distillation(parse_config(**{**values, "overwrite_output_dir": True}))
    assert outputs and all(output.logits is not None for output in outputs)
    assert fused["train"]["train_loss"] == pytest.approx(whole["train"]["train_loss"], rel=1e-5)
    for key in ("after_loss", "after_loss_logits", "after_loss_hidden_states", "after_kl_to_teacher"):
        assert fused["student"][key] == pytest.approx(whole["student"][key], rel=1e-5), key


def _qwen2_style_tokenizer():
    """The tiny tokenizer with Qwen2's kind of special tokens added after its vocabulary: 3 ids from VOCAB on."""
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>",
                                  "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert len(tokenizer) == VOCAB + 3 and tokenizer.pad_token_id == VOCAB
    return tokenizer


def test_a_tokenizer_with_ids_past_the_embedding_is_refused_before_training(run_values, tmp_path):
    teacher = save_tiny_model(tmp_path / "qwen2", "qwen2", _qwen2_style_tokenizer())  # embedding: VOCAB rows
    values = run_values(teacher, student_config_overrides={"num_hidden_layers": 2})
    message = (f"the tokenizer has {VOCAB + 3} tokens, pad_token_id {VOCAB}, but the teacher's input embedding has "
               f"{VOCAB} rows; expected every token id below {VOCAB}")
    with pytest.raises(DistilyConfigError, match=message):
        run_distillation(parse_config(**values))
    assert not (Path(values["output_dir"]) / "model.safetensors").exists()  # refused before training


def test_a_student_embedding_narrower_than_the_tokenizer_is_refused(teacher_dirs, run_values):
    values = run_values(teacher_dirs["llama"], student_init="random",
                        student_config_overrides={"num_hidden_layers": 2, "vocab_size": VOCAB - 20})
    with pytest.raises(DistilyConfigError, match=f"the tokenizer has {VOCAB} tokens, but the student's input "
                                                 f"embedding has {VOCAB - 20} rows"):
        run_distillation(parse_config(**values))


def test_an_embedding_padded_past_the_tokenizer_trains_and_the_student_reloads(run_values, tmp_path):
    """Qwen2's layout: more embedding rows than tokens, the special tokens inside them."""
    teacher = save_tiny_model(tmp_path / "qwen2", "qwen2", _qwen2_style_tokenizer(), vocab_size=VOCAB + 64)
    values = run_values(teacher, student_config_overrides={"num_hidden_layers": 2}, max_steps=1)
    run_distillation(parse_config(**values))
    student = AutoModelForCausalLM.from_pretrained(values["output_dir"])
    assert student.get_input_embeddings().num_embeddings == VOCAB + 64


@pytest.mark.parametrize("packing", ["documents", "stream"])
def test_tokens_seen_counts_the_real_tokens_read(packing, teacher_dirs, run_values, monkeypatch):
    from distily.training.trainer import DistillationTrainer

    real, read = [], []
    step = DistillationTrainer.training_step

    def counting(self, model, inputs, *args, **kwargs):
        real.append(int(inputs["attention_mask"].sum()))
        read.append(inputs["input_ids"].numel())
        return step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", counting)
    values = run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, packing=packing,
                        max_seq_length=100, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    metrics = run_distillation(parse_config(**values))
    assert len(real) == 6 and metrics["train"]["tokens_seen"] == sum(real)
    if packing == "documents":  # whole documents in padded blocks: the padding is not counted
        assert sum(real) < sum(read)
    else:  # full blocks: every token is real
        assert sum(real) == sum(read) == 3 * 2 * 2 * 100
