"""A student sharded over 2 processes (gloo on CPU) by FSDP2, FSDP1 or DeepSpeed ZeRO-3 generates on-policy
completions and runs evaluations through ``DistillationTrainer.run_student`` exactly as the whole student does,
each process with its own prompts, and trains on as before (``sharded_worker.py``). Called directly, an FSDP
student fails (its embeddings are sharded); without synced decoding the processes' collectives fall out of step.
ZeRO-3 runs where deepspeed is installed (not a test requirement: it builds against the local torch). After
training, lm-eval (the main process alone) gets the saved student, loaded whole, and no sharded teacher."""

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from distily.config import parse_config
from distily.training import distill
from distily.training.distill import run_distillation
from distily.training.trainer import DistillationTrainer

WORKER = Path(__file__).with_name("sharded_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("modes", [["fsdp2", "fsdp1"], ["zero3"]], ids=["fsdp", "zero3"])
def test_a_sharded_student_generates_and_evaluates_as_the_whole_one(modes):
    if modes == ["zero3"] and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install --no-build-isolation deepspeed)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               *modes]
    tests = str(Path(__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    passed = sorted(re.findall(r"ok (\w+) (\d)", done.stdout))  # the processes' lines may interleave
    assert passed == sorted((mode, rank) for mode in modes for rank in "01")


def test_a_sharded_run_benchmarks_its_saved_student_and_not_its_sharded_teacher(
        teacher_dirs, run_values, monkeypatch, caplog):
    """lm-eval runs on the main process alone, where a sharded model cannot run: it gets the saved student, loaded
    whole, and no teacher (as if both were sharded: the flags are set by hand, one process)."""
    ran = {}

    def benchmark(config, student, teacher, tokenizer, manager):
        ran.update(student=student, teacher=teacher)
        return {"task": {"acc": 0.5}}, None

    monkeypatch.setattr(distill, "task_manager", lambda args: "a task manager")
    monkeypatch.setattr(distill, "benchmark", benchmark)
    monkeypatch.setattr(DistillationTrainer, "student_is_sharded", lambda self: True)
    monkeypatch.setattr(distill, "teacher_is_sharded", lambda accelerator: True)
    values = run_values(teacher_dirs["llama"], max_steps=2, lm_eval_tasks=["task"])
    with caplog.at_level(logging.WARNING, logger="distily"):
        metrics = run_distillation(parse_config(**values))

    saved = AutoModelForCausalLM.from_pretrained(values["output_dir"])
    assert ran["teacher"] is None and "the teacher is sharded" in caplog.text
    assert ran["student"].state_dict().keys() == saved.state_dict().keys()
    assert all(torch.equal(tensor, saved.state_dict()[name]) for name, tensor in ran["student"].state_dict().items())
    assert metrics["student"]["lm_eval"] == {"task": {"acc": 0.5}}
    assert metrics["student"]["parameters"] == saved.num_parameters()
