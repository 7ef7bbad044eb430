"""Every recipe runs, through the documented override that swaps its Hub teacher and dataset for local
ones: tiny models of the recipe's architecture and depth, for two steps."""

import json
from pathlib import Path
from typing import Optional

import pytest
import yaml

from distily.cli import main
from tiny import (
    PHI3_TEMPLATE, SUBJECTS, end_of_text, make_chat_tokenizer, make_sentencepiece_chat_tokenizer, make_tokenizer,
    save_tiny_model, write_chat_jsonl,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# recipe -> (architecture, depth of the real teacher): the student overrides in the recipe apply as they are
DISTILL_RECIPES = {
    "gpt2-distily.yaml": ("gpt2", 12),
    "gpt2-distily-bitnet.yaml": ("gpt2", 12),
    "phi-3-mini-instruct-distily.yaml": ("phi3", 32),
    "qwen3-instruct-distily.yaml": ("qwen3", 28),
    "phi-3-mini-to-smollm2-chat.yaml": ("phi3", 32),
}
SWEEP_RECIPES = {"logits-vs-hidden-states.yaml": ("gpt2", 12)}
# run on a tiny local chat dataset: with Phi-3's template, which the tiny tokenizer lacks; with the Qwen3-style
# teacher's own template and special tokens
CHAT_RECIPES = {"phi-3-mini-instruct-distily.yaml": PHI3_TEMPLATE, "qwen3-instruct-distily.yaml": None,
                "phi-3-mini-to-smollm2-chat.yaml": PHI3_TEMPLATE}
CROSS_TOKENIZER_RECIPES = {"phi-3-mini-to-smollm2-chat.yaml"}  # the student too is swapped for a local one, which
# reads its own (SentencePiece) tokenizer and ChatML
TINY_BUDGET = [
    "--max_steps", "2",
    "--warmup_steps", "0",
    "--max_seq_length", "32",
    "--max_samples", "8",
    "--max_eval_samples", "4",
    "--per_device_train_batch_size", "2",
    "--per_device_eval_batch_size", "4",
    "--gradient_accumulation_steps", "1",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--report_to", "none",
    "--disable_tqdm", "true",
]  # fmt: skip


def test_every_recipe_is_tested():
    assert {path.name for path in RECIPES.glob("*.yaml")} == set(DISTILL_RECIPES) | set(SWEEP_RECIPES)


def test_the_training_flags_a_recipe_suggests_are_not_deprecated(tmp_path):
    """The recipes suggested --gradient_checkpointing true for smaller GPUs, which transformers 5 deprecates in favour
    of activation_checkpointing: a FutureWarning on every run that followed the advice."""
    import dataclasses
    import re
    import warnings

    from transformers import TrainingArguments

    training_keys = {field.name for field in dataclasses.fields(TrainingArguments)}
    for recipe in RECIPES.glob("*.yaml"):
        comments = "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
        for key, value in re.findall(r"--(\w+) (\w+)", comments):
            if key in training_keys:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    TrainingArguments(output_dir=str(tmp_path), **{key: yaml.safe_load(value)})


@pytest.fixture(scope="module")
def recipe_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-teachers")
    archs = set(DISTILL_RECIPES.values()) | set(SWEEP_RECIPES.values())
    teachers = {}
    for arch, depth in archs:
        tokenizer = make_chat_tokenizer(arch, eos_token=end_of_text(arch)) if arch == "qwen3" else make_tokenizer()
        teachers[arch, depth] = save_tiny_model(root / f"{arch}-{depth}", arch, tokenizer, layers=depth,
                                                vocab_size=len(tokenizer))
    return teachers


def _local(recipe_teachers, arch_depth, text_file, tmp_path) -> list[str]:
    teacher = recipe_teachers[arch_depth]
    return [
        "--teacher_model_name_or_path", teacher,
        "--dataset_name", text_file,
        "--tokenization_cache_dir", str(tmp_path / "cache"),
        *TINY_BUDGET,
    ]  # fmt: skip


def _local_chat(tmp_path, template: Optional[str]) -> list[str]:
    """A tiny chat dataset (one short exchange per row), and ``template`` when the teacher has none."""
    rows = [[{"role": "user", "content": s}, {"role": "assistant", "content": s.upper()}] for s in SUBJECTS * 3]
    chats = write_chat_jsonl(tmp_path / "chats.jsonl", rows)
    argv = ["--dataset_name", chats, "--max_seq_length", "64"]
    if template is not None:
        (tmp_path / "template.jinja").write_text(template)
        argv += ["--chat_template", str(tmp_path / "template.jinja")]
    return argv


def _own_tokenizer_student(path: Path) -> str:
    """A tiny 2-layer student with a SentencePiece tokenizer and ChatML's template (not the teachers' tokenizer)."""
    tokenizer = make_sentencepiece_chat_tokenizer("chatml")
    return save_tiny_model(path, "llama", tokenizer, layers=2, vocab_size=len(tokenizer))


SLOW = {"phi-3-mini-instruct-distily.yaml", "qwen3-instruct-distily.yaml",
        "phi-3-mini-to-smollm2-chat.yaml"}  # 32- and 28-layer teachers: seconds


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, marks=pytest.mark.slow) if r in SLOW else r for r in DISTILL_RECIPES]
)
def test_distill_recipe_runs_with_local_stand_ins(recipe, recipe_teachers, text_file, tmp_path):
    output_dir = tmp_path / "run"
    argv = ["distill", str(RECIPES / recipe), *_local(recipe_teachers, DISTILL_RECIPES[recipe], text_file, tmp_path)]
    if recipe in CHAT_RECIPES:  # every batch on-policy: the recipe's fraction may draw none in two steps
        argv += [*_local_chat(tmp_path, CHAT_RECIPES[recipe]), "--lmbda", "1.0"]
    if recipe in CROSS_TOKENIZER_RECIPES:
        argv += ["--student_model_name_or_path", _own_tokenizer_student(tmp_path / "student")]
    assert main([*argv, "--output_dir", str(output_dir)]) == 0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]
    if recipe in CHAT_RECIPES:
        card = (output_dir / "README.md").read_text()
        assert "`loss_on: assistant`" in card and "each training micro-batch was, with probability 1 (`lmbda`)" in card
        variables = yaml.safe_load((RECIPES / recipe).read_text()).get("chat_template_kwargs")
        assert not variables or f"`chat_template_kwargs: {json.dumps(variables)}`" in card
    if recipe in CROSS_TOKENIZER_RECIPES:
        assert "rendered with each model's own chat template (the teacher's: the one given (`chat_template`); the " \
               "student's: its own), aligned inside the assistant's answers" in card


@pytest.mark.slow
@pytest.mark.parametrize("recipe", SWEEP_RECIPES)
def test_sweep_recipe_runs_with_local_stand_ins(recipe, recipe_teachers, text_file, tmp_path):
    output_dir = tmp_path / "sweep"
    argv = ["sweep", str(RECIPES / recipe), *_local(recipe_teachers, SWEEP_RECIPES[recipe], text_file, tmp_path)]
    assert main([*argv, "--output_dir", str(output_dir)]) == 0
    assert (output_dir / "results.md").exists()
    assert len(list(output_dir.glob("*/metrics.json"))) == 4
