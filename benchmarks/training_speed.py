"""Training tokens/s and peak memory of ``distily distill`` against a plain PyTorch loop and TRL's GKD trainer.

    python benchmarks/training_speed.py [--precision fp32 bf16] [--runs 5] [--steps 8] [--warmup 2]
                                        [--batch 4] [--seq 256] [--vocab 16384] [--hidden 512] [--quick]

The same Llama-shaped (--arch) teacher (--teacher_layers) and student (--student_layers), built from configs with
tied embeddings (--untied: an LM head of their own) and --vocab logits per token, and a byte-level BPE of --vocab
tokens (--tokenizer_vocab: fewer, the embeddings padded beyond them) trained on the help topics of Python's
documentation (``pydoc_data``; every Python has them), the same packed blocks of that text, batch, sequence
length, optimizer (the Trainer's default, fused AdamW; weight decay 0, constant learning rate, gradient clipping
at 1.0 as the Trainer does) and steps, trained three ways:

- distily: ``run_distillation`` (what ``distily distill`` runs; forward KL, temperature 1, its defaults);
- plain: a PyTorch loop: teacher forward under ``no_grad``, student forward, forward KL on the full logits
  in fp32 summed over tokens / tokens, backward, clip, step;
- trl: ``trl.experimental.gkd.GKDTrainer`` with lmbda=0 (never the student's own generations), beta=0 (its
  generalized JSD is then ``F.kl_div(student_logprobs, teacher_logprobs, log_target=True)``, the forward
  KL(teacher || student), token mean over positions whose shifted label is not -100, that is all but the last
  of each sequence), seq_kd=False, temperature 1 (its loss does not use the config's sampling temperature), and
  gradient checkpointing off as in the other two (TRL's SFT-based config turns it on by default).

Each run is a fresh process. Time: the steps after --warmup, from the end of the last warm-up step to the end
of the last step (a Trainer callback records each step's end; the plain loop records the same points);
tokens/s = timed steps * batch * seq / that time. Memory: the peak resident set size during training above
the resident size when training starts (models loaded, data ready; the kernel's VmHWM, reset at that point),
so optimizer state, gradients, activations and the loss's buffers count and model loading does not; the
whole process's peak (VmHWM from its start) is reported beside it. On a GPU the same two figures come from the CUDA
allocator (``common.reset_peak_memory``), and every trainer runs there. With --allocator (a worker whose spec holds
``"allocator": true``) each run also measures the training's peak at PyTorch's CPU allocator (``common.AllocatorPeak``,
tensors only: ``allocated_peak_extra_bytes`` above ``allocated_at_start_bytes``, the tensors alive when training
starts, the weights among them; ratios ``distily_over_<baseline>_allocated_peak_memory``), which slows it: its time
is not comparable, and no ratio of tokens/s is given. bf16 is autocast with fp32 weights, for all three.
--torch_compile runs Distily with the Trainer's ``torch_compile``.
Rounds are interleaved (distily, plain, trl, distily, ...); the table gives medians and ratios and
benchmarks/results/training_speed.json keeps every run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, TrainerCallback, set_seed

from common import (AllocatorPeak, describe, interleaved, keep_measured_results, machine, medians, peak_memory_bytes,
                    process_peak_bytes, reset_peak_memory, run_worker, synchronize, table, write_results)
from distily.config import parse_config
from distily.data.arguments import DataArguments
from distily.data.batches import collate
from distily.data.tokenizer import train_byte_level_bpe
from distily.data.training_data import build_datasets
from distily.demo.corpus import python_doc_paragraphs, write_corpus
from distily.models.teacher import load_tokenizer

TRAINERS = ("distily", "plain", "trl")
ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config}
PRECISIONS = ("fp32", "bf16")
SEED = 0
QUICK = {"runs": 1, "steps": 3, "warmup": 1, "batch": 2, "seq": 32, "vocab": 1024, "hidden": 64,
         "teacher_layers": 2, "student_layers": 1, "heads": 2, "precision": ["fp32"]}


class StepClock(TrainerCallback):
    """The times at which optimizer steps end, and the peak memory from the start of training (``allocator``:
    at PyTorch's CPU allocator too)."""

    def __init__(self, allocator: bool = False):
        self.allocator = AllocatorPeak() if allocator else None
        self.allocated_peak_bytes = None
        self.step_ends: list[float] = []
        self.step_cpu_ends: list[float] = []  # CPU time of the process (all threads), less sensitive to other jobs
        self.baseline_bytes = self.peak_bytes = 0
        self.first_loss = None

    def start(self) -> None:
        self.baseline_bytes = reset_peak_memory()
        if self.allocator:
            self.allocator.start()

    def step(self) -> None:
        synchronize()  # a step ends when the GPU is done with it
        self.step_ends.append(time.perf_counter())
        self.step_cpu_ends.append(time.process_time())

    def finish(self) -> None:
        self.peak_bytes = peak_memory_bytes()
        if self.allocator:
            self.allocated_peak_bytes = self.allocator.stop()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.finish()  # before any evaluation after training

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.first_loss is None and logs and "loss" in logs:
            self.first_loss = float(logs["loss"])

    def result(self, warmup: int, tokens_per_step: int) -> dict:
        timed_steps = len(self.step_ends) - warmup
        seconds = self.step_ends[-1] - self.step_ends[warmup - 1]
        cpu_seconds = self.step_cpu_ends[-1] - self.step_cpu_ends[warmup - 1]
        return {"tokens_per_second": timed_steps * tokens_per_step / seconds, "timed_steps": timed_steps,
                "timed_seconds": seconds, "cpu_seconds_per_step": cpu_seconds / timed_steps,
                "load_average": os.getloadavg()[0], "peak_extra_bytes": self.peak_bytes - self.baseline_bytes,
                "baseline_bytes": self.baseline_bytes, "process_peak_bytes": process_peak_bytes(),
                "first_loss": self.first_loss,
                **({"allocated_peak_extra_bytes": self.allocated_peak_bytes,
                    "allocated_at_start_bytes": self.allocator.alive_at_start} if self.allocator else {})}


def prepare(options) -> dict:
    """Tokenizer, teacher and student directories and the corpus in --workdir (built once per shape)."""
    tokenizer_vocab = min(options.vocab, options.tokenizer_vocab or options.vocab)
    shape = (f"v{options.vocab}-h{options.hidden}-heads{options.heads}-t{options.teacher_layers}"
             f"-s{options.student_layers}-q{options.seq}")
    if options.arch != "llama" or options.untied or tokenizer_vocab != options.vocab:
        shape += f"-{options.arch}-{'untied' if options.untied else 'tied'}-bpe{tokenizer_vocab}"
    workdir = Path(options.workdir) / shape
    corpus = write_corpus(workdir / "corpus.jsonl")
    if not (workdir / "student" / "config.json").exists():
        set_seed(SEED)
        tokenizer = train_byte_level_bpe(python_doc_paragraphs(), tokenizer_vocab, model_max_length=options.seq)
        for role, layers in (("teacher", options.teacher_layers), ("student", options.student_layers)):
            config = ARCHITECTURES[options.arch](
                vocab_size=options.vocab, hidden_size=options.hidden, intermediate_size=options.hidden * 8 // 3,
                num_hidden_layers=layers, num_attention_heads=options.heads, num_key_value_heads=options.heads,
                max_position_embeddings=options.seq, tie_word_embeddings=not options.untied, use_cache=False,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            AutoModelForCausalLM.from_config(config).save_pretrained(workdir / role)
            tokenizer.save_pretrained(workdir / role)
    spec = {"teacher": str(workdir / "teacher"), "student": str(workdir / "student"), "corpus": str(corpus),
            "cache": str(workdir / "cache"), "output_dir": str(workdir / "run"), "batch": options.batch,
            "seq": options.seq, "steps": options.warmup + options.steps, "warmup": options.warmup,
            "lr": options.lr, "distily_overrides": {"torch_compile": True} if options.torch_compile else {}}
    training_blocks(spec)  # tokenizes and caches once, outside the timed runs
    return spec


def training_blocks(spec: dict):
    """The packed training blocks, as ``distily distill`` builds them from the same data arguments."""
    data_args = DataArguments(dataset_name=spec["corpus"], tokenization_cache_dir=spec["cache"])
    tokenizer = load_tokenizer(spec["teacher"], "teacher")
    return build_datasets(data_args, tokenizer, spec["seq"], SEED).train


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_models(spec: dict):
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(spec["student"], dtype=torch.float32).train()
    return teacher.to(device()), student.to(device())


def train_distily(spec: dict, bf16: bool, clock: StepClock) -> None:
    import distily.training.distill as distill

    class ClockedTrainer(distill.DistillationTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), clock]})

    distill.DistillationTrainer = ClockedTrainer  # the name run_distillation builds its trainer from
    distill.run_distillation(parse_config(**{
        "teacher_model_name_or_path": spec["teacher"], "student_model_name_or_path": spec["student"],
        "dataset_name": spec["corpus"], "tokenization_cache_dir": spec["cache"], "max_seq_length": spec["seq"],
        "max_eval_samples": spec["batch"], "per_device_train_batch_size": spec["batch"],
        "per_device_eval_batch_size": spec["batch"], "max_steps": spec["steps"], "learning_rate": spec["lr"],
        "lr_scheduler_type": "constant", "weight_decay": 0.0, "bf16": bf16, "seed": SEED, "logging_steps": 1,
        "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "overwrite_output_dir": True, "output_dir": spec["output_dir"], **spec.get("distily_overrides", {}),
    }))


def plain_optimizer(student, lr: float) -> torch.optim.Optimizer:
    """The optimizer the Trainer builds for distily and TRL by default (``optim="adamw_torch_fused"``): AdamW with
    fused=True, whose step on CPU takes a fifth of the CPU time of ``torch.optim.AdamW``'s default for-loop."""
    return torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, fused=True)


def train_plain(spec: dict, bf16: bool, clock: StepClock) -> None:
    teacher, student = load_models(spec)
    blocks = training_blocks(spec).shuffle(seed=SEED)
    optimizer = plain_optimizer(student, spec["lr"])
    batch = spec["batch"]
    clock.start()
    for step in range(spec["steps"]):
        inputs = collate([blocks[row] for row in range(step * batch, (step + 1) * batch)])
        inputs = {key: value.to(device()) for key, value in inputs.items()}
        with torch.autocast(device().type, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                teacher_logits = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            student_logits = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        tokens = inputs["attention_mask"].sum()
        loss = F.kl_div(student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1),
                        reduction="sum", log_target=True) / tokens  # forward KL(teacher || student) per token
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step()
        if clock.first_loss is None:
            clock.first_loss = loss.item()
    clock.finish()


def train_trl(spec: dict, bf16: bool, clock: StepClock) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    teacher, student = load_models(spec)
    args = GKDConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", weight_decay=0.0, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
        max_length=spec["seq"], seed=SEED, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate,
                         train_dataset=training_blocks(spec),
                         processing_class=load_tokenizer(spec["teacher"], "teacher"), callbacks=[clock])
    trainer.train()


TRAIN = {"distily": train_distily, "plain": train_plain, "trl": train_trl}


def measure(trainer: str, precision: str, spec: dict) -> dict:
    """One run of ``trainer`` in this (fresh) process."""
    torch.manual_seed(SEED)
    clock = StepClock(allocator=spec.get("allocator", False))
    TRAIN[trainer](spec, precision == "bf16", clock)
    return clock.result(spec["warmup"], spec["batch"] * spec["seq"])


def run_cases(precision: str, trainers: tuple[str, ...], spec: dict, runs: int) -> dict[str, list[dict]]:
    cases = {name: (lambda name=name: run_worker(Path(__file__), "--worker", name, "--worker_precision", precision,
                                                 "--worker_spec", json.dumps(spec)))
             for name in trainers}
    return interleaved(cases, runs)


MEDIAN_KEYS = ("tokens_per_second", "peak_extra_bytes", "process_peak_bytes", "first_loss")
ALLOCATED_KEY = "allocated_peak_extra_bytes"  # with ``--allocator``


RATIOS = {"tokens_per_second": "tokens_per_second", "peak_memory": "peak_extra_bytes",
          "process_peak_memory": "process_peak_bytes", "allocated_peak_memory": "allocated_peak_extra_bytes"}


def summarise(runs: dict[str, list[dict]], timed: bool = True) -> dict:
    """Medians per trainer and Distily's ratios to each baseline that ran (at the allocator where every run was
    measured there; no ratio of tokens/s unless ``timed``: runs slowed by the profiler are not)."""
    allocated = all(ALLOCATED_KEY in run for trainer_runs in runs.values() for run in trainer_runs)
    keys = MEDIAN_KEYS + ((ALLOCATED_KEY,) if allocated else ())
    median = {name: medians(trainer_runs, keys) for name, trainer_runs in runs.items()}
    ratios = {}
    for baseline in ("trl", "plain"):
        if baseline in median and "distily" in median:
            for name, key in RATIOS.items():
                if key in keys and (timed or key != "tokens_per_second"):
                    ratios[f"distily_over_{baseline}_{name}"] = median["distily"][key] / median[baseline][key]
    return {"medians": median, "ratios": ratios}


GOALS = {"distily_over_trl_tokens_per_second": (">=", 1.25), "distily_over_trl_peak_memory": ("<=", 0.6)}


def goals_met(ratios: dict) -> dict:
    return {name: (ratios[name] >= bound if sense == ">=" else ratios[name] <= bound)
            for name, (sense, bound) in GOALS.items() if name in ratios}


def report(precision: str, summary: dict) -> str:
    rows = [("trainer", "tokens/s", "peak extra MiB", "process peak MiB", "first loss")]
    for name, median in summary["medians"].items():
        rows.append((name, f"{median['tokens_per_second']:.0f}", f"{median['peak_extra_bytes'] / 2**20:.0f}",
                     f"{median['process_peak_bytes'] / 2**20:.0f}", f"{median['first_loss']:.4f}"))
    lines = [f"[{precision}]", table(rows)]
    lines += [f"{name} = {value:.3f}" for name, value in summary["ratios"].items()]
    return "\n".join(lines)


def benchmark_parser(description: str, quick: dict, *, runs: int, steps: int, warmup: int,
                     hidden: int, heads: int) -> argparse.ArgumentParser:
    """The options of a benchmark that trains on ``prepare``'s models: precisions, runs, steps and shapes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per run, after the warm-up")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps at the start of each run (>= 1)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=16384, help="the models' vocabulary (logits per token)")
    parser.add_argument("--tokenizer_vocab", type=int, help="tokens the BPE learns (default: --vocab); a larger "
                        "model vocabulary is padded, as Qwen2's and Llama 3's embeddings are beyond their tokenizers")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama")
    parser.add_argument("--untied", action="store_true", help="an LM head of its own (default: tied embeddings)")
    parser.add_argument("--torch_compile", action="store_true", help="Distily with the Trainer's torch_compile")
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--heads", type=int, default=heads)
    parser.add_argument("--teacher_layers", type=int, default=4)
    parser.add_argument("--student_layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--workdir", default="/tmp/distily-bench-training-speed")
    parser.add_argument("--quick", action="store_true", help="a smoke run: " + json.dumps(quick))
    parser.add_argument("--worker_spec", help=argparse.SUPPRESS)
    return parser


def parse_checked(parser: argparse.ArgumentParser, argv, quick: dict) -> argparse.Namespace:
    options = parser.parse_args(argv)
    if options.quick:
        vars(options).update(quick)
        keep_measured_results()
    if options.warmup < 1 or options.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return options


def with_trl_if_installed(parser: argparse.ArgumentParser, asked: list[str] | None, default: tuple[str, ...],
                          option: str) -> list[str]:
    """What runs: ``asked`` on the command line (``option``), else ``default`` less ``trl`` where TRL is not
    installed; asking for ``trl`` without it is an error, not a comparison silently left out."""
    installed = importlib.util.find_spec("trl") is not None
    if asked is None:
        return [name for name in default if installed or name != "trl"]
    if "trl" in asked and not installed:
        parser.error(f'{option} trl needs TRL; expected pip install -e ".[bench]"')
    return asked


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.splitlines()[0], QUICK, runs=5, steps=8, warmup=2, hidden=512, heads=8)
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=None,
                        help="default: all three, or distily and plain where trl is not installed")
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--allocator", action="store_true",
                        help="measure the training peak at PyTorch's CPU allocator too (tensors only, as a GPU's "
                        "allocator counts; the resident set also counts the C library's heap, which keeps what "
                        "Distily's evaluation before training freed): the profiler slows the runs, so their times "
                        "are not comparable and no ratio of tokens/s is given")
    parser.add_argument("--name", default="training_speed", help="the results file's name")
    parser.add_argument("--worker_precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    options = parse_checked(parser, argv, QUICK)
    options.trainers = with_trl_if_installed(parser, options.trainers, TRAINERS, "--trainers")
    return options


def main(argv=None) -> dict:
    options = parse_arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if options.worker:
        print(json.dumps(measure(options.worker, options.worker_precision, json.loads(options.worker_spec))))
        return {}
    spec = {**prepare(options), "allocator": options.allocator}
    results = {}
    for precision in options.precision:
        runs = run_cases(precision, tuple(options.trainers), spec, options.runs)
        results[precision] = {**summarise(runs, timed=not options.allocator), "runs": runs}
        results[precision]["goals_met"] = goals_met(results[precision]["ratios"])
    info = machine()
    print(f"\n{describe(info)}\nteacher {options.teacher_layers} layers, student {options.student_layers}, width "
          f"{options.hidden}, vocab {options.vocab}; batch {options.batch} x {options.seq} tokens; "
          f"{options.steps} timed steps after {options.warmup}; median of {options.runs} interleaved runs")
    for precision, result in results.items():
        print(report(precision, result), "\ngoals met:", result["goals_met"])
    payload = {"arguments": {k: v for k, v in vars(options).items() if not k.startswith("worker")},
               "goals": GOALS, **results}
    print(f"wrote {write_results(options.name, payload)}")
    return payload


if __name__ == "__main__":
    main()
