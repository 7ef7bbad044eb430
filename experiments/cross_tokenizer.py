"""Can a student with its own tokenizer learn from a teacher with another? Measured on WikiText-2, in bits per byte.

    python experiments/cross_tokenizer.py [--data ../shared/data/wikitext-2] [--work_dir runs/cross-tokenizer]

1. Splits as ``experiments/transfer_set.py`` makes them (by article): the teacher's text (``valid.txt`` and the
   first 80% of ``test.txt``), a held-out set nobody sees, and a transfer set of the teacher's articles holding
   about 10% of its characters: the students' only text.
2. The teacher: a byte-level BPE (GPT-2 conventions, 4096 tokens) and a Llama (4 layers, width 192) trained on the
   teacher's text (``wikitext.train_teacher``).
3. The students' tokenizer: a SentencePiece-style BPE (``▁``, byte fallback, BOS first; ``--student_vocab_size``
   tokens) trained on the transfer set. The students: Llamas of ``--student_layers`` layers from scratch, with
   that vocabulary, trained the same steps on the transfer set by cross-entropy on its labels (the baseline) and
   by each cross-tokenizer loss (``mapped``, ``mapped`` with the cross-entropy, ``uld``, ``mapped_uld``, and
   ``mapped_uld`` with hidden states on the aligned positions). The students are a sweep
   (``WORK_DIR/students.yaml``): an interrupted run resumes.
4. Every model is evaluated on the held-out articles with its own tokenizer, in bits per byte of text (the
   tokenizer-free measure: nats summed over the targets / ln 2 / the targets' UTF-8 bytes); the students before
   training and every ``--eval_every`` steps (distily's ``eval_datasets``).
5. The baseline's reported point is its best checkpoint (it overfits the small transfer set; early stopping
   favours it), chosen on a validation set distinct from the held-out test set: the teacher's own held-out
   articles, which no model trained on. Every student is compared with it there and at every later budget.

Writes ``docs/results/cross_tokenizer.{md,png}`` and ``benchmarks/results/cross_tokenizer.json``.
"""

import argparse
from functools import partial
from pathlib import Path

import matplotlib
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from distily.data.batches import collate
from distily.data.tokenizer import train_sentencepiece_bpe
from distily.evaluation.heldout import heldout_metrics

from transfer_set import (
    best_checkpoint, draw_transfer_sets, goal, heldout_every, ratios, split_articles, student_results, teacher_heldout,
)
from wikitext import (
    DEFAULT_DATA, REPO, add_model_arguments, command_line, draw_perplexity_curves, heldout_blocks,
    markdown_head, markdown_row, report_opening, run_students, save_figure, save_results, student_keys,
    teacher_training, train_teacher, write_sweep,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINE = "cross-entropy"
# (name, what the student learns from, config keys over the common ones)
VARIANTS = [
    (BASELINE, "next-token cross-entropy on the transfer set (no teacher)",
     {"logits_weight": 0.0, "hard_label_weight": 1.0}),
    ("mapped", "forward KL on the shared tokens + the next token by the chain rule",
     {"cross_tokenizer_loss": "mapped"}),
    ("mapped+labels", "mapped + next-token cross-entropy (ULD and GOLD pair their losses with it)",
     {"cross_tokenizer_loss": "mapped", "hard_label_weight": 1.0}),
    ("uld", "ULD: sorted-probability L1 over both vocabularies", {"cross_tokenizer_loss": "uld"}),
    ("mapped_uld", "mapped on the shared tokens, ULD on the rest", {"cross_tokenizer_loss": "mapped_uld"}),
    ("mapped_uld+hidden", "mapped_uld + hidden states at aligned positions (linear projector, MSE)",
     {"cross_tokenizer_loss": "mapped_uld", "hidden_states_weight": 1.0, "hidden_states_projector": "linear"}),
]  # fmt: skip
GOAL = 0.95  # the best cross-tokenizer student's bits per byte, at most this times the baseline's best
CURVE_METRICS = ("bits_per_byte", "lm_loss")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="directory with valid.txt and test.txt")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "cross-tokenizer"))
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "cross_tokenizer.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "cross_tokenizer.json"))
    add_model_arguments(parser, teacher_steps=1000)
    parser.add_argument("--teacher_learning_rate", type=float, default=1e-3)
    parser.add_argument("--student_vocab_size", type=int, default=3000)
    parser.add_argument("--student_steps", type=int, default=400)
    parser.add_argument("--eval_every", type=int, default=50,
                        help="steps between held-out evaluations (divides --student_steps)")
    parser.add_argument("--heldout_fraction", type=float, default=0.2, help="of test.txt's characters, held out")
    parser.add_argument("--transfer_fraction", type=float, default=0.1, help="of the teacher text, the students'")
    parser.add_argument("--eval_blocks", type=int, default=0, help="held-out blocks evaluated per model (all: 0)")
    args = parser.parse_args(argv)
    if args.eval_every < 1 or args.student_steps % args.eval_every:
        parser.error(f"--eval_every {args.eval_every} must be a positive divisor of --student_steps "
                     f"{args.student_steps}")
    return args


def prepare(args) -> dict:
    """The splits, the teacher, the students' tokenizer and their (random) starting checkpoint."""
    data_dir = Path(args.work_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    teacher_articles, heldout = split_articles(Path(args.data), args.heldout_fraction)
    files = {name: data_dir / f"{name}.txt" for name in ("teacher", "heldout", "transfer")}
    files["teacher"].write_text("".join(teacher_articles), encoding="utf-8")
    files["heldout"].write_text("".join(heldout), encoding="utf-8")
    teacher_dir = train_teacher(args, files["teacher"], args.teacher_learning_rate)
    teacher_tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    _, candidates = teacher_heldout(args, files, teacher_articles, teacher_tokenizer)
    (transfer,) = draw_transfer_sets(candidates, sum(map(len, teacher_articles)), [args.transfer_fraction])
    files["transfer"].write_text("".join(transfer), encoding="utf-8")
    student_dir = Path(args.work_dir) / "student-init"
    if not (student_dir / "model.safetensors").exists():
        tokenizer = train_sentencepiece_bpe(transfer, args.student_vocab_size)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size,
            num_hidden_layers=args.student_layers, num_attention_heads=args.hidden_size // 64,
            max_position_embeddings=2 * args.seq_length, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
    splits = {"teacher_characters": sum(map(len, teacher_articles)), "transfer_articles": len(transfer),
              "transfer_characters": sum(map(len, transfer)), "heldout_characters": sum(map(len, heldout))}  # fmt: skip
    return {"teacher_dir": teacher_dir, "student_dir": student_dir, "files": files, "splits": splits}


def student_sweep(args, prepared: dict):
    keys = student_keys(args, prepared["teacher_dir"])
    del keys["student_config_overrides"]  # the students are a checkpoint of their own, with their own tokenizer
    base = {
        **keys,
        "student_model_name_or_path": str(prepared["student_dir"]),
        "dataset_name": str(prepared["files"]["transfer"]),
        "eval_fraction": 0.02,
        "max_eval_samples": None,  # the eval sets' default too: every block unless --eval_blocks, as for the teacher
        **heldout_every(prepared["files"], args.eval_blocks or None, args),
    }
    runs = [{"name": name, **overrides} for name, _, overrides in VARIANTS]
    return write_sweep(args.work_dir, "students", {"base": base, "runs": runs})


def teacher_results(args, teacher_dir: Path) -> dict:
    """The teacher on the held-out articles, with its own tokenizer: loss per token and bits per byte."""
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    blocks = heldout_blocks(Path(args.work_dir) / "data" / "heldout.txt", tokenizer, args.seq_length,
                            Path(args.work_dir) / "cache", args.eval_blocks)
    found = heldout_metrics(teacher, blocks, partial(collate, pad_token_id=tokenizer.eos_token_id), desc="teacher",
                            tokenizer=tokenizer)
    return {"parameters": teacher.num_parameters(), "vocabulary": len(tokenizer), **teacher_training(teacher_dir),
            **found}  # fmt: skip


def comparison(students: dict) -> dict:
    """The baseline is the cross-entropy student's checkpoint of lowest validation bits per byte; every other
    student is compared with it on the test set there and at every later budget (keys: steps), and the best of
    them (the lowest worst ratio) against the goal."""
    best, later, overfits = best_checkpoint(students[BASELINE]["curve"], "bits_per_byte")
    over_best = {}
    for name, row in students.items():
        curve = {point["step"]: point for point in row["curve"]}
        over_best[name] = ratios(curve, dict.fromkeys(later, best["bits_per_byte"]), "bits_per_byte")
        row["vs_baseline"] = over_best[name][str(best["step"])]
    goals = {name: goal(ratios, GOAL) for name, ratios in over_best.items() if name != BASELINE}
    best_student = min(goals, key=lambda name: goals[name]["worst"])
    return {"baseline_best_step": best["step"], "baseline_best_bits_per_byte": best["bits_per_byte"],
            "baseline_overfits": overfits, "over_baseline_best": over_best,
            "best": {"name": best_student, **goals[best_student]}}  # fmt: skip


def evaluate(args, prepared: dict, sweep) -> dict:
    student_tokenizer = PreTrainedTokenizerFast.from_pretrained(prepared["student_dir"])
    results = {"splits": prepared["splits"], "teacher": teacher_results(args, prepared["teacher_dir"])}
    descriptions = {name: what for name, what, _ in VARIANTS}
    students = {}
    for run in sweep.runs:
        name = run.name.rsplit("-", 1)[0]  # the sweep adds a hash of the overrides
        students[name] = {"signal": descriptions[name], "vocabulary": len(student_tokenizer),
                          **student_results(sweep.run_dir(run), args.batch_size * args.seq_length, CURVE_METRICS)}
    return {**results, "students": students, **comparison(students)}


def write_report(args, results: dict, command: str) -> None:
    teacher, students, splits = results["teacher"], results["students"], results["splits"]
    best_step, best = results["baseline_best_step"], results["best"]
    last = students[BASELINE]["curve"][-1]["step"]
    *head, teacher_line = report_opening("Cross-tokenizer distillation (WikiText-2)", command, results["device"],
                                         args, teacher)  # fmt: skip
    lines = [
        *head,
        f"{teacher_line}, byte-level BPE of {teacher['vocabulary']} tokens, {args.teacher_steps} steps on "
        f"{splits['teacher_characters']:,} characters. Students: {args.student_layers}-layer Llamas from scratch with "
        f"a SentencePiece-style BPE of {next(iter(students.values()))['vocabulary']} tokens, each "
        f"{args.student_steps} steps of {args.batch_size} x {args.seq_length} tokens on the transfer set "
        f"({splits['transfer_articles']} articles, {splits['transfer_characters']:,} characters), evaluated every "
        f"{args.eval_every} steps on {f'a sample of {args.eval_blocks} blocks of ' if args.eval_blocks else ''}the "
        f"{splits['heldout_characters']:,} held-out characters, each model with its own tokenizer.",
        "",
        f"Baseline: the cross-entropy student's checkpoint of lowest validation bits per byte (the teacher's own "
        f"held-out articles), step {best_step}, {results['baseline_best_bits_per_byte']:.3f} test bits per byte"
        + ("; validation rose after it (the student overfits the transfer set)." if results["baseline_overfits"]
           else "; the last budget: it had not begun to overfit, so a longer run may lower the baseline."),
        "",
        *markdown_head(["model", "learns from", f"bits per byte at step {best_step}", "vs. baseline",
                        f"bits per byte at step {last}", "vs. baseline", "lowest (step)", "train time"]),
        markdown_row(["teacher", "its own text", f"{teacher['bits_per_byte']:.3f}", "", "", "", "",
                      f"{teacher['train_seconds']:.0f} s"]),
    ]  # fmt: skip
    for name, row in students.items():
        at = {point["step"]: point["bits_per_byte"] for point in row["curve"]}
        lowest = min(row["curve"][1:], key=lambda point: point["bits_per_byte"])
        ratios = results["over_baseline_best"][name]
        lines.append(markdown_row([
            name, row["signal"], f"{at[best_step]:.3f}", f"{ratios[str(best_step)]:.3f}x", f"{at[last]:.3f}",
            f"{ratios[str(last)]:.3f}x", f"{lowest['bits_per_byte']:.3f} ({lowest['step']})",
            f"{row['train_seconds']:.0f} s",
        ]))  # fmt: skip
    lines += ["", f"- Best cross-tokenizer student ({best['name']}): at most {best['worst']:.3f}x the baseline's best "
              f"bits per byte from step {best_step} on (goal: at most {GOAL}x): {'met' if best['met'] else 'not met'}.",
              "", f"![held-out bits per byte against training tokens]({Path(args.report).with_suffix('.png').name})",
              ""]  # fmt: skip
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    plot(results, Path(args.report).with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    """Held-out bits per byte against training tokens, one line per student, the baseline's best marked."""
    students = results["students"]
    curves = {name: [(point["tokens"], point["bits_per_byte"]) for point in row["curve"][1:]]
              for name, row in students.items()}  # fmt: skip
    figure, axes = plt.subplots(figsize=(8, 4.5))
    draw_perplexity_curves(axes, curves, results["teacher"]["bits_per_byte"], log_tokens=False,
                           teacher_color="black", measure="held-out bits per byte")
    best = next(point for point in students[BASELINE]["curve"] if point["step"] == results["baseline_best_step"])
    axes.axvline(best["tokens"], color="gray", linestyle=":")
    save_figure(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("cross_tokenizer.py", argv)
    prepared = prepare(args)
    sweep = student_sweep(args, prepared)
    run_students(sweep)
    results = evaluate(args, prepared, sweep)
    return save_results(args, results, command, write_report)


if __name__ == "__main__":
    main()
