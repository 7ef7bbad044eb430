"""Do distilled students beat plain training where distillation is used, with a teacher that knows more than the
students' data? Measured on WikiText-2.

    python experiments/transfer_set.py [--data ../shared/data/wikitext-2] [--work_dir runs/transfer-set]

1. Splits, by article (an article is in one split only): the teacher's text is ``valid.txt`` and the
   first 80% of ``test.txt`` (cut at the first article that starts past 80% of its characters); the
   held-out set is the rest of ``test.txt``, seen by nobody (not the tokenizer, not the teacher, no
   student). The transfer sets are articles of the teacher's training text (its own 2% held-out articles
   left out), drawn in a seeded random order until they hold as near 10% (and, a second point, 30%) of
   the teacher text's characters as whole articles can; the 10% set is part of the 30% set.
2. A byte-level BPE tokenizer (4096 tokens) and a Llama-architecture teacher (4 layers, width 192) are
   trained on the teacher's text, 1000 steps of 16 x 128 tokens at learning rate 1e-3.
3. Teacher-sampled text: ``distily generate`` from the teacher, as many sequences of 128 tokens as the
   10% transfer set has blocks (plain sampling: temperature 1, no top-p).
4. Students of 2 layers, from scratch and initialised from the teacher, learn from the 10% transfer set:
   cross-entropy on its labels (the baseline), the teacher's logits (forward KL), logits and hidden
   states, logits and labels (Hinton et al.'s mix), logits on the transfer set plus the sampled text,
   and the logit student as a ternary (BitNet b1.58) twin. On the 30% set: labels and logits, from
   scratch. Every student of a transfer set trains the same steps (``--student_steps``: 320 on the 10%
   set, 960 on the 30%: three times the text takes about three times the steps to overfit) and is
   evaluated on the held-out set every ``--eval_every`` steps (distily's ``eval_datasets``): the same
   budgets for all. The students are a sweep (``WORK_DIR/students.yaml``), so an interrupted experiment
   resumes.
5. The baseline's reported point is its best checkpoint (early stopping favours the baseline), chosen on a
   validation set distinct from the held-out test set: the teacher's own held-out articles, which no model
   trained on. Every student is compared with it there and at every later budget, on the test set.

The students read the transfer set as its 128-token blocks (framed as the teacher's text was, articles
separated by end-of-text), so distily's own held-out split of each run takes one block, not an article.
Writes the tables and curves to ``docs/results/transfer_set.{md,png}`` and every number to
``benchmarks/results/transfer_set.json``.
"""

import argparse
import dataclasses
import itertools
import json
import random
from functools import partial
from pathlib import Path
from typing import Optional

import datasets
import matplotlib
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from distily.config import parse_generate_config
from distily.data.batches import collate
from distily.data.framing import Framing
from distily.data.packing import tokenize_and_pack
from distily.evaluation.heldout import heldout_metrics
from distily.metrics import Evaluation
from distily.recording.generate import run_generation
from distily.training.checkpoints import TRAINER_STATE_FILE
from distily.training.run_dir import RunDir

from wikitext import (
    DEFAULT_DATA,
    REPO,
    STUDENT_INITS,
    add_model_arguments,
    command_line,
    draw_perplexity_curves,
    heldout_blocks,
    markdown_head,
    markdown_row,
    read_articles,
    report_opening,
    run_students,
    save_figure,
    save_results,
    student_keys,
    teacher_data,
    teacher_training,
    train_teacher,
    write_sweep,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

INITS = {"random": "from scratch", "teacher": "teacher-initialised"}  # the --student_inits, as the report says them
BASELINE, SAMPLED, LOGITS, TERNARY = "hard-labels", "logits+sampled", "logits", "logits-bitnet"
# (name, what the student learns from, config keys over the common ones)
SIGNALS = [
    (BASELINE, "next-token cross-entropy on the transfer set (baseline)",
     {"logits_weight": 0.0, "hard_label_weight": 1.0}),
    (LOGITS, "teacher logits (forward KL)", {}),
    ("logits+hidden-states", "teacher logits + hidden states (MSE after layer norm)", {"hidden_states_weight": 1.0}),
    ("logits+labels", "Hinton et al. (2015): 0.5 x forward KL at temperature 2 (scaled by 4) + 0.5 x cross-entropy",
     {"logits_weight": 0.5, "hard_label_weight": 0.5, "logits_temperature": 2.0}),
    (SAMPLED, "teacher logits on the transfer set plus as much teacher-sampled text", {}),
    (TERNARY, "teacher logits, ternary (BitNet b1.58) student", {"student_as_bitnet": True}),
]  # fmt: skip
SECOND_POINT_SIGNALS, SECOND_POINT_INITS = (BASELINE, LOGITS), ("random",)  # on the larger transfer sets
FULL_PRECISION_SIGNALS = [name for name, _, _ in SIGNALS if name not in (BASELINE, TERNARY)]  # "the best signal"
UNSEEN = "unseen"  # the held-out test set's name among each run's eval sets
VALIDATION = "validation"  # the set the baseline's best checkpoint is chosen on: the teacher's own held-out articles
ONE_BLOCK = 1e-3  # eval_fraction: distily's own held-out split of a transfer set is ceil(0.001 x blocks) blocks
CURVE_METRICS = ("perplexity", "kl_to_teacher", "top1_agreement")
# the goals of issue #19: each ratio at most this, at the baseline's best budget and every later one
GOALS = {"logits": 0.85, "best_signal": 0.8, "ternary": 1.25, "sampled_text": 1.0}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="directory with valid.txt and test.txt")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "transfer-set"),
                        help="splits, tokenizer, teacher, samples, students")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "transfer_set.md"),
                        help="the tables (markdown), the curves beside it as .png")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "transfer_set.json"),
                        help="every number")
    add_model_arguments(parser, teacher_steps=1000)
    parser.add_argument("--teacher_learning_rate", type=float, default=1e-3)
    parser.add_argument("--heldout_fraction", type=float, default=0.2,
                        help="the tail of test.txt held out from everyone")
    parser.add_argument("--transfer_fractions", type=float, nargs="+", default=[0.1, 0.3],
                        help="transfer sets, as fractions of the teacher's text, nested: the first is learned from "
                        "by every signal, the others by labels and logits from scratch")
    parser.add_argument("--student_inits", nargs="+", choices=list(INITS), default=list(INITS))
    parser.add_argument("--student_steps", type=int, nargs="+", default=[320, 960],
                        help="steps of every student, one value for all transfer sets or one per --transfer_fractions "
                        "(in its order): a larger set needs more steps before the baseline overfits it")
    parser.add_argument("--eval_every", type=int, default=40,
                        help="steps between held-out evaluations (divides --student_steps)")
    parser.add_argument("--eval_blocks", type=int, default=128,
                        help="held-out test and validation blocks evaluated (a sample drawn with a fixed seed)")
    args = parser.parse_args(argv)
    if not 0 < args.heldout_fraction < 1:
        parser.error(f"--heldout_fraction {args.heldout_fraction} must be between 0 and 1")
    if not all(0 < fraction < 1 for fraction in args.transfer_fractions):
        parser.error(f"--transfer_fractions {args.transfer_fractions} must be between 0 and 1")
    if len(args.student_steps) not in (1, len(args.transfer_fractions)):
        parser.error(f"--student_steps {args.student_steps}: expected one value, or one per --transfer_fractions "
                     f"{args.transfer_fractions}")
    if args.eval_every < 1 or any(steps % args.eval_every for steps in args.student_steps):
        parser.error(f"--eval_every {args.eval_every} must be a positive divisor of --student_steps "
                     f"{args.student_steps}")
    if args.eval_blocks < 1:
        parser.error(f"--eval_blocks {args.eval_blocks} must be a positive number of blocks")
    steps = dict(zip(args.transfer_fractions, itertools.cycle(args.student_steps)))
    args.transfer_fractions = sorted(steps)
    args.steps_by_set = {set_name(fraction): steps[fraction] for fraction in args.transfer_fractions}
    args.student_steps = args.steps_by_set[set_name(args.transfer_fractions[0])]  # the common keys' max_steps
    return args  # fmt: skip


def set_name(fraction: float) -> str:
    return f"{round(100 * fraction)}pct"


def title(article: str) -> str:
    return article.split("\n", 1)[0].strip()


def split_articles(data: Path, heldout_fraction: float) -> tuple[list[str], list[str]]:
    """(the teacher's articles: valid.txt's and the head of test.txt's; the held-out articles: the tail of
    test.txt, from the first article that starts past ``1 - heldout_fraction`` of its characters)."""
    test = read_articles(data / "test.txt")
    start, cut = 0, len(test)
    for index, article in enumerate(test):
        if start >= (1 - heldout_fraction) * sum(map(len, test)):
            cut = index
            break
        start += len(article)
    return read_articles(data / "valid.txt") + test[:cut], test[cut:]


def draw_transfer_sets(candidates: list[str], total_characters: int, fractions: list[float]) -> list[list[str]]:
    """For each fraction (ascending), the first articles of ``candidates`` in a seeded random order whose
    characters come closest to that fraction of ``total_characters`` (at least one article): each set is
    the start of the next."""
    order = random.Random(0).sample(candidates, len(candidates))
    held = list(itertools.accumulate(map(len, order)))  # characters of the first 1, 2, ... articles
    counts = [1 + min(range(len(held)), key=lambda index: abs(held[index] - fraction * total_characters))
              for fraction in fractions]  # fmt: skip
    return [order[:count] for count in counts]


def stream_blocks(documents: datasets.Dataset, tokenizer, args) -> datasets.Dataset:
    """``documents`` (text or token ids) as the teacher's training text was framed: end-of-text between
    documents, cut into full blocks."""
    framing = Framing.for_tokenizer("stream", tokenizer, args.seq_length,
                                    pretokenized="input_ids" in documents.column_names)
    return tokenize_and_pack(documents, tokenizer, framing, "text", str(Path(args.work_dir) / "cache"))


def write_blocks(blocks: datasets.Dataset, path: Path) -> Path:
    """Blocks as a JSON-lines file of ``input_ids`` rows: distily reads them as they are, one block each."""
    blocks.select_columns(["input_ids"]).to_json(str(path), lines=True)
    return path


def sample_teacher(args, teacher_dir: Path, count: int) -> Path:
    """``count`` sequences of ``--seq_length`` tokens sampled from the teacher by ``distily generate``
    (kept when written before)."""
    output = Path(args.work_dir) / "data" / "samples.jsonl"
    if not output.exists():
        run_generation(parse_generate_config(
            teacher_model_name_or_path=str(teacher_dir), generate_output=str(output), generate_num_samples=count,
            generate_length=args.seq_length, per_device_eval_batch_size=64, seed=0,
        ))  # fmt: skip
    return output


def prepare_data(args) -> dict:
    """The splits, the teacher (trained here) and its samples; the files the students read, and what each
    split holds."""
    data_dir = Path(args.work_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    teacher_articles, heldout = split_articles(Path(args.data), args.heldout_fraction)
    files = {"teacher": data_dir / "teacher.txt", "heldout": data_dir / "heldout.txt"}
    for name, articles in (("teacher", teacher_articles), ("heldout", heldout)):
        files[name].write_text("".join(articles), encoding="utf-8")  # the articles as they were, one after another
    teacher_dir = train_teacher(args, files["teacher"], args.teacher_learning_rate)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    teacher_eval, candidates = teacher_heldout(args, files, teacher_articles, tokenizer)
    transfer_sets = draw_transfer_sets(candidates, sum(map(len, teacher_articles)), args.transfer_fractions)

    def summary(articles: list[str]) -> dict:
        tokens = sum(len(ids) for ids in tokenizer(articles)["input_ids"])
        return {"articles": len(articles), "characters": sum(map(len, articles)), "tokens": tokens,
                "titles": [title(article) for article in articles]}  # fmt: skip

    splits = {"teacher": summary(teacher_articles), "teacher_own_heldout": summary(sorted(teacher_eval)),
              "heldout": summary(heldout)}  # fmt: skip
    blocks = {}
    for fraction, articles in zip(args.transfer_fractions, transfer_sets):
        name = set_name(fraction)
        blocks[name] = stream_blocks(datasets.Dataset.from_dict({"text": articles}), tokenizer, args)
        files[name] = write_blocks(blocks[name], data_dir / f"transfer-{name}.jsonl")
        splits[name] = {**summary(articles), "blocks": len(blocks[name])}
    first = set_name(args.transfer_fractions[0])
    samples = datasets.Dataset.from_json(str(sample_teacher(args, teacher_dir, len(blocks[first]))))
    sampled_blocks = stream_blocks(samples.select_columns(["input_ids"]), tokenizer, args).cast(blocks[first].features)
    files[SAMPLED] = write_blocks(datasets.concatenate_datasets([blocks[first], sampled_blocks]),
                                  data_dir / f"transfer-{first}+samples.jsonl")  # fmt: skip
    splits["samples"] = {"sequences": len(samples), "tokens": sum(map(len, samples["input_ids"])),
                         "blocks": len(sampled_blocks)}  # fmt: skip
    return {"teacher_dir": teacher_dir, "files": files, "splits": splits}


def teacher_heldout(args, files: dict, teacher_articles: list[str], tokenizer) -> tuple[set[str], list[str]]:
    """(the teacher's own held-out articles, written to ``files["validation"]``: no model trains on them; the
    teacher's other articles, from which the transfer sets are drawn)."""
    teacher_eval = set(teacher_data(args, files["teacher"], tokenizer).eval_documents["text"])
    files["validation"] = Path(args.work_dir) / "data" / "validation.txt"
    files["validation"].write_text("".join(a for a in teacher_articles if a in teacher_eval), encoding="utf-8")
    return teacher_eval, [article for article in teacher_articles if article not in teacher_eval]


def groups(args) -> list[tuple[str, str, list[str]]]:
    """(transfer set, starting point, signals) of every group of students compared with one baseline."""
    first, *others = [set_name(fraction) for fraction in args.transfer_fractions]
    found = [(first, init, [name for name, _, _ in SIGNALS]) for init in args.student_inits]
    return found + [(name, init, list(SECOND_POINT_SIGNALS)) for name in others for init in args.student_inits
                    if init in SECOND_POINT_INITS]  # fmt: skip


def heldout_every(files: dict, max_samples: Optional[int], args) -> dict:
    """Sweep keys: the held-out test text and the validation text (each a sample of ``max_samples`` blocks; None:
    all) as the eval sets ``UNSEEN`` and ``VALIDATION``, evaluated every ``args.eval_every`` steps, where a
    checkpoint is written too."""
    sets = {UNSEEN: files["heldout"], VALIDATION: files["validation"]}
    return {
        "eval_datasets": {name: {"path": str(path), "max_samples": max_samples} for name, path in sets.items()},
        "eval_strategy": "steps",
        "eval_steps": args.eval_every,
        "per_device_eval_batch_size": args.batch_size,
        "save_steps": args.eval_every,
        "save_total_limit": 1,  # the last checkpoint's trainer state holds every evaluation
        "logging_steps": args.eval_every,
    }


def student_sweep(args, teacher_dir: Path, files: dict):
    """Every student as a run of one sweep: equal steps within a transfer set, the held-out set evaluated every
    --eval_every steps."""
    base = {
        **student_keys(args, teacher_dir),
        "eval_fraction": ONE_BLOCK,  # the run's own held-out check; the comparison is on the held-out articles
        **heldout_every(files, args.eval_blocks, args),
    }
    overrides = {name: keys for name, _, keys in SIGNALS}
    runs = [
        {"name": f"{init}-{transfer}-{signal}", **STUDENT_INITS[init][1], **overrides[signal],
         "dataset_name": str(files[SAMPLED if signal == SAMPLED else transfer]),
         **({} if args.steps_by_set[transfer] == args.student_steps else {"max_steps": args.steps_by_set[transfer]})}
        for transfer, init, signals in groups(args) for signal in signals
    ]  # fmt: skip
    spec = {"base": base, "runs": runs, "metric": f"student.after_{UNSEEN}_perplexity", "metric_goal": "min"}
    return write_sweep(args.work_dir, "students", spec)


def curve_point(step: int, tokens_per_step: int, evaluation: Evaluation, metrics: tuple[str, ...]) -> dict:
    """The test set's ``metrics`` at ``step``, and the validation set's as ``validation_METRIC``."""
    return {"step": step, "tokens": step * tokens_per_step,
            **{metric: evaluation.get(metric, UNSEEN) for metric in metrics},
            **{f"{VALIDATION}_{metric}": evaluation.get(metric, VALIDATION) for metric in metrics}}  # fmt: skip


def logged_evaluation(entry: dict) -> Evaluation:
    """An evaluation as the Trainer logs it (each metric prefixed ``eval_``)."""
    return Evaluation({key.removeprefix("eval_"): value for key, value in entry.items() if key.startswith("eval_")})


def student_results(run_dir: Path, tokens_per_step: int, metrics: tuple[str, ...] = CURVE_METRICS) -> dict:
    """A finished student: its held-out curve of ``metrics`` (before training, then each evaluation, from the
    trainer state of its last checkpoint), size, time and the check that the held-out set shares no span with
    its data."""
    run = RunDir(run_dir)
    found = run.read_metrics()
    state = json.loads((run.checkpoints()[0] / TRAINER_STATE_FILE).read_text())
    evaluations = [entry for entry in state["log_history"] if f"eval_{UNSEEN}_perplexity" in entry]
    return {
        "run_dir": str(run_dir),
        "parameters": found.student.parameters,
        "train_seconds": found.train.wall_seconds,
        "tokens_seen": found.train.tokens_seen,
        "heldout_overlap": dataclasses.asdict(found.eval_overlap[UNSEEN]) if UNSEEN in found.eval_overlap else None,
        "curve": [curve_point(0, tokens_per_step, found.student.before, metrics)]
        + [curve_point(entry["step"], tokens_per_step, logged_evaluation(entry), metrics) for entry in evaluations],
    }


def ratios(curve: dict, reference: dict, metric: str = "perplexity") -> dict[str, float]:
    """``curve``'s ``metric`` over ``reference``'s at each of ``reference``'s steps (keys: steps as text)."""
    return {str(step): curve[step][metric] / value for step, value in reference.items()}


def best_checkpoint(curve: list[dict], metric: str) -> tuple[dict, list[int], bool]:
    """The trained point of a baseline's ``curve`` lowest in the validation set's ``metric`` (its best checkpoint,
    chosen on a set the reported test ``metric`` is not measured on), the steps from it on, and whether it
    overfits (its best is before its last budget)."""
    trained = [point for point in curve if point["step"] > 0]
    best = min(trained, key=lambda point: point[f"{VALIDATION}_{metric}"])
    later = [point["step"] for point in trained if point["step"] >= best["step"]]
    return best, later, best["step"] < trained[-1]["step"]


def goal(ratios_by_step: dict[str, float], limit: float) -> dict:
    """Whether a ratio stays at most ``limit`` at every budget, and its worst value."""
    worst = max(ratios_by_step.values())
    return {"limit": limit, "worst": worst, "met": worst <= limit}


def comparison(students: dict) -> dict:
    """One group's goals: the baseline is the cross-entropy student's best checkpoint on the validation set; every
    student is compared with it on the test set there and at every later budget (keys: steps)."""
    curves = {name: {point["step"]: point for point in row["curve"]} for name, row in students.items()}
    best, later, overfits = best_checkpoint(students[BASELINE]["curve"], "perplexity")
    labels_trained = {step: point["perplexity"] for step, point in curves[BASELINE].items() if step > 0}

    def against(name: str) -> dict:  # name's perplexity at each later budget
        return {step: curves[name][step]["perplexity"] for step in later}

    over_best = {name: ratios(curves[name], dict.fromkeys(later, best["perplexity"]))
                 for name in curves if name != BASELINE}
    signals = [name for name in FULL_PRECISION_SIGNALS if name in curves]
    best_signal = {step: min(((over_best[name][step], name) for name in signals)) for step in map(str, later)}
    found = {
        "baseline_best_step": best["step"],
        "baseline_best_tokens": best["tokens"],
        "baseline_best_perplexity": best["perplexity"],
        "baseline_overfits": overfits,  # its held-out perplexity rose after its best
        "over_baseline_best": over_best,
        "best_signal_over_baseline_best": {step: {"signal": name, "ratio": ratio}
                                           for step, (ratio, name) in best_signal.items()},
        "logits_over_labels_same_budget": ratios(curves[LOGITS], labels_trained),
    }  # fmt: skip
    goals = {
        "logits_over_baseline_best": goal(over_best[LOGITS], GOALS["logits"]),
        "best_signal_over_baseline_best": goal({step: ratio for step, (ratio, _) in best_signal.items()},
                                               GOALS["best_signal"]),
    }  # fmt: skip
    if TERNARY in curves:
        found["ternary_over_full_precision"] = ratios(curves[TERNARY], against(LOGITS))
        goals["ternary_over_full_precision"] = goal(found["ternary_over_full_precision"], GOALS["ternary"])
    if SAMPLED in curves:
        found["sampled_text_over_transfer_only"] = ratios(curves[SAMPLED], against(LOGITS))
        goals["sampled_text_over_transfer_only"] = goal(found["sampled_text_over_transfer_only"], GOALS["sampled_text"])
    return {**found, "goals": goals}


def evaluate(args, prepared: dict, sweep) -> dict:
    """The teacher on the held-out blocks, every student's curve, and each group's comparison."""
    teacher_dir = prepared["teacher_dir"]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    blocks = heldout_blocks(prepared["files"]["heldout"], tokenizer, args.seq_length, Path(args.work_dir) / "cache",
                            args.eval_blocks)  # fmt: skip
    collate_fn = partial(collate, pad_token_id=tokenizer.eos_token_id)
    results = {
        "splits": prepared["splits"],
        "heldout_tokens": int(sum(len(block) for block in blocks["input_ids"])),
        "teacher": {"parameters": teacher.num_parameters(), **teacher_training(teacher_dir),
                    **heldout_metrics(teacher, blocks, collate_fn, desc="teacher", tokenizer=tokenizer)},  # fmt: skip
        "groups": {},
    }
    run_dirs = {run.name.rsplit("-", 1)[0]: sweep.run_dir(run) for run in sweep.runs}
    descriptions = {name: what for name, what, _ in SIGNALS}
    for transfer, init, signals in groups(args):
        students = {
            signal: {"signal": descriptions[signal],
                     **student_results(run_dirs[f"{init}-{transfer}-{signal}"], args.batch_size * args.seq_length)}
            for signal in signals
        }  # fmt: skip
        results["groups"][f"{init}-{transfer}"] = {
            "transfer_set": transfer, "student_init": init, "students": students, **comparison(students)
        }  # fmt: skip
    return results


def write_report(args, results: dict, command: str) -> None:
    teacher, splits = results["teacher"], results["splits"]
    *head, teacher_line = report_opening("Distillation from a teacher that knows more: transfer sets of WikiText-2",
                                         command, results["device"], args, teacher)  # fmt: skip
    lines = [
        *head,
        f"{teacher_line}, {args.teacher_steps} steps of {args.batch_size} x "
        f"{args.seq_length} tokens at learning rate {args.teacher_learning_rate:g} on `valid.txt` and the head of "
        f"`test.txt` ({splits['teacher']['articles']} articles, {splits['teacher']['tokens']:,} tokens), "
        f"{teacher['train_seconds']:.0f} s; held-out perplexity {teacher['perplexity']:.1f}. Held out from everyone: "
        f"the last {splits['heldout']['articles']} articles of `test.txt` ({splits['heldout']['tokens']:,} tokens), "
        f"of which {results['heldout_tokens']:,} tokens (a fixed sample of blocks) are the test set. "
        f"Students: {args.student_layers} layers, "
        + ", ".join(f"{steps} steps on the {name} set" for name, steps in args.steps_by_set.items())
        + f", each of {args.batch_size} x {args.seq_length} tokens, evaluated every {args.eval_every} "
        "steps; KL is KL(teacher || student) per token, in nats.",
        "",
        "Transfer sets (articles of the teacher's training text): "
        + "; ".join(f"{name}: {splits[name]['articles']} articles, {splits[name]['tokens']:,} tokens"
                    for name in map(set_name, args.transfer_fractions))  # fmt: skip
        + f". Teacher-sampled text: {splits['samples']['sequences']} sequences, "
        f"{splits['samples']['tokens']:,} tokens.",
    ]
    for name, group in results["groups"].items():
        lines += group_lines(group, splits[group["transfer_set"]]["tokens"])
    lines += ["", f"![held-out perplexity against training tokens]({Path(args.report).with_suffix('.png').name})", ""]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    plot(results, Path(args.report).with_suffix(".png"))


def group_lines(group: dict, transfer_tokens: int) -> list[str]:
    """One group's table (each student at the baseline's best budget and at the last), its budget table and
    its goals."""
    students, best_step = group["students"], group["baseline_best_step"]
    curves = {name: {point["step"]: point for point in row["curve"]} for name, row in students.items()}
    last = max(curves[BASELINE])
    best_perplexity = group["baseline_best_perplexity"]
    lines = [
        "",
        f"## {group['transfer_set']} transfer set ({transfer_tokens:,} tokens), "
        f"students {INITS[group['student_init']]}",
        "",
        f"Baseline: the cross-entropy student's checkpoint of lowest validation perplexity (the teacher's own "
        f"held-out articles), step {best_step} ({group['baseline_best_tokens']:,} tokens, "
        f"{group['baseline_best_tokens'] / transfer_tokens:.1f} passes), test perplexity {best_perplexity:.1f}"
        + ("; its validation perplexity rose after it." if group["baseline_overfits"]
           else "; the last budget: it had not begun to overfit, so a longer run may lower the baseline."),  # fmt: skip
        "",
        *markdown_head([
            "student", "learns from", f"perplexity at step {best_step}", "vs. baseline", f"perplexity at step {last}",
            "vs. baseline", "lowest (step)", f"KL to teacher at {best_step}", f"top-1 agreement at {best_step}",
            "train time",
        ]),
    ]  # fmt: skip
    for name, row in students.items():
        at_best, at_last = curves[name][best_step], curves[name][last]
        lowest = min(row["curve"][1:], key=lambda point: point["perplexity"])
        lines.append(markdown_row([
            name, row["signal"], f"{at_best['perplexity']:.1f}", f"{at_best['perplexity'] / best_perplexity:.2f}x",
            f"{at_last['perplexity']:.1f}", f"{at_last['perplexity'] / best_perplexity:.2f}x",
            f"{lowest['perplexity']:.1f} ({lowest['step']})", f"{at_best['kl_to_teacher']:.3f}",
            f"{at_best['top1_agreement']:.3f}", f"{row['train_seconds']:.0f} s",
        ]))  # fmt: skip
    lines += ["", *markdown_head(["steps", "tokens", *students])]
    for step in sorted(curves[BASELINE]):
        lines.append(markdown_row([step, f"{curves[BASELINE][step]['tokens']:,}",
                                   *(f"{curves[name][step]['perplexity']:.1f}" for name in students)]))  # fmt: skip
    lines += [""] + goal_lines(group)
    return lines


def goal_lines(group: dict) -> list[str]:
    """The goals of issue #19, each with its ratios from the baseline's best budget on."""
    goals = group["goals"]
    best = group["best_signal_over_baseline_best"]

    def line(what: str, key: str, ratios_by_step: dict, note: str = "") -> str:
        values, found = list(ratios_by_step.values()), goals[key]
        first = ratios_by_step[min(ratios_by_step, key=int)]  # keys: steps as text, in any order (JSON sorts them)
        return (f"- {what}: {first:.2f}x at the baseline's best budget, {min(values):.2f}x to {max(values):.2f}x "
                f"from there on{note} (goal: at most {found['limit']}x; "
                f"{'met' if found['met'] else 'missed'}).")  # fmt: skip

    signals = ", ".join(sorted({at["signal"] for at in best.values()}))
    lines = [
        line("Logit-distilled student / baseline", "logits_over_baseline_best", group["over_baseline_best"][LOGITS]),
        line("Best signal / baseline", "best_signal_over_baseline_best",
             {step: at["ratio"] for step, at in best.items()}, f", by {signals}"),
    ]  # fmt: skip
    if "ternary_over_full_precision" in goals:
        lines.append(line("Ternary / full-precision logit student", "ternary_over_full_precision",
                          group["ternary_over_full_precision"]))  # fmt: skip
    if "sampled_text_over_transfer_only" in goals:
        lines.append(line("Logits with teacher-sampled text / logits on the transfer set only",
                          "sampled_text_over_transfer_only", group["sampled_text_over_transfer_only"]))  # fmt: skip
    return lines


def plot(results: dict, path: Path) -> None:
    """Held-out perplexity against training tokens, one panel per group, the baseline's best budget marked."""
    found = results["groups"]
    figure, axes_row = plt.subplots(1, len(found), figsize=(6 * len(found), 4.5), squeeze=False)
    for axes, (name, group) in zip(axes_row[0], found.items()):
        curves = {signal: [(point["tokens"], point["perplexity"]) for point in row["curve"]]
                  for signal, row in group["students"].items()}  # fmt: skip
        draw_perplexity_curves(axes, curves, results["teacher"]["perplexity"], log_tokens=False, teacher_color="black")
        axes.axvline(group["baseline_best_tokens"], color="gray", linestyle=":")
        axes.set_yscale("log")  # from an untrained student's thousands to the teacher's tens
        axes.set_title(f"{group['transfer_set']} transfer set, {INITS[group['student_init']]}")
    save_figure(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("transfer_set.py", argv)
    prepared = prepare_data(args)
    sweep = student_sweep(args, prepared["teacher_dir"], prepared["files"])
    run_students(sweep)
    results = evaluate(args, prepared, sweep)
    return save_results(args, results, command, write_report)


if __name__ == "__main__":
    main()
