"""On-policy distillation, Distily against TRL's ``GKDTrainer``: the same run, held-out exact match and wall time.

    python benchmarks/on_policy_trl.py [--runs 3] [--steps 100] [--lmbda 1.0] [--beta 0.5] [--vocab N] [--quick]

The task, teacher and transfer set are ``experiments/instruct.py``'s (string reversal in chat format, built in
``--work_dir``, shared with the experiment: an experiment already run there is reused). One student is built
once (half the teacher's depth, blocks from evenly spaced teacher blocks, embeddings and head copied) and both
trainers start from it, with the same prompts (the teacher's responses dataset; at ``lmbda=1`` only its
prompts are read), lmbda, generalized JSD with ``beta``, temperature 1 (sampling and loss), top-p 1, new
tokens, steps, batch, learning rate (constant, no warmup), fp32 and seed; neither checkpoints activations (TRL's
``SFTConfig`` would by default, which Distily does not do). Distily holds 1% of the rows out as its own eval
split (``eval_fraction``, not evaluated here); TRL trains on all. Each run is a fresh process, the trainers
interleaved (distily, trl, distily, trl, ...); medians of ``--runs``. Round r trains both with seed r (data
order, sampling): each trainer is deterministic for a seed, and the seed moves held-out exact match by tens of
points (the runs are still learning fast at 300 steps, and when they take off depends on the seed). "Within
noise" is therefore judged on the rounds as pairs: the mean of Distily's minus TRL's exact match over the
seeds, at least minus twice its standard error (one round has no spread to judge by: the goal and the standard
error are then left out).

Measured per run: held-out exact match (greedy, ``instruct.heldout_scores``), the wall time from loading the
models to the trained student (TRL: models, trainer, ``train()``; Distily: ``run_distillation``, which also
tokenizes the data (cached after the first run), evaluates its eval split before and after training, checks and
writes its reports: work TRL's time leaves out), and the process's peak memory at that point. Goals: Distily's
exact match within noise of TRL's or better (the runs' spread and the paired differences are in the JSON), its
wall time at most 0.8x TRL's.
Writes ``benchmarks/results/on_policy_trl.json``.

``--vocab N`` runs the same with both models' (tied) embeddings padded to N rows, as Qwen2's 151,936 are padded
beyond its tokenizer: every step computes, and every loss reads, N logits per token, as at the vocabularies
students carry. The padded rows are untrained (the students sample them), so exact match measures nothing there:
the run reports wall time and process peak memory only, to ``benchmarks/results/on_policy_trl_vocab<N>.json``.
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

from common import (describe, interleaved, keep_measured_results, machine, medians, process_peak_bytes, run_worker,
                    table, write_results)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import instruct  # noqa: E402

TRAINERS = ("distily", "trl")
QUICK = {"runs": 1, "steps": 4, "batch": 8, "teacher_steps": 20, "prompts": 64, "references": 8, "heldout": 16,
         "work_dir": "/tmp/distily-bench-on-policy-trl-quick"}  # fmt: skip
RATIOS = {"distily_over_trl_wall_time": "wall_seconds", "distily_over_trl_process_peak": "process_peak_bytes"}
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
    parser.add_argument("--vocab", type=int, help="pad both models' vocabulary to this many tokens (see above)")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "instruct"), help="the experiment's, shared")
    parser.add_argument("--quick", action="store_true", help="a smoke run: " + json.dumps(QUICK))
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker_spec", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.quick:
        vars(options).update(QUICK)
        keep_measured_results()
    if options.runs < 1 or options.steps < 1:
        parser.error(f"--runs {options.runs} and --steps {options.steps} must be at least 1")
    if options.vocab is not None and options.vocab < 2**16:
        parser.error(f"--vocab {options.vocab}: expected a real vocabulary's size (at least 65536), e.g. 151936")
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
    if options.vocab:
        teacher_dir, student_dir = (padded_model(model_dir, options.vocab) for model_dir in (teacher_dir, student_dir))
    return {
        "options": vars(options), "teacher": str(teacher_dir), "student": str(student_dir), "responses": responses,
        "heldout": splits["heldout"], "max_new_tokens": args.max_letters + 2,
    }  # fmt: skip


def padded_model(model_dir: Path, vocab: int) -> Path:
    """A copy of the model in ``model_dir`` (and its tokenizer) with its tied embeddings padded to ``vocab`` rows
    (initialised as the model initialises its weights), beside it; kept when it is there."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    padded = model_dir.parent / f"vocab-{vocab}" / model_dir.name
    if not (padded / "model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        torch.manual_seed(0)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        model.save_pretrained(padded)
        PreTrainedTokenizerFast.from_pretrained(model_dir).save_pretrained(padded)
    return padded


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
        learning_rate=options["lr"], lr_scheduler_type="constant", warmup_steps=0, bf16=False,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        lmbda=options["lmbda"], beta=options["beta"], temperature=1.0, max_new_tokens=spec["max_new_tokens"],
        max_length=instruct.max_length(experiment_args(argparse.Namespace(**options))), seed=spec["seed"],
        logging_steps=max(options["steps"] // 10, 1), save_strategy="no", report_to="none",
        disable_tqdm=True,
    )  # fmt: skip
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args,
                         train_dataset=datasets.load_dataset("json", data_files=spec["responses"], split="train"),
                         processing_class=PreTrainedTokenizerFast.from_pretrained(spec["teacher"]))  # fmt: skip
    trainer.train()
    trainer.save_model(output_dir)


TRAIN = {"distily": train_distily, "trl": train_trl}


def measure(trainer: str, spec: dict) -> dict:
    """One run of ``trainer`` in this (fresh) process: wall time to the trained student, the process's peak
    memory, held-out exact match (not at a padded ``--vocab``)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    output_dir = str(Path(spec["options"]["work_dir"]) / "on-policy-trl" / f"{trainer}-{time.time_ns()}")
    torch.manual_seed(spec["seed"])
    started = time.perf_counter()
    TRAIN[trainer](spec, output_dir)
    measured = {"wall_seconds": time.perf_counter() - started, "process_peak_bytes": process_peak_bytes()}
    if spec["options"]["vocab"]:
        return measured
    student = AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(spec["teacher"])
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32).eval()
    heldout = [tuple(pair) for pair in spec["heldout"]]
    return {**measured, **instruct.heldout_scores(student, tokenizer, heldout, spec["max_new_tokens"], teacher)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians, ratios and goals; the exact-match figures where the runs measured it (not at a padded vocabulary)."""
    scored = "exact_match" in runs["distily"][0]
    keys = ("wall_seconds", "process_peak_bytes") + (("exact_match", "kl_to_teacher") if scored else ())
    median = {name: medians(trainer_runs, keys) for name, trainer_runs in runs.items()}
    ratios = {name: median["distily"][key] / median["trl"][key] for name, key in RATIOS.items()}
    goals = {name: (ratios[name] >= bound if sense == ">=" else ratios[name] <= bound)
             for name, (sense, bound) in GOALS.items()}  # fmt: skip
    summary = {"medians": median, "ratios": ratios, "goals": goals}
    if not scored:
        return summary
    summary["spread"] = {name: {"exact_match_stdev": statistics.pstdev(run["exact_match"] for run in trainer_runs),
                                "exact_match_range": [min(r["exact_match"] for r in trainer_runs),
                                                      max(r["exact_match"] for r in trainer_runs)]}
                         for name, trainer_runs in runs.items()}  # fmt: skip
    paired = [ours["exact_match"] - theirs["exact_match"] for ours, theirs in zip(runs["distily"], runs["trl"])]
    summary["paired_differences"] = paired
    ratios.update({
        "distily_minus_trl_exact_match_points": median["distily"]["exact_match"] - median["trl"]["exact_match"],
        "paired_distily_minus_trl_exact_match_points_mean": statistics.mean(paired),
    })
    if len(paired) > 1:
        standard_error = statistics.stdev(paired) / len(paired) ** 0.5
        ratios["paired_distily_minus_trl_exact_match_points_standard_error"] = standard_error
        goals["exact_match_within_noise_or_better"] = statistics.mean(paired) >= -2 * standard_error
    return summary


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
    scored = "exact_match" in runs["distily"][0]
    rows = [("trainer", "wall s", "process peak MiB") + (("exact match %", "KL to teacher") if scored else ())]
    for name, median in summary["medians"].items():
        scores = (f"{median['exact_match']:.1f}", f"{median['kl_to_teacher']:.3f}") if scored else ()
        rows.append((name, f"{median['wall_seconds']:.1f}", f"{median['process_peak_bytes'] / 2**20:.0f}", *scores))
    print(describe(machine()))
    print(table(rows))
    for name, value in summary["ratios"].items():
        print(f"{name} = {value:.3f}")
    print("goals met:", summary["goals"])
    name = f"on_policy_trl_vocab{options.vocab}" if options.vocab else "on_policy_trl"
    path = write_results(name, {"settings": vars(options), "runs": runs, **summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
