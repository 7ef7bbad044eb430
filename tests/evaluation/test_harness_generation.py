"""lm-evaluation-harness's tasks on a student of a hybrid teacher that kept none of its attention layers: lm-eval's
generate, and its forward for likelihoods where the config says use_cache=True, raised inside transformers (its cache
held no attention layer to size the causal mask by)."""

import copy
import json

import torch
import yaml
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, BambaConfig

from distily.evaluation.arguments import EvaluationArguments
from distily.evaluation.harness import run_tasks, task_manager
from distily.evaluation.harness_model import HarnessModel
from harness_tasks import TASK as CHOICE_TASK, write_local_task

TASK = "distily_tiny_generation"


def write_generation_task(directory) -> str:
    """A task whose answers are generated greedily up to a new line and scored by exact match."""
    directory.mkdir()
    data = directory / "tiny_generation.jsonl"
    data.write_text("".join(json.dumps({"context": "The cat sees", "answer": " a book today."}) + "\n"
                            for _ in range(4)))
    task = {
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{context}}",
        "doc_to_target": "{{answer}}", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (directory / "tiny_generation.yaml").write_text(yaml.safe_dump(task))
    return str(directory)


def mamba_only_student(tokenizer):
    """A Bamba of two Mamba layers and no attention layer, its config's use_cache True (as a Hub checkpoint's is)."""
    torch.manual_seed(0)
    config = BambaConfig(vocab_size=len(tokenizer), hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, num_hidden_layers=2, attn_layer_indices=[], mamba_n_heads=8,
                         mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=8, max_position_embeddings=128)
    assert config.use_cache
    return AutoModelForCausalLM.from_config(config)


def test_a_student_without_attention_layers_runs_a_generation_task(tokenizer, tmp_path):
    args = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_include_path=write_generation_task(tmp_path / "tasks"),
                               lm_eval_bootstrap_iters=10, lm_eval_cache_dir=str(tmp_path / "cache"))
    results = run_tasks(mamba_only_student(tokenizer), tokenizer, args, task_manager(args), batch_size=4)
    assert results[TASK]["samples"] == 4 and 0.0 <= results[TASK]["exact_match"] <= 1.0


def test_a_student_without_attention_layers_runs_a_multiple_choice_task_with_its_own_likelihoods(tokenizer, tmp_path):
    """The likelihood forward reads no cache: the model's config says use_cache=True, so it built one and raised.
    Its log-likelihoods are lm-eval's for the same model told use_cache=False, whose config is left as it was."""
    student = mamba_only_student(tokenizer)
    args = EvaluationArguments(lm_eval_tasks=[CHOICE_TASK], lm_eval_include_path=write_local_task(tmp_path / "tasks"),
                               lm_eval_bootstrap_iters=10, lm_eval_cache_dir=str(tmp_path / "cache"))
    results = run_tasks(student, tokenizer, args, task_manager(args), batch_size=4)
    assert results[CHOICE_TASK]["samples"] == 8 and 0.0 <= results[CHOICE_TASK]["acc"] <= 1.0
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate([
        ("The cat sees", " a book today."), ("My friend reads", " the river again."), ("A dog", " likes the tree."),
    ])]
    found = HarnessModel(pretrained=student, tokenizer=tokenizer, batch_size=2).loglikelihood(requests)
    without_cache = copy.deepcopy(student)
    without_cache.config.use_cache = False
    expected = HFLM(pretrained=without_cache, tokenizer=tokenizer, batch_size=2).loglikelihood(requests)
    assert found == expected and student.config.use_cache
