"""Which distillation signal makes the best student at an equal token budget? Measured on WikiText-2.

    python experiments/compare_signals.py [--data ../shared/data/wikitext-2] [--work_dir runs/compare-signals]

1. A byte-level BPE tokenizer (4096 tokens) and a small Llama-architecture teacher (4 layers, width
   192, 2.7M parameters) are trained on ``valid.txt`` (300k tokens), 800 steps of 16 x 128 tokens.
2. Students of one shape (the teacher's config with 2 of its 4 layers, initialised from teacher
   layers 0 and 3, its embeddings, final norm and LM head) are trained on ``valid.txt`` with the same
   number of steps, batch and sequence length, so the same tokens, by:
   next-token cross-entropy on the data only (the baseline, no teacher); the teacher's logits
   (forward KL); the teacher's hidden states (MSE after layer norm, every student block with the
   teacher block at the same relative depth); logits and hidden states; and the logit-distilled
   student as a ternary (BitNet b1.58) student.
   With ``--student_init random_blocks`` the students' blocks start random instead (embeddings, final
   norm and LM head still the teacher's), so the signals alone have to train them; with ``--student_init
   random`` nothing is copied: the students learn from scratch, the textbook distillation setting.
   The students are a sweep (``WORK_DIR/students-INIT.yaml``): an interrupted comparison resumes.
3. The token-budget curve: the cross-entropy and the logit-distilled students again at each of
   ``--budget_steps`` (a second sweep, ``WORK_DIR/budgets-INIT.yaml``), so the table shows where
   distillation's advantage over the labels grows and where it fades.
4. Teacher and students are evaluated on blocks of ``test.txt``: perplexity, KL to the teacher and
   top-1 agreement with it, per token.

Writes the table and a plot to ``docs/results/compare_signals.{md,png}`` and every number to
``benchmarks/results/compare_signals.json``. Defaults take about half an hour on 2 idle CPU cores.
"""

import argparse
from functools import partial
from pathlib import Path

import matplotlib
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from distily.data.batches import collate
from distily.evaluation.heldout import heldout_metrics
from distily.models.student import load_student
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
    report_opening,
    run_students,
    save_figure,
    save_results,
    student_keys,
    teacher_training,
    train_teacher,
    write_sweep,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TEACHER_LEARNING_RATE = 3e-3  # the teacher of the measured tables in docs/results.md
# (name, what the student learns from, config keys over the common ones)
VARIANTS = [
    ("hard-labels", "next-token cross-entropy on the data (baseline)",
     {"logits_weight": 0.0, "hard_label_weight": 1.0}),
    ("logits", "teacher logits (forward KL)", {}),
    ("hidden-states", "teacher hidden states (MSE)", {"logits_weight": 0.0, "hidden_states_weight": 1.0}),
    ("logits+hidden-states", "teacher logits + hidden states", {"hidden_states_weight": 1.0}),
    ("logits-bitnet", "teacher logits, ternary (BitNet b1.58) student", {"student_as_bitnet": True}),
]
BUDGET_VARIANTS = ("hard-labels", "logits")  # the pair the token-budget curve compares


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="directory with valid.txt (training) and test.txt (evaluation)")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "compare-signals"),
                        help="tokenizer, teacher, students")
    parser.add_argument("--student_init", choices=list(STUDENT_INITS), default="teacher",
                        help="teacher: the student's blocks, embeddings, final norm and LM head copied from the "
                        "teacher; random_blocks: random blocks, the rest copied; random: nothing copied")
    parser.add_argument("--report", help="the table (markdown), the plot beside it as .png "
                        "(default: docs/results/compare_signals[_INIT].md)")
    parser.add_argument("--json", help="every number (default: benchmarks/results/compare_signals[_INIT].json)")
    add_model_arguments(parser, teacher_steps=800)
    parser.add_argument("--student_steps", type=int, default=300)
    parser.add_argument("--eval_blocks", type=int, default=400, help="test.txt blocks evaluated (all: 0)")
    parser.add_argument("--budget_steps", type=int, nargs="*", default=[50, 100, 200],
                        help="shorter budgets at which the cross-entropy and logit students are also trained "
                        "(none: omit)")
    args = parser.parse_args(argv)
    if any(steps < 1 for steps in args.budget_steps):
        parser.error(f"--budget_steps {args.budget_steps} must be positive step counts")
    args.budget_steps = sorted(set(args.budget_steps) - {args.student_steps})
    name = "compare_signals" + ("" if args.student_init == "teacher" else f"_{args.student_init}")
    args.report = args.report or str(REPO / "docs" / "results" / f"{name}.md")
    args.json = args.json or str(REPO / "benchmarks" / "results" / f"{name}.json")
    return args  # fmt: skip


def student_base(args, teacher_dir: Path) -> dict:
    """The config keys every student shares."""
    return {
        **student_keys(args, teacher_dir),
        **STUDENT_INITS[args.student_init][1],
        "dataset_name": str(Path(args.data) / "valid.txt"),
        "eval_fraction": 0.02,
        "max_eval_samples": 64,  # the run's own held-out check; the comparison itself is on test.txt
        "eval_strategy": "no",
        "save_steps": max(args.student_steps // 4, 1),
        "logging_steps": max(args.student_steps // 10, 1),
    }


def student_sweep(args, teacher_dir: Path):
    """The students as a sweep: one run per variant, equal budgets; and what each learns from."""
    runs = [{"name": name, **overrides} for name, _, overrides in VARIANTS]
    spec = {"base": student_base(args, teacher_dir), "runs": runs}
    sweep = write_sweep(args.work_dir, f"students-{args.student_init}", spec)
    return sweep, {name: what for name, what, _ in VARIANTS}


def budget_sweep(args, teacher_dir: Path):
    """The cross-entropy and logit students at each of --budget_steps, as a sweep."""
    runs = [{"name": name, **overrides} for name, _, overrides in VARIANTS if name in BUDGET_VARIANTS]
    spec = {"base": student_base(args, teacher_dir), "runs": runs, "grid": {"max_steps": args.budget_steps}}
    return write_sweep(args.work_dir, f"budgets-{args.student_init}", spec)


def evaluate(args, teacher_dir: Path, sweep, descriptions: dict, budgets=None) -> dict:
    """Teacher and every finished student (and the budget sweep's, if given) on test.txt blocks."""
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    blocks = heldout_blocks(Path(args.data) / "test.txt", tokenizer, args.seq_length, Path(args.work_dir) / "cache",
                            args.eval_blocks)
    measure = partial(heldout_metrics, dataset=blocks, collate_fn=partial(collate, pad_token_id=tokenizer.eos_token_id),
                      tokenizer=tokenizer)
    results = {
        "teacher": {
            "parameters": teacher.num_parameters(),
            **teacher_training(teacher_dir),
            **measure(teacher, desc="teacher"),
        }
    }
    results["test_tokens"] = int(sum(len(block) for block in blocks["input_ids"]))

    def student_row(run_dir: Path, label: str) -> dict:
        train = RunDir(run_dir).read_metrics().train
        student = load_student(str(run_dir))
        return {
            "parameters": student.num_parameters(),
            "train_seconds": train.wall_seconds,
            "tokens": train.tokens_seen,
            **measure(student, teacher=teacher, desc=label),
        }

    results["students"] = {}
    for run in sweep.runs:
        label = run.name.rsplit("-", 1)[0]
        results["students"][label] = {"signal": descriptions[label], **student_row(sweep.run_dir(run), label)}
    if budgets is not None:
        curve = {name: {args.student_steps: results["students"][name]} for name in BUDGET_VARIANTS}
        for run in budgets.runs:
            name, steps = run.name.split("+max_steps=")[0], run.overrides["max_steps"]
            curve[name][steps] = student_row(budgets.run_dir(run), f"{name}, {steps} steps")
        results["budgets"] = {name: dict(sorted(points.items())) for name, points in curve.items()}
    return results


def _ratio(students: dict, name: str, reference: str):
    if name in students and reference in students:
        return students[name]["perplexity"] / students[reference]["perplexity"]
    return None


def write_report(args, results: dict, command: str) -> None:
    students, teacher = results["students"], results["teacher"]
    *head, teacher_line = report_opening("Distillation signals compared (WikiText-2)", command, results["device"], args,
                                         teacher)  # fmt: skip
    lines = [
        *head,
        f"{teacher_line}, {args.teacher_steps} steps on `valid.txt`. "
        f"Students: {args.student_layers} layers, {STUDENT_INITS[args.student_init][0]}, "
        f"each trained {args.student_steps} "
        f"steps of {args.batch_size} x {args.seq_length} tokens on `valid.txt`. Evaluated on "
        f"{results['test_tokens']:,} tokens of `test.txt`; KL is KL(teacher || student) per token, in nats.",
        "",
        *markdown_head(["model", "learns from", "perplexity", "vs. baseline", "KL to teacher", "top-1 agreement",
                        "train time"]),
        markdown_row(["teacher", "next-token cross-entropy on the data", f"{teacher['perplexity']:.1f}", "", "", "",
                      f"{teacher['train_seconds']:.0f} s"]),
    ]
    for name, row in students.items():
        ratio = _ratio(students, name, "hard-labels")
        lines.append(markdown_row([name, row["signal"], f"{row['perplexity']:.1f}", f"{ratio:.2f}x",
                                   f"{row['kl_to_teacher']:.3f}", f"{row['top1_agreement']:.3f}",
                                   f"{row['train_seconds']:.0f} s"]))  # fmt: skip
    logits_ratio, bitnet_ratio = _ratio(students, "logits", "hard-labels"), _ratio(students, "logits-bitnet", "logits")
    lines += ["", f"- Logit-distilled student vs. cross-entropy baseline: {logits_ratio:.2f}x the perplexity "
              "(goal: at most 0.90x)."]
    lines.append(f"- Ternary vs. full-precision logit-distilled student: {bitnet_ratio:.2f}x the perplexity "
                 "(goal: at most 1.30x).")
    lines += budget_lines(results.get("budgets"))
    lines += ["", f"![perplexity and KL per student]({Path(args.report).with_suffix('.png').name})", ""]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    plot(results, Path(args.report).with_suffix(".png"))


def budget_lines(budgets) -> list[str]:
    """The token-budget table: cross-entropy against logit distillation at each budget."""
    if not budgets:
        return []
    base, distilled = budgets["hard-labels"], budgets["logits"]
    lines = [
        "",
        "Token budget: the cross-entropy and logit-distilled students, the same but for the number of steps.",
        "",
        *markdown_head(["steps", "tokens", "cross-entropy perplexity", "logits perplexity", "logits / cross-entropy",
                        "logits KL to teacher"]),
    ]
    for steps in base:
        ratio = distilled[steps]["perplexity"] / base[steps]["perplexity"]
        lines.append(markdown_row([steps, f"{base[steps]['tokens']:,}", f"{base[steps]['perplexity']:.1f}",
                                   f"{distilled[steps]['perplexity']:.1f}", f"{ratio:.2f}x",
                                   f"{distilled[steps]['kl_to_teacher']:.3f}"]))  # fmt: skip
    return lines


def plot(results: dict, path: Path) -> None:
    names = [name for name, _, _ in VARIANTS if name in results["students"]]  # the table's order
    budgets = results.get("budgets")
    figure, axes_row = plt.subplots(1, 3 if budgets else 2, figsize=(16 if budgets else 11, 4))
    left, right = axes_row[:2]
    perplexities = [results["students"][n]["perplexity"] for n in names]
    left.bar_label(left.bar(names, perplexities, color="tab:blue"), fmt="%.1f")
    if max(perplexities) > 10 * min(perplexities):  # a student that learned nothing would flatten the others
        left.set_yscale("log")
    left.axhline(results["teacher"]["perplexity"], color="tab:red", linestyle="--", label="teacher")
    left.set_ylabel("test perplexity")
    left.legend()
    right.bar_label(right.bar(names, [results["students"][n]["kl_to_teacher"] for n in names], color="tab:orange"),
                    fmt="%.3f")
    right.set_ylabel("KL(teacher || student), nats/token")
    for axes in (left, right):
        axes.tick_params(axis="x", rotation=25)
    if budgets:
        curves = {name: [(point["tokens"], point["perplexity"]) for point in points.values()]
                  for name, points in budgets.items()}  # fmt: skip
        draw_perplexity_curves(axes_row[2], curves, results["teacher"]["perplexity"], log_tokens=True)
    save_figure(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("compare_signals.py", argv)
    teacher_dir = train_teacher(args, Path(args.data) / "valid.txt", TEACHER_LEARNING_RATE)
    sweep, descriptions = student_sweep(args, teacher_dir)
    budgets = budget_sweep(args, teacher_dir) if args.budget_steps else None
    run_students(*(each for each in (sweep, budgets) if each is not None))
    results = evaluate(args, teacher_dir, sweep, descriptions, budgets)
    return save_results(args, results, command, write_report)


if __name__ == "__main__":
    main()
