"""On-policy distillation, Distily against TRL's ``GKDTrainer``: the same run, held-out exact match and wall time.

    python benchmarks/on_policy_trl.py [--runs 3] [--steps 100] [--lmbda 1.0] [--beta 0.5] [--quick]

The task, teacher and transfer set are ``experiments/instruct.py``'s (string reversal in chat format, built in
``--work_dir``, shared with the experiment: an experiment already run there is reused). One student is built
once (half the teacher's depth, blocks from evenly spaced teacher blocks, embeddings and head copied) and both
trainers start from it, with the same prompts (the teacher's responses dataset; at ``lmbda=1`` only its
prompts are read), lmbda, generalized JSD with ``beta``, temperature 1 (sampling and loss), top-p 1, new
tokens, steps, batch, learning rate (constant, no warmup), fp32 and seed. Distily holds 1% of the rows out as
its own eval split (``eval_fraction``, not evaluated here); TRL trains on all. Each run is a fresh process, the trainers interleaved
(distily, trl, distily, trl, ...); medians of ``--runs``. Round r trains both with seed r (data order, sampling):
each trainer is deterministic for a seed, so the spread of exact match across rounds is the training noise by
which "within noise" is judged (Distily's median at least TRL's minus twice the larger standard deviation).

Measured per run: held-out exact match (greedy, ``instruct.heldout_scores``) and the wall time from loading the
models to the trained student (TRL: models, trainer, ``train()``; Distily: ``run_distillation``, which also
tokenizes the data (cached after the first run), checks and writes its reports). Goals: Distily's exact match
within noise of TRL's or better (the runs' spread is in the JSON), its wall time at most 0.8x TRL's.
Writes ``benchmarks/results/on_policy_trl.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from common import describe, interleaved, machine, medians, run_worker, table, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import instruct  # noqa: E402

TRAINERS = ("distily", "trl")
QUICK = {"runs": 1, "steps": 4, "batch": 8, "teacher_steps": 20, "prompts": 64, "references": 8, "heldout": 16,
         "work_dir": "/tmp/distily-bench-on-policy-trl-quick"}  # fmt: skip
GOALS = {"distily_over_trl_wall_time": ("<=", 0.8)}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lmbda", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.5, help="of the generalized JSD (0.5: symmetric)")
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--references", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=256)
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "instruct"), help="the experiment's, shared")
    parser.add_argument("--quick", action="store_true", help="a smoke run: " + json.dumps(QUICK))
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker_spec", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.quick:
        vars(options).update(QUICK)
    if options.runs < 1 or options.steps < 1:
        parser.error(f"--runs {options.runs} and --steps {options.steps} must be at least 1")
    return options


def experiment_args(options) -> argparse.Namespace:
    """The experiment's settings with this benchmark's sizes."""
    return instruct.parse_args([
        "--work_dir", options.work_dir, "--teacher_steps", str(options.teacher_steps), "--prompts",
        str(options.prompts), "--references", str(options.references), "--heldout", str(options.heldout),
        "--student_steps", str(options.steps), "--eval_every", str(options.steps), "--batch_size", str(options.batch),
        "--learning_rate", str(options.lr),
    ])  # fmt: skip


def prepare(options) -> dict:
    """Task data, teacher, its responses and the one initial student; the spec every worker reads."""
    args = experiment_args(options)
    splits = instruct.task_splits(args)
    data = instruct.write_task_data(args, splits)
    teacher_dir = instruct.train_teacher(args, {prompt for prompt, _ in splits["heldout"]})
    responses = instruct.teacher_responses(args, teacher_dir, data["prompts"])
    student_dir = Path(args.work_dir) / "student-init"
    if not (student_dir / "model.safetensors").exists():
        from distily.models.arguments import ModelArguments
        from distily.models.student import build_student
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        model_args = ModelArguments(
            teacher_model_name_or_path=str(teacher_dir),
            student_config_overrides={"num_hidden_layers": args.teacher_layers // 2}, student_init="teacher",
        )  # fmt: skip
        build_student(model_args, teacher).save_pretrained(student_dir)
        PreTrainedTokenizerFast.from_pretrained(teacher_dir).save_pretrained(student_dir)
    return {
        "options": vars(options), "teacher": str(teacher_dir), "student": str(student_dir), "responses": responses,
        "heldout": splits["heldout"], "max_new_tokens": args.max_letters + 2,
    }  # fmt: skip


def train_distily(spec: dict, output_dir: str) -> None:
    from distily.config import parse_config
    from distily.training.distill import run_distillation

    options = spec["options"]
    keys = instruct.student_keys(experiment_args(argparse.Namespace(**options)), Path(spec["teacher"]))
    for key in ("student_config_overrides", "student_init", "save_steps", "save_total_limit"):
        keys.pop(key)
    keys.update(student_model_name_or_path=spec["student"], dataset_name=spec["responses"], lmbda=options["lmbda"],
                logits_loss_kwargs={"beta": options["beta"]}, output_dir=output_dir, save_strategy="no",
                seed=spec["seed"])  # fmt: skip
    run_distillation(parse_config(**keys))


def train_trl(spec: dict, output_dir: str) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import datasets
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    options = spec["options"]
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(spec["student"], dtype=torch.float32)
    args = GKDConfig(
        output_dir=output_dir, per_device_train_batch_size=options["batch"], max_steps=options["steps"],
        learning_rate=options["lr"], lr_scheduler_type="constant", warmup_steps=0, bf16=False, use_cpu=not torch.cuda.is_available(),
        lmbda=options["lmbda"], beta=options["beta"], temperature=1.0, max_new_tokens=spec["max_new_tokens"],
        max_length=instruct.max_length(experiment_args(argparse.Namespace(**options))), seed=spec["seed"], logging_steps=max(options["steps"] // 10, 1), save_strategy="no", report_to="none",
        disable_tqdm=True,
    )  # fmt: skip
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args,
                         train_dataset=datasets.load_dataset("json", data_files=spec["responses"], split="train"),
                         processing_class=PreTrainedTokenizerFast.from_pretrained(spec["teacher"]))  # fmt: skip
    trainer.train()
    trainer.save_model(output_dir)


TRAIN = {"distily": train_distily, "trl": train_trl}


def measure(trainer: str, spec: dict) -> dict:
    """One run of ``trainer`` in this (fresh) process: wall time to the trained student, held-out exact match."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    output_dir = str(Path(spec["options"]["work_dir"]) / "on-policy-trl" / f"{trainer}-{time.time_ns()}")
    torch.manual_seed(spec["seed"])
    started = time.perf_counter()
    TRAIN[trainer](spec, output_dir)
    wall = time.perf_counter() - started
    student = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(spec["teacher"])
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32).eval()
    heldout = [tuple(pair) for pair in spec["heldout"]]
    return {"wall_seconds": wall,
            **instruct.heldout_scores(student, tokenizer, heldout, spec["max_new_tokens"], teacher)}  # fmt: skip


def summarise(runs: dict[str, list[dict]]) -> dict:
    keys = ("wall_seconds", "exact_match", "kl_to_teacher")
    median = {name: medians(trainer_runs, keys) for name, trainer_runs in runs.items()}
    spread = {name: {"exact_match_stdev": statistics.pstdev(run["exact_match"] for run in trainer_runs),
                     "exact_match_range": [min(r["exact_match"] for r in trainer_runs),
                                           max(r["exact_match"] for r in trainer_runs)]}
              for name, trainer_runs in runs.items()}  # fmt: skip
    ratios = {
        "distily_over_trl_wall_time": median["distily"]["wall_seconds"] / median["trl"]["wall_seconds"],
        "distily_minus_trl_exact_match_points": median["distily"]["exact_match"] - median["trl"]["exact_match"],
    }
    goals = {name: (ratios[name] >= bound if sense == ">=" else ratios[name] <= bound)
             for name, (sense, bound) in GOALS.items()}  # fmt: skip
    noise = 2 * max(found["exact_match_stdev"] for found in spread.values())
    goals["exact_match_within_noise_or_better"] = ratios["distily_minus_trl_exact_match_points"] >= -noise
    return {"medians": median, "spread": spread, "ratios": ratios, "goals": goals}


def main(argv=None) -> None:
    options = parse_arguments(argv)
    if options.worker:
        print(json.dumps(measure(options.worker, json.loads(options.worker_spec))))
        return
    spec = prepare(options)
    seeds = {name: itertools.count() for name in TRAINERS}  # round r: seed r, for each trainer
    cases = {name: (lambda name=name: run_worker(Path(__file__), "--worker", name, "--worker_spec",
                                                 json.dumps({**spec, "seed": next(seeds[name])})))
             for name in TRAINERS}  # fmt: skip
    runs = interleaved(cases, options.runs)
    summary = summarise(runs)
    rows = [("trainer", "wall s", "exact match %", "KL to teacher")]
    for name, median in summary["medians"].items():
        rows.append((name, f"{median['wall_seconds']:.1f}", f"{median['exact_match']:.1f}",
                     f"{median['kl_to_teacher']:.3f}"))  # fmt: skip
    print(describe(machine()))
    print(table(rows))
    for name, value in summary["ratios"].items():
        print(f"{name} = {value:.3f}")
    print("goals met:", summary["goals"])
    path = write_results("on_policy_trl", {"settings": vars(options), "runs": runs, **summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
