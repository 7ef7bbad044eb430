"""What the experiments share: for the WikiText-2 ones, the text by article, the byte-level BPE and the small Llama
teacher trained on it, and held-out blocks; for all, training a sweep's students and the pieces of their results
(markdown rows, perplexity curves, the command line, the JSON and report written together).

Imported by the experiments in this directory (each runs as ``python experiments/NAME.py``, which puts it on
``sys.path``)."""

import argparse
import json
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from distily.commands.sweep import run_sweep
from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.text_files import split_text
from distily.data.tokenizer import train_byte_level_bpe
from distily.data.training_data import DistillationData, build_datasets
from distily.evaluation.perplexity import load_eval_set
from distily.experiments.sweep_file import Sweep, load_sweep
from distily.models.precision import bf16_is_fast
from distily.outputs import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wikitext-2"
EOS = "<|endoftext|>"
WIKITEXT_ARTICLES = r"^ = [^=]"  # a WikiText article starts at its top-level heading " = Title = "
TEACHER_TRAINING_FILE = "training.json"
# a student's starting point -> (what it starts from, its config keys); the teacher is a Llama with tied
# embeddings, so model.embed_tokens is also its LM head
STUDENT_INITS = {
    "teacher": ("blocks copied from evenly spaced teacher blocks, embeddings, final norm and LM head from the teacher",
                {"student_init": "teacher"}),
    "random_blocks": ("random blocks, embeddings, final norm and LM head from the teacher",
                      {"student_init": "random", "copy_teacher_modules": ["model.embed_tokens", "model.norm"]}),
    "random": ("every weight random (trained from scratch)", {"student_init": "random"}),
}  # fmt: skip


def read_articles(text_file: Path) -> list[str]:
    """The file's articles in order, each from its heading to the next one, line breaks kept as they are
    (text before the first heading that is only whitespace is dropped, as distily drops empty documents)."""
    with open(text_file, encoding="utf-8", newline="") as text:
        return [article for article in split_text(text.read(), WIKITEXT_ARTICLES) if article.strip()]


def add_model_arguments(parser: argparse.ArgumentParser, teacher_steps: int) -> None:
    """The tokenizer's, the teacher's and the students' shape, and the teacher's steps."""
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--hidden_size", type=int, default=192)
    parser.add_argument("--teacher_layers", type=int, default=4)
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--teacher_steps", type=int, default=teacher_steps)


def train_tokenizer(text_file: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    # the file's lines with their endings, as Tokenizer.train([text_file]) reads them: the same merges
    with open(text_file, encoding="utf-8", newline="") as lines:
        return train_byte_level_bpe(lines, vocab_size, EOS, pad=True)


def teacher_data(args, text_file: Path, tokenizer) -> DistillationData:
    """The teacher's blocks: ``text_file`` by article, 2% of the articles held out (``eval_documents``)."""
    data_args = DataArguments(dataset_name=str(text_file), eval_fraction=0.02,
                              text_document_delimiter=WIKITEXT_ARTICLES,
                              tokenization_cache_dir=str(Path(args.work_dir) / "cache"))  # fmt: skip
    return build_datasets(data_args, tokenizer, args.seq_length, seed=0)


def train_teacher(args, text_file: Path, learning_rate: float) -> Path:
    """Tokenizer and teacher, trained on ``text_file`` into WORK_DIR/teacher (returned); kept when it holds
    them, resumed from the last checkpoint when the training was interrupted."""
    teacher_dir = Path(args.work_dir) / "teacher"
    if (teacher_dir / "model.safetensors").exists():
        return teacher_dir
    training_dir = Path(args.work_dir) / "teacher-training"
    if (training_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(training_dir)
    else:
        tokenizer = train_tokenizer(text_file, args.vocab_size)
        tokenizer.save_pretrained(training_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size,
        num_hidden_layers=args.teacher_layers, num_attention_heads=args.hidden_size // 64,
        max_position_embeddings=2 * args.seq_length, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    data = teacher_data(args, text_file, tokenizer)
    training = TrainingArguments(
        output_dir=str(training_dir), max_steps=args.teacher_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=learning_rate, lr_scheduler_type="cosine",
        warmup_steps=0.05, weight_decay=0.1, bf16=bf16_is_fast(), use_cpu=not torch.accelerator.is_available(),
        logging_steps=max(args.teacher_steps // 10, 1), eval_strategy="no", save_steps=max(args.teacher_steps // 8, 1),
        save_total_limit=1, report_to="none", remove_unused_columns=False, seed=0,
    )  # fmt: skip
    collate_fn = partial(collate, pad_token_id=tokenizer.eos_token_id)
    started = time.perf_counter()
    trainer = Trainer(model=model, args=training, train_dataset=data.train, data_collator=collate_fn)
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(training_dir)))
    model.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    write_json_atomic(teacher_dir / TEACHER_TRAINING_FILE, {"train_seconds": time.perf_counter() - started})
    return teacher_dir


def teacher_training(teacher_dir: Path) -> dict:
    """What ``train_teacher`` recorded about the training (its wall time)."""
    return json.loads((teacher_dir / TEACHER_TRAINING_FILE).read_text())


def student_keys(args, teacher_dir: Path) -> dict:
    """The config keys every student of these experiments has: the teacher's config with
    ``args.student_layers`` layers, ``args.student_steps`` steps of ``args.batch_size`` blocks at learning
    rate 1e-3, hidden states (when a run weighs them) paired by relative depth, compared by MSE after layer
    norm without a projector; checkpoints by steps, seed 0."""
    return {
        "teacher_model_name_or_path": str(teacher_dir),
        "student_config_overrides": {"num_hidden_layers": args.student_layers},
        "text_document_delimiter": WIKITEXT_ARTICLES,
        "max_seq_length": args.seq_length,
        "tokenization_cache_dir": str(Path(args.work_dir) / "cache"),
        "hidden_states_layer_map": "all",
        "hidden_states_projector": "identity",
        "hidden_states_norm": "layernorm",
        "max_steps": args.student_steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-3,
        "bf16": bf16_is_fast(),
        "save_strategy": "steps",
        "report_to": "none",
        "seed": 0,
    }


def write_sweep(work_dir: str, name: str, spec: dict) -> Sweep:
    """``spec`` as the sweep file WORK_DIR/NAME.yaml, its runs in WORK_DIR/NAME, loaded."""
    path = Path(work_dir) / f"{name}.yaml"
    spec = {**spec, "output_dir": str(path.with_suffix(""))}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_sweep(str(path))


def heldout_blocks(text_file: Path, tokenizer, seq_length: int, cache_dir: Path, limit: int):
    """``limit`` blocks (all: 0) of ``text_file``, by article, framed as the models were trained: the sample every
    run's eval set of that ``max_samples`` takes (``distily.data.training_data.evaluated_rows``), not the first
    blocks."""
    spec = {"path": str(text_file), "config": None, "split": "train", "text_column": "text",
            "max_samples": limit or None}
    return load_eval_set(text_file.stem, spec, tokenizer, seq_length, str(cache_dir),
                         text_document_delimiter=WIKITEXT_ARTICLES)  # fmt: skip


def report_opening(title: str, command: str, device: str, args, teacher: dict) -> list[str]:
    """A report's title, command and the start of its teacher's description (its shape and size)."""
    return [
        f"# {title}",
        "",
        f"Command: `{command}` (on {device}).",
        "",
        f"Teacher: Llama architecture, {args.teacher_layers} layers, width {args.hidden_size}, "
        f"{teacher['parameters'] / 1e6:.2f}M parameters",
    ]


def markdown_head(columns: list[str]) -> list[str]:
    """A markdown table's header row and the line under it."""
    return [markdown_row(columns), "|" + "---|" * len(columns)]


def markdown_row(cells) -> str:
    """A markdown table row; an empty cell is written ``| |``."""
    return "|" + "|".join(f" {cell} " if cell != "" else " " for cell in cells) + "|"


def draw_perplexity_curves(axes, curves: dict, teacher_perplexity: float, log_tokens: bool,
                           teacher_color: str = "tab:red", measure: str = "test perplexity") -> None:
    """Held-out perplexity (or another ``measure``) against training tokens, one line per model (``curves``:
    name -> [(tokens, perplexity)]), the teacher's as a dashed line (in a colour none of the curves has)."""
    for name, points in curves.items():
        axes.plot(*zip(*points), marker="o", label=name)
    axes.axhline(teacher_perplexity, color=teacher_color, linestyle="--", label="teacher")
    if log_tokens:
        axes.set_xscale("log")
    axes.set_xlabel("training tokens")
    axes.set_ylabel(measure)
    axes.legend()


def run_students(*sweeps: Sweep) -> None:
    """Train every sweep's students (a sweep resumes what an earlier run finished); stop with their errors when any
    failed."""
    rows = [row for sweep in sweeps for row in run_sweep(sweep)]
    failed = [f"{row['name']}: {row.get('error')}" for row in rows if row["status"] != "finished"]
    if failed:
        raise SystemExit("students failed: " + "; ".join(failed))


def save_figure(figure, path) -> None:
    """A finished matplotlib figure to ``path`` (PNG), closed (the caller chose the Agg back end)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def command_line(script: str, argv) -> str:
    """How ``experiments/<script>`` was run (``argv``: as ``main`` got them; None: this process's), for its JSON and
    report."""
    return shlex.join(["python", f"experiments/{script}", *(sys.argv[1:] if argv is None else argv)])


def save_results(args, results: dict, command: str, write_report) -> dict:
    """``results`` with the command, the settings and the device, written to ``args.json`` and by
    ``write_report(args, results, command)``."""
    results.update(command=command, settings=vars(args), device=device_description())
    write_json_atomic(args.json, results)
    write_report(args, results, command)
    return results


def device_description() -> str:
    if torch.accelerator.is_available():
        return str(torch.accelerator.current_accelerator())
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads > 1 else ''}"
