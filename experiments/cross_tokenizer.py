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
   by each cross-tokenizer loss (``mapped``, ``uld``, ``mapped_uld``, and ``mapped_uld`` with hidden states on
   the aligned positions). The students are a sweep (``WORK_DIR/students.yaml``): an interrupted run resumes.
4. Every model is evaluated on the held-out articles with its own tokenizer, in bits per byte of text (the
   tokenizer-free measure: nats summed over the targets / ln 2 / the targets' UTF-8 bytes).

Writes ``docs/results/cross_tokenizer.{md,png}`` and ``benchmarks/results/cross_tokenizer.json``.
"""

import argparse
import shlex
import sys
from functools import partial
from pathlib import Path

import matplotlib
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from distily.data.text import collate
from distily.data.tokenizer import train_sentencepiece_bpe
from distily.evaluation.bytes import bits_per_byte, token_byte_lengths
from distily.evaluation.heldout import heldout_metrics
from distily.models.student import load_student
from distily.outputs import write_json_atomic
from distily.training.run_dir import RunDir

from transfer_set import draw_transfer_sets, split_articles
from wikitext import (
    DEFAULT_DATA, REPO, add_model_arguments, device_description, heldout_blocks, markdown_head, markdown_row,
    report_opening, run_students, save_figure, student_keys, teacher_data, teacher_training, train_teacher,
    write_sweep,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINE = "cross-entropy"
# (name, what the student learns from, config keys over the common ones)
VARIANTS = [
    (BASELINE, "next-token cross-entropy on the transfer set (no teacher)", {"logits_weight": 0.0, "hard_label_weight": 1.0}),
    ("mapped", "forward KL on the shared tokens + the next token by the chain rule", {"cross_tokenizer_loss": "mapped"}),
    ("uld", "ULD: sorted-probability L1 over both vocabularies", {"cross_tokenizer_loss": "uld"}),
    ("mapped_uld", "mapped on the shared tokens, ULD on the rest", {"cross_tokenizer_loss": "mapped_uld"}),
    ("mapped_uld+hidden", "mapped_uld + hidden states at aligned positions (linear projector, MSE)",
     {"cross_tokenizer_loss": "mapped_uld", "hidden_states_weight": 1.0, "hidden_states_projector": "linear"}),
]  # fmt: skip
GOAL = 0.95  # the best cross-tokenizer student's bits per byte, at most this times the baseline's


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="directory with valid.txt and test.txt")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "cross-tokenizer"))
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "cross_tokenizer.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "cross_tokenizer.json"))
    add_model_arguments(parser, teacher_steps=1000)
    parser.add_argument("--teacher_learning_rate", type=float, default=1e-3)
    parser.add_argument("--student_vocab_size", type=int, default=3000)
    parser.add_argument("--student_steps", type=int, default=600)
    parser.add_argument("--heldout_fraction", type=float, default=0.2, help="of test.txt's characters, held out")
    parser.add_argument("--transfer_fraction", type=float, default=0.1, help="of the teacher text, the students'")
    parser.add_argument("--eval_blocks", type=int, default=0, help="held-out blocks evaluated per model (all: 0)")
    return parser.parse_args(argv)


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
    teacher_eval = set(teacher_data(args, files["teacher"], teacher_tokenizer).eval_documents["text"])
    candidates = [article for article in teacher_articles if article not in teacher_eval]
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
        "max_eval_samples": 64,
        "eval_strategy": "no",
        "save_steps": max(args.student_steps // 4, 1),
        "logging_steps": max(args.student_steps // 10, 1),
    }
    runs = [{"name": name, **overrides} for name, _, overrides in VARIANTS]
    return write_sweep(args.work_dir, "students", {"base": base, "runs": runs})


def bits_per_byte_of(model, tokenizer, args, label: str) -> dict:
    """The model on the held-out articles, with its own tokenizer: loss per token and bits per byte."""
    blocks = heldout_blocks(Path(args.work_dir) / "data" / "heldout.txt", tokenizer, args.seq_length,
                            Path(args.work_dir) / "cache", args.eval_blocks)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    found = heldout_metrics(model, blocks, partial(collate, pad_token_id=pad), desc=label)
    lengths = token_byte_lengths(tokenizer)
    targets = [ids[1:] for ids in blocks["input_ids"]]
    n_targets = sum(map(len, targets))
    n_bytes = int(sum(lengths[torch.as_tensor(ids, dtype=torch.long)].sum() for ids in targets))
    return {**found, "targets": n_targets, "bytes": n_bytes,
            "bits_per_byte": bits_per_byte(found["lm_loss"] * n_targets, n_bytes)}  # fmt: skip


def evaluate(args, prepared: dict, sweep) -> dict:
    teacher = AutoModelForCausalLM.from_pretrained(prepared["teacher_dir"], dtype=torch.float32).eval()
    teacher_tokenizer = PreTrainedTokenizerFast.from_pretrained(prepared["teacher_dir"])
    student_tokenizer = PreTrainedTokenizerFast.from_pretrained(prepared["student_dir"])
    results = {"splits": prepared["splits"], "teacher": {
        "parameters": teacher.num_parameters(), "vocabulary": len(teacher_tokenizer),
        **teacher_training(prepared["teacher_dir"]), **bits_per_byte_of(teacher, teacher_tokenizer, args, "teacher"),
    }, "students": {}}  # fmt: skip
    descriptions = {name: what for name, what, _ in VARIANTS}
    for run in sweep.runs:
        run_dir, name = sweep.run_dir(run), run.name.rsplit("-", 1)[0]  # the sweep adds a hash of the overrides
        student = load_student(str(run_dir))
        results["students"][name] = {
            "signal": descriptions[name], "parameters": student.num_parameters(),
            "vocabulary": len(student_tokenizer), "train_seconds": RunDir(run_dir).read_metrics().train.wall_seconds,
            **bits_per_byte_of(student, student_tokenizer, args, name),
        }  # fmt: skip
    baseline = results["students"][BASELINE]["bits_per_byte"]
    for row in results["students"].values():
        row["vs_baseline"] = row["bits_per_byte"] / baseline
    best = min((name for name in results["students"] if name != BASELINE),
               key=lambda name: results["students"][name]["bits_per_byte"])
    results["best"] = {"name": best, "ratio": results["students"][best]["vs_baseline"], "goal": GOAL,
                       "met": results["students"][best]["vs_baseline"] <= GOAL}  # fmt: skip
    return results


def write_report(args, results: dict, command: str) -> None:
    teacher, students, splits = results["teacher"], results["students"], results["splits"]
    *head, teacher_line = report_opening("Cross-tokenizer distillation (WikiText-2)", command, results["device"],
                                         args, teacher)  # fmt: skip
    lines = [
        *head,
        f"{teacher_line}, byte-level BPE of {teacher['vocabulary']} tokens, {args.teacher_steps} steps on "
        f"{splits['teacher_characters']:,} characters. Students: {args.student_layers}-layer Llamas from scratch with "
        f"a SentencePiece-style BPE of {next(iter(students.values()))['vocabulary']} tokens, each "
        f"{args.student_steps} steps of {args.batch_size} x {args.seq_length} tokens on the transfer set "
        f"({splits['transfer_articles']} articles, {splits['transfer_characters']:,} characters). Evaluated on "
        f"{splits['heldout_characters']:,} held-out characters, each model with its own tokenizer.",
        "",
        *markdown_head(["model", "learns from", "bits per byte", "vs. baseline", "loss per token (nats)",
                        "train time"]),
        markdown_row(["teacher", "its own text", f"{teacher['bits_per_byte']:.3f}", "", f"{teacher['lm_loss']:.3f}",
                      f"{teacher['train_seconds']:.0f} s"]),
    ]
    for name, row in students.items():
        lines.append(markdown_row([name, row["signal"], f"{row['bits_per_byte']:.3f}", f"{row['vs_baseline']:.3f}x",
                                   f"{row['lm_loss']:.3f}", f"{row['train_seconds']:.0f} s"]))  # fmt: skip
    best = results["best"]
    lines += ["", f"- Best cross-tokenizer student ({best['name']}): {best['ratio']:.3f}x the baseline's bits per byte "
              f"(goal: at most {GOAL}x): {'met' if best['met'] else 'not met'}.",
              "", f"![bits per byte per student]({Path(args.report).with_suffix('.png').name})", ""]
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    plot(results, Path(args.report).with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    names = list(results["students"])
    values = [results["students"][name]["bits_per_byte"] for name in names]
    figure, axes = plt.subplots(figsize=(9, 4))
    axes.bar_label(axes.bar(names, values, color="tab:blue"), fmt="%.3f")
    axes.axhline(results["teacher"]["bits_per_byte"], color="tab:red", linestyle="--", label="teacher")
    axes.set_ylabel("held-out bits per byte")
    axes.tick_params(axis="x", rotation=20)
    axes.legend()
    save_figure(figure, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = shlex.join(["python", "experiments/cross_tokenizer.py", *(sys.argv[1:] if argv is None else argv)])
    prepared = prepare(args)
    sweep = student_sweep(args, prepared)
    run_students(sweep)
    results = evaluate(args, prepared, sweep)
    results.update(command=command, settings=vars(args), device=device_description())
    write_json_atomic(args.json, results)
    write_report(args, results, command)
    return results


if __name__ == "__main__":
    main()
