"""Training from a recorded teacher against the live teacher: speed, store size and fidelity.

    python benchmarks/recorded.py [--runs 5 --steps 20 --batch 16 --seq 128 --top_k 64 --threads 1]

1. Trains a small Llama-shaped teacher (--teacher_layers, --hidden, a 4096-token BPE) for --teacher_steps
   steps on WikiText-2 valid (/work/shared/data; cached in --workdir, so later runs skip it).
2. Records it with `distily record` over WikiText-2 test, which the teacher never saw, once per k in
   {8, 32, 64, 128}: bytes per token on disk, and the fidelity report (KL between the teacher's full
   distribution and the one rebuilt from a k-store, on the store's held-out tokens).
3. Distills the same student (--student_layers, initialised from teacher layers) with the same batch,
   once from the live teacher and once from the k=--top_k store, --runs times each, interleaved, after
   one untimed warm-up of each; tokens/s is steps * batch * seq over the Trainer's train_runtime
   (training only, no evaluation or loading), and the median is reported.
Prints a table with the ratios and writes benchmarks/results/recorded.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, set_seed

from common import write_results
from distily.config import parse_config, parse_record_config
from distily.data.arguments import DataArguments
from distily.data.tokenizer import train_byte_level_bpe
from distily.data.training_data import build_datasets
from distily.metrics import RunMetrics
from distily.recording.run import run_recording
from distily.training.distill import run_distillation

WIKITEXT = Path("/work/shared/data/wikitext-2")
FIDELITY_KS = (8, 32, 64, 128)
VOCAB = 4096


def build_teacher(directory: Path, options) -> str:
    """A byte-level BPE and a Llama teacher trained by next-token prediction on WikiText-2 valid."""
    if (directory / "config.json").exists():
        return str(directory)
    set_seed(0)
    lines = [line for line in (WIKITEXT / "valid.txt").read_text().splitlines() if line.strip()]
    tokenizer = train_byte_level_bpe(lines, VOCAB, model_max_length=2 * options.seq)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=options.hidden, intermediate_size=options.hidden * 8 // 3,
                         num_hidden_layers=options.teacher_layers, num_attention_heads=options.hidden // 64,
                         num_key_value_heads=options.hidden // 64, max_position_embeddings=2 * options.seq,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    data = build_datasets(
        DataArguments(dataset_name=str(WIKITEXT / "valid.txt"), tokenization_cache_dir=str(directory.parent / "cache")),
        tokenizer, options.seq, seed=0,
    ).train
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=options.teacher_steps)
    model.train()
    for step in range(options.teacher_steps):
        rows = torch.randint(0, len(data), (options.batch,)).tolist()
        input_ids = data[rows]["input_ids"]  # [batch, seq]
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad()
        if step % 50 == 0 or step == options.teacher_steps - 1:
            print(f"teacher step {step}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def values(options, teacher: str, workdir: Path, **overrides) -> dict:
    return {
        "teacher_model_name_or_path": teacher,
        "dataset_name": str(WIKITEXT / "test.txt"),
        "max_seq_length": options.seq,
        "max_samples": options.record_rows,
        "max_eval_samples": options.eval_rows,
        "tokenization_cache_dir": str(workdir / "cache"),
        "student_config_overrides": {"num_hidden_layers": options.student_layers},
        "max_steps": options.steps,
        "per_device_train_batch_size": options.batch,
        "per_device_eval_batch_size": options.batch,
        "learning_rate": 1e-3,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": options.steps,
        "report_to": "none",
        "disable_tqdm": True,
        "overwrite_output_dir": True,
        "output_dir": str(workdir / "run"),
        **overrides,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/distily-bench-recorded")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--teacher_layers", type=int, default=8)
    parser.add_argument("--student_layers", type=int, default=4)
    parser.add_argument("--teacher_steps", type=int, default=300)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--record_rows", type=int, default=512, help="train sequences recorded")
    parser.add_argument("--eval_rows", type=int, default=64, help="held-out sequences (fidelity)")
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(options.workdir)
    teacher = build_teacher(workdir / "teacher", options)

    stores = {}
    for k in sorted({*FIDELITY_KS, options.top_k}):
        store = workdir / f"store-k{k}"
        manifest = run_recording(parse_record_config(**values(options, teacher, workdir, teacher_store=str(store),
                                                       record_top_k=k)))
        stores[k] = {"path": str(store), "bytes_per_token": manifest["bytes_per_token"],
                     "bytes_per_topk_entry": manifest["bytes_per_topk_entry"]}
    fidelity = manifest["fidelity"]  # the same held-out tokens and full distributions for every store

    modes = {
        "live": values(options, teacher, workdir),
        "recorded": values(options, teacher, workdir, teacher_source="recorded",
                           teacher_store=stores[options.top_k]["path"]),
    }
    seconds = {mode: [] for mode in modes}
    for run in range(options.runs + 1):  # run 0 warms caches and is not counted
        for mode, run_values in modes.items():
            train = RunMetrics.from_dict(run_distillation(parse_config(**run_values))).train
            if run > 0:
                seconds[mode].append(train.runtime)
            print(f"run {run} {mode}: {train.runtime:.2f} s", flush=True)
    tokens = options.steps * options.batch * options.seq
    tokens_per_second = {mode: tokens / statistics.median(runs) for mode, runs in seconds.items()}
    speedup = tokens_per_second["recorded"] / tokens_per_second["live"]

    print(f"\nteacher {options.teacher_layers} layers, student {options.student_layers} layers, width "
          f"{options.hidden}, vocab {VOCAB}; batch {options.batch} x {options.seq} tokens, {options.steps} steps, "
          f"median of {options.runs} interleaved runs, {options.threads} thread(s)")
    print(f"{'':<24}{'tokens/s':>12}{'ratio':>8}")
    for mode in modes:
        print(f"{'train from ' + mode:<24}{tokens_per_second[mode]:>12.0f}"
              f"{tokens_per_second[mode] / tokens_per_second['live']:>8.2f}")
    print(f"\nheld-out tokens for fidelity: {fidelity['tokens']}")
    print(f"{'k':>5}{'bytes/token':>14}{'KL nats/token':>16}{'tail mass':>12}")
    for k in FIDELITY_KS:
        report = fidelity["by_k"][str(k)]
        print(f"{k:>5}{stores[k]['bytes_per_token']:>14.1f}{report['kl']:>16.5f}{report['tail_mass']:>12.5f}")
    path = write_results("recorded", {
        "arguments": vars(options),
        "tokens_per_second": tokens_per_second,
        "speedup_recorded_over_live": speedup,
        "seconds_per_run": seconds,
        "stores": stores,
        "fidelity": fidelity,
    })
    print(f"\nrecorded / live = {speedup:.2f}x (goal >= 1.4x); wrote {path}")


if __name__ == "__main__":
    main()
