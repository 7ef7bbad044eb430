"""lm-evaluation-harness on models in memory: a local task (YAML + local data) runs offline, for teacher and
student, and the teacher's results come from the cache the second time."""

import functools
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import yaml
from transformers import AutoModelForCausalLM

from distily.data.chat import adopt_chat_template
from distily.errors import DistilyConfigError
from distily.evaluation import harness
from distily.evaluation.arguments import EvaluationArguments
from distily.evaluation.harness import (
    cached_teacher_results, check_chat_template, run_tasks, task_manager, task_results,
)
from harness_tasks import TASK, choice_task, write_local_task
from tiny import make_documents, save_tiny_model, write_jsonl

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def test_a_local_task_runs_offline_for_teacher_and_student(teacher_dirs, tokenizer, tmp_path, monkeypatch, caplog):
    """Each model's run is named in a line before the harness's bars (the two looked the same), and the teacher's
    results read from the cache say so."""
    caplog.set_level(logging.INFO, logger="distily")
    args = EvaluationArguments(
        lm_eval_tasks=[TASK],
        lm_eval_include_path=write_local_task(tmp_path / "tasks"),
        lm_eval_limit=6,
        lm_eval_bootstrap_iters=10,
        lm_eval_cache_dir=str(tmp_path / "cache"),
    )
    manager = task_manager(args)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    student = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / "student", "gpt2", tokenizer, layers=2))
    student_results = run_tasks(student, tokenizer, args, manager, batch_size=4, model_name="the student")
    teacher_results = cached_teacher_results(teacher, teacher_dirs["gpt2"], tokenizer, args, manager, batch_size=4)
    for results in (student_results, teacher_results):
        assert set(results) == {TASK}
        assert 0.0 <= results[TASK]["acc"] <= 1.0
        assert results[TASK]["samples"] == 6  # lm_eval_limit
        assert results[TASK]["num_fewshot"] == 0  # the task's own (no lm_eval_num_fewshot)
        assert "acc_stderr" in results[TASK]
    monkeypatch.setattr(harness, "run_tasks", lambda *a, **k: pytest.fail("the teacher ran again"))
    again = cached_teacher_results(teacher, teacher_dirs["gpt2"], tokenizer, args, manager, batch_size=4)
    assert again == teacher_results
    cached = next(tmp_path.joinpath("cache").glob("*.json"))
    assert [record.getMessage() for record in caplog.records if record.name == harness.__name__] == [
        f"lm-eval on the student: {TASK}", f"lm-eval on the teacher: {TASK}",
        f"lm-eval on the teacher: {TASK}, read from the cache ({cached})",
    ]


def test_results_keep_requested_tasks_and_groups_not_group_members():
    raw = {
        "results": {
            "suite": {"alias": "suite", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "suite_a": {"alias": "a", "acc,none": 0.25},
            "other": {"alias": "other", "exact_match,strict-match": 1.0},
        },
        "group_subtasks": {"suite": ["suite_a"]},
        "n-samples": {"other": {"original": 9, "effective": 3}},
    }
    assert task_results(raw, ["suite", "other"]) == {
        "suite": {"acc": 0.5},
        "other": {"exact_match_strict-match": 1.0, "samples": 3},
    }


def test_a_group_without_its_own_aggregate_is_reported_as_its_members():
    """The harness gives such a group no numbers: its members used to be dropped with it (an empty entry)."""
    raw = {
        "results": {
            "bench": {"alias": "bench"},  # no aggregate_metric_list
            "bench_scored": {"alias": " - scored", "acc,none": 0.5},  # a subgroup with its own
            "bench_scored_a": {"alias": "  - a", "acc,none": 0.25},
            "bench_b": {"alias": " - b", "acc,none": 0.75},
        },
        "group_subtasks": {"bench": ["bench_scored", "bench_b"], "bench_scored": ["bench_scored_a"]},
        "n-samples": {"bench_scored_a": {"original": 9, "effective": 3}, "bench_b": {"original": 9, "effective": 3}},
    }
    assert task_results(raw, ["bench"]) == {"bench_scored": {"acc": 0.5}, "bench_b": {"acc": 0.75, "samples": 3}}


def write_group_tasks(directory) -> str:
    """Two tasks of the tiny grammar and the group ``tiny_suite`` of both, with no aggregate metric of its own."""
    write_local_task(directory)
    data = str(directory / "tiny_choice.jsonl")
    for name in ("tiny_a", "tiny_b"):
        task = choice_task(name, dataset_path="json", dataset_kwargs={"data_files": {"test": data}})
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(task))
    (directory / "tiny_suite.yaml").write_text(yaml.safe_dump({"group": "tiny_suite", "task": ["tiny_a", "tiny_b"]}))
    return str(directory)


def test_the_members_of_a_group_without_an_aggregate_are_scored(teacher_dirs, tokenizer, tmp_path):
    args = EvaluationArguments(lm_eval_tasks=["tiny_suite"], lm_eval_include_path=write_group_tasks(tmp_path / "tasks"),
                               lm_eval_limit=2, lm_eval_bootstrap_iters=0)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    results = run_tasks(teacher, tokenizer, args, task_manager(args), batch_size=4)
    assert sorted(results) == ["tiny_a", "tiny_b"]  # was {"tiny_suite": {}}
    assert all(0.0 <= found["acc"] <= 1.0 and found["samples"] == 2 for found in results.values())


def test_a_task_asked_for_alone_and_in_a_group_is_one_line_before_training(tmp_path):
    """The harness refuses to run a task twice, which it used to do after training (ValueError: Duplicate task)."""
    args = EvaluationArguments(lm_eval_tasks=["tiny_suite", "tiny_a"],
                               lm_eval_include_path=write_group_tasks(tmp_path / "tasks"))
    with pytest.raises(DistilyConfigError, match=re.escape(
        "lm_eval_tasks: 'tiny_a' is run by both 'tiny_suite' and 'tiny_a'; expected each task once (a group runs "
        "its members)"
    )):
        task_manager(args)
    assert task_manager(EvaluationArguments(lm_eval_tasks=["tiny_suite", TASK],
                                            lm_eval_include_path=args.lm_eval_include_path))


def test_a_missing_harness_is_named_before_training(monkeypatch):
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DistilyConfigError, match=r"needs lm-evaluation-harness.*pip install distily\[eval\]"):
        task_manager(EvaluationArguments(lm_eval_tasks=["hellaswag"]))


def write_task_of_a_missing_hub_dataset(directory) -> str:
    """A local task whose data is a Hub dataset that is neither there nor in the datasets cache."""
    directory.mkdir()
    task = choice_task("distily_missing_hub", dataset_path="distily-nobody/no-such-dataset")
    (directory / "missing.yaml").write_text(yaml.safe_dump(task))
    return str(directory)


@pytest.mark.parametrize("command", ["distill", "eval"])
def test_a_task_whose_data_cannot_be_loaded_is_one_line_before_anything_runs(command, teacher_dirs, tmp_path):
    tasks = write_task_of_a_missing_hub_dataset(tmp_path / "tasks")
    flags = ["--lm_eval_tasks", "distily_missing_hub", "--lm_eval_include_path", tasks]
    if command == "distill":
        data = write_jsonl(tmp_path / "docs.jsonl", make_documents(50))
        flags += ["--teacher_model_name_or_path", teacher_dirs["llama"], "--dataset_name", data,
                  "--output_dir", str(tmp_path / "run")]
    else:
        flags = [teacher_dirs["llama"], *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "distily.cli", command, *flags], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"distily {command}: error: lm_eval_tasks: 'distily_missing_hub' could not be loaded (ConnectionError: "
        "Couldn't reach 'distily-nobody/no-such-dataset' on the Hub (OfflineModeIsEnabled)); expected its dataset to "
        "be reachable: online, or in the datasets cache when offline (HF_DATASETS_OFFLINE=1), or a task in "
        "lm_eval_include_path whose data files are local"
    ]
    assert not (tmp_path / "run").exists()  # refused before any training


def test_chat_templates_reach_the_harness_and_key_the_teachers_cache(teacher_dirs, tokenizer, tmp_path, monkeypatch):
    import lm_eval

    calls, rendered = [], []
    original_evaluate, original_render = lm_eval.simple_evaluate, tokenizer.apply_chat_template

    def evaluate(**kwargs):
        calls.append(kwargs)
        return original_evaluate(**kwargs)

    def render(*args, **kwargs):
        rendered.append(args[0])
        return original_render(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", evaluate)
    tokenizer.chat_template = CHAT_TEMPLATE
    monkeypatch.setattr(tokenizer, "apply_chat_template", render)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    tasks = write_local_task(tmp_path / "tasks")
    results, keys, settings = {}, {}, {}
    for flag in (True, False):
        rendered.clear()
        args = settings[flag] = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_include_path=tasks, lm_eval_limit=4,
                                                    lm_eval_bootstrap_iters=0, lm_eval_apply_chat_template=flag)
        results[flag] = run_tasks(teacher, tokenizer, args, task_manager(args), batch_size=4)
        keys[flag] = harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, args)
        assert bool(rendered) == flag  # the prompts went through the chat template exactly when asked
    monkeypatch.setattr(tokenizer, "chat_template", CHAT_TEMPLATE.replace("\n", " \n"))  # another: other prompts
    for flag in (True, False):
        keys[flag, "other"] = harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, settings[flag])
    assert calls[0]["apply_chat_template"] is True and calls[0]["fewshot_as_multiturn"] is True
    assert "apply_chat_template" not in calls[1] and "fewshot_as_multiturn" not in calls[1]  # the harness's defaults
    assert results[True][TASK]["samples"] == results[False][TASK]["samples"] == 4
    assert keys[True] != keys[False]
    assert keys[True, "other"] != keys[True]  # the template keys the cache when the prompts go through it
    assert keys[False, "other"] == keys[False]  # and only then


def test_chat_template_kwargs_reach_the_harness_and_key_the_teachers_cache(teacher_dirs, tokenizer, tmp_path,
                                                                          monkeypatch):
    variables, original_render = [], tokenizer.apply_chat_template

    def render(*args, **kwargs):
        variables.append(kwargs.get("enable_thinking"))
        return original_render(*args, **kwargs)

    tokenizer.chat_template = CHAT_TEMPLATE
    monkeypatch.setattr(tokenizer, "apply_chat_template", render)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    args = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_include_path=write_local_task(tmp_path / "tasks"),
                               lm_eval_limit=2, lm_eval_bootstrap_iters=0, lm_eval_apply_chat_template=True)
    run_tasks(teacher, tokenizer, args, task_manager(args), 4, chat_template_kwargs={"enable_thinking": False})
    assert variables and set(variables) == {False}
    keys = {kwargs: harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, args, kwargs and {"a": kwargs})
            for kwargs in (None, 1, 2)}
    assert len(set(keys.values())) == 3
    plain = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_apply_chat_template=False)
    assert (harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, plain, {"a": 1})
            == harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, plain))  # no chat, no effect


def test_a_dated_template_renders_the_harness_prompts_with_the_runs_date_which_keys_the_teachers_cache(
        teacher_dirs, tokenizer, tmp_path, monkeypatch):
    """A template that writes the day renders lm-eval's chat prompts with the run's chat_template_date (they read
    the clock), and the date keys the teacher's cached results; an undated template's key ignores it."""
    prompts, original_render = [], tokenizer.apply_chat_template

    def render(*args, **kwargs):
        rendered = original_render(*args, **kwargs)
        if "continue_final_message" in kwargs:  # the harness's (not Distily's own)
            prompts.append(rendered)
        return rendered

    tokenizer.chat_template = "Today: {{ strftime_now('%d %b %Y') }}\n" + CHAT_TEMPLATE
    monkeypatch.setattr(tokenizer, "apply_chat_template", render)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    args = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_include_path=write_local_task(tmp_path / "tasks"),
                               lm_eval_limit=2, lm_eval_bootstrap_iters=0, lm_eval_apply_chat_template=True)
    run_tasks(teacher, tokenizer, args, task_manager(args), 4, chat_template_date="2024-07-26")
    assert prompts and all(prompt.startswith("Today: 26 Jul 2024\n") for prompt in prompts)

    def key(date):
        return harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, args, chat_template_date=date)
    assert key("2024-07-26") != key("2024-07-27")
    tokenizer.chat_template = CHAT_TEMPLATE
    assert key("2024-07-26") == key("2024-07-27")


def test_lm_eval_model_args_reach_hflm_and_key_the_teachers_cache(teacher_dirs, tokenizer, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    built, original_init = [], HFLM.__init__

    @functools.wraps(original_init)
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        built.append((self.max_length, self.think_end_token))

    monkeypatch.setattr(HFLM, "__init__", init)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    tasks = write_local_task(tmp_path / "tasks")
    keys = {}
    for model_args in (None, {"max_length": 16, "think_end_token": "</think>"}, {"max_length": 32}):
        args = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_include_path=tasks, lm_eval_limit=2,
                                   lm_eval_bootstrap_iters=0, lm_eval_model_args=model_args and json.dumps(model_args))
        assert run_tasks(teacher, tokenizer, args, task_manager(args), batch_size=4)[TASK]["samples"] == 2
        keys[json.dumps(model_args)] = harness.teacher_cache_key(teacher, teacher_dirs["gpt2"], tokenizer, args)
    assert built[1:] == [(16, "</think>"), (32, None)] and built[0][0] not in (16, 32)
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("model_args, message", [
    ({"think_end_tokn": "</think>"}, "lm_eval_model_args: 'think_end_tokn' is not an argument of lm-eval's HFLM "
                                     "(did you mean 'think_end_token'?)"),
    ({"batch_size": 8}, "lm_eval_model_args sets 'batch_size', which Distily sets from per_device_eval_batch_size"),
    ({"chat_template_args": {}}, "lm_eval_model_args sets 'chat_template_args', which Distily sets from "
                                 "chat_template_kwargs"),
    # HFLM ignored these for a loaded model (the card still named them), or refused it after training
    ({"dtype": "bfloat16"}, "lm_eval_model_args sets 'dtype', which lm-eval's HFLM uses only to load a model itself"),
    ({"peft": "adapter"}, "lm_eval_model_args sets 'peft', which lm-eval's HFLM uses only to load a model itself"),
    ({"parallelize": True}, "lm_eval_model_args sets 'parallelize', which lm-eval's HFLM uses only to load a model"),
    ({"enable_thinking": True}, "lm_eval_model_args sets enable_thinking=true without think_end_token; expected "
                                "think_end_token too"),
])
def test_bad_lm_eval_model_args_are_refused_before_training_in_one_line(tmp_path, model_args, message):
    args = EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_include_path=write_local_task(tmp_path / "tasks"),
                               lm_eval_model_args=model_args)
    with pytest.raises(DistilyConfigError, match="^" + re.escape(message)):
        task_manager(args)


def test_lm_eval_model_args_need_tasks_and_a_json_object():
    with pytest.raises(DistilyConfigError, match=re.escape("is set without lm_eval_tasks; expected the tasks")):
        EvaluationArguments(lm_eval_model_args='{"max_length": 16}')
    with pytest.raises(DistilyConfigError, match=re.escape("lm_eval_model_args='max_length=16' is not valid JSON")):
        EvaluationArguments(lm_eval_tasks=[TASK], lm_eval_model_args="max_length=16")


def test_a_chat_template_is_required_before_training(tokenizer):
    args = EvaluationArguments(lm_eval_tasks=["hellaswag"], lm_eval_apply_chat_template=True)
    tokenizer.chat_template = None
    with pytest.raises(DistilyConfigError, match=r"^lm_eval_apply_chat_template=true, but the tokenizer "):
        check_chat_template(tokenizer, args)
    tokenizer.chat_template = CHAT_TEMPLATE
    check_chat_template(tokenizer, args)
    tokenizer.chat_template = None
    adopt_chat_template(tokenizer, CHAT_TEMPLATE)  # a run's chat_template, for a tokenizer without one
    check_chat_template(tokenizer, args)


def test_tasks_are_checked_without_the_harness_deprecated_api(tmp_path):
    """The check before training called lm_eval's get_task_dict, deprecated ("Use TaskManager.load() instead") in the
    harness version Distily needs; a group still runs its members."""
    import warnings

    args = EvaluationArguments(lm_eval_tasks=["tiny_suite"], lm_eval_include_path=write_group_tasks(tmp_path / "tasks"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert task_manager(args)
    with pytest.raises(DistilyConfigError, match="'tiny_a' is run by both 'tiny_suite' and 'tiny_a'"):
        task_manager(EvaluationArguments(lm_eval_tasks=["tiny_suite", "tiny_a"],
                                         lm_eval_include_path=args.lm_eval_include_path))


def test_the_harness_does_not_warn_about_the_model_distily_passes_in(teacher_dirs, tokenizer, monkeypatch, caplog):
    """HFLM warned twice per model (student and teacher) that a model object skips its loading and distributed setup
    ("`pretrained` model kwarg is not of type `str`...", "Passed an already-initialized model..."): both are what
    Distily means, and said nothing to its user."""
    import lm_eval

    class Evaluated(Exception):
        pass

    def simple_evaluate(**kwargs):
        raise Evaluated

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dirs["gpt2"])
    with caplog.at_level(logging.WARNING), pytest.raises(Evaluated):
        run_tasks(teacher, tokenizer, EvaluationArguments(lm_eval_tasks=[TASK]), None, batch_size=2)
    assert not [record.getMessage() for record in caplog.records if record.name.startswith("lm_eval")]
