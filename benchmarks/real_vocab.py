"""Training speed and memory at the vocabularies small students carry: Distily against TRL's GKD trainer and a
plain loop, a recorded teacher against the live one, and a step's FLOP/s against the machine's matmul peak.

    python benchmarks/real_vocab.py [--shapes qwen2 llama3] [--precision fp32 bf16] [--runs 3] [--steps 3]
                                    [--warmup 1] [--batch 4] [--seq 512] [--torch_compile] [--quick]

Shapes (teacher --teacher_layers 4, student --student_layers 2, width --hidden 512, --heads 8):

- qwen2: Qwen2-shaped, 151,936 logits, tied embeddings (Qwen2/2.5/3's small models);
- llama3: Llama-3-shaped, 128,256 logits, an LM head of its own.

The tokenizer is a byte-level BPE of --tokenizer_vocab tokens and the models' embeddings are padded beyond it, as
Qwen2's are: every step computes, and every loss reads, all the real vocabulary's logits. Each shape trains,
in fresh processes with interleaved rounds (``training_speed.py``'s workers, clock and memory accounting):

- distily: ``run_distillation`` from the live teacher (evaluation before and after training included in the
  process peak, as ``distily distill`` runs it);
- distily_recorded: the same from a store of the teacher's top --top_k recorded beforehand (``distily record``);
- distily_compiled (with --torch_compile): the live run with the Trainer's ``torch_compile``;
- plain: the plain PyTorch loop on full logits; trl: ``GKDTrainer`` with lmbda=0, beta=0 (by default where TRL is
  installed; ``--cases trl`` without it is an error).

--cases picks some of these (and ``flops`` and ``allocator``, below); the store is recorded only for
distily_recorded (and ``allocator``).

``allocator``: distily and distily_recorded run once more each round (with ``--cases allocator`` alone, only
these) with their training's peak measured at PyTorch's CPU allocator (``common.AllocatorPeak``: tensors only,
what the CUDA allocator's figures are on a GPU). On CPU the resident-set peak also counts the C library's heap,
which keeps what the evaluation before training freed and differs between the two runs.
``recorded_over_live_allocated_peak_memory`` compares the tensors allocated during training beyond those alive
when it starts; ``recorded_over_live_allocated_total_peak_memory`` the whole, the weights included (a recorded
run loads no teacher). These runs are slowed by the profiler and not timed; on a GPU they are left out (its
figures come from the CUDA allocator already).

Then ``hardware_efficiency.py``'s step: the FLOPs PyTorch dispatches in one Distily step over the median step
time, against the best square-matmul FLOP/s of the same precision and of fp32, measured in the same run.

Medians per trainer, ratios named for what they compare (``distily_over_trl_tokens_per_second``,
``recorded_over_live_peak_memory``, ...) and the goals of issue 20 go to benchmarks/results/real_vocab.json
(``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from common import describe, interleaved, machine, medians, run_worker, write_results
from distily.config import parse_record_config
from distily.recording.run import run_recording
from hardware_efficiency import matmul_peak
from training_speed import SEED, benchmark_parser, parse_checked, prepare, report, summarise, with_trl_if_installed

HERE = Path(__file__).resolve().parent
CASES = ("distily", "distily_recorded", "distily_compiled", "plain", "trl", "flops", "allocator")
ALLOCATOR_CASES = ("distily", "distily_recorded")  # measured at the allocator too, with ``allocator``
SHAPES = {"qwen2": {"arch": "qwen2", "vocab": 151936, "untied": False},
          "llama3": {"arch": "llama", "vocab": 128256, "untied": True}}
QUICK = {"runs": 1, "steps": 1, "warmup": 1, "batch": 2, "seq": 32, "hidden": 64, "teacher_layers": 2,
         "student_layers": 1, "heads": 2, "precision": ["fp32"], "tokenizer_vocab": 512, "top_k": 8,
         "quick_vocab": {"qwen2": 1536, "llama3": 1280}, "repeats": 2}
GOALS = {  # issue 20, at both vocabularies and precisions
    "distily_over_trl_tokens_per_second": (">=", 1.5),
    "distily_over_trl_peak_memory": ("<=", 0.3),
    "distily_over_trl_process_peak_memory": ("<=", 0.6),
    "recorded_over_live_tokens_per_second": (">=", 1.5),
    "recorded_over_live_peak_memory": ("<=", 1.0),
    "recorded_over_live_allocated_total_peak_memory": ("<=", 1.0),
    "distily_step_over_fp32_matmul_peak": (">=", 0.5),
}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.splitlines()[0], QUICK, runs=3, steps=3, warmup=1, hidden=512, heads=8)
    parser.set_defaults(seq=512, tokenizer_vocab=16384, workdir="/tmp/distily-bench-real-vocab")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES),
                        help="--arch, --vocab and --untied are set by each shape")
    parser.add_argument("--cases", nargs="+", choices=CASES,
                        help="what runs (default: all, trl where it is installed; distily_compiled only with "
                        "--torch_compile)")
    parser.add_argument("--top_k", type=int, default=64, help="top-k log-probabilities of the recorded store")
    parser.add_argument("--repeats", type=int, default=5, help="timed matmuls per size for the peak")
    parser.add_argument("--name", default="real_vocab", help="the results file's name")
    options = parse_checked(parser, argv, QUICK)
    options.cases = with_trl_if_installed(parser, options.cases, CASES, "--cases")
    options.quick_vocab = QUICK["quick_vocab"] if options.quick else None
    return options


def shape_spec(options, shape: str) -> dict:
    """The models, corpus and training spec of one shape (``training_speed.prepare``), and its recorded store."""
    shaped = argparse.Namespace(**{**vars(options), **SHAPES[shape]})
    if options.quick_vocab:
        shaped.vocab = options.quick_vocab[shape]
    spec = prepare(shaped)
    if not {"distily_recorded", "allocator"} & set(options.cases):
        return {**spec, "vocab": shaped.vocab}
    store = Path(spec["output_dir"]).parent / f"store-k{options.top_k}"
    if not (store / "manifest.json").exists():
        run_recording(parse_record_config(
            teacher_model_name_or_path=spec["teacher"], dataset_name=spec["corpus"], max_seq_length=spec["seq"],
            tokenization_cache_dir=spec["cache"], teacher_store=str(store), record_top_k=options.top_k,
            max_samples=spec["batch"] * spec["steps"], max_eval_samples=spec["batch"], output_dir=spec["output_dir"],
            seed=SEED,  # the runs' seed, which a store's rows must have been drawn with
        ))
    return {**spec, "store": str(store), "vocab": shaped.vocab}


def variants(spec: dict, options) -> dict[str, tuple[str, dict]]:
    """Trainer name -> (training_speed's worker, its spec), for the trainers of --cases that can run here."""
    live = {**spec, "distily_overrides": {}}
    cases = {"distily": ("distily", live),
             "distily_recorded": ("distily", {**live, "distily_overrides": {  # the store's documents, as recorded
                 "teacher_source": "recorded", "teacher_store": spec.get("store"), "dataset_name": None}}),
             "distily_compiled": ("distily", {**live, "distily_overrides": {"torch_compile": True}}),
             "plain": ("plain", live), "trl": ("trl", live)}
    wanted = set(options.cases) - ({"distily_compiled"} if not options.torch_compile else set())
    if torch.cuda.is_available():
        wanted.discard("allocator")  # a GPU's figures come from its allocator already
    if "allocator" in wanted:
        cases.update({f"{name}_allocator": (worker, {**case_spec, "allocator": True})
                      for name, (worker, case_spec) in list(cases.items()) if name in ALLOCATOR_CASES})
        wanted.update(f"{name}_allocator" for name in ALLOCATOR_CASES)
    return {name: case for name, case in cases.items() if name in wanted}


def ratio(median: dict, over: str, under: str, key: str) -> float:
    return median[over][key] / median[under][key]


def shape_results(options, spec: dict, precision: str) -> dict:
    """Every trainer's runs, their medians and ratios, and the FLOP/s of a Distily step, at one precision."""
    cases = {name: (lambda worker=worker, case_spec=case_spec: run_worker(
                 HERE / "training_speed.py", "--worker", worker, "--worker_precision", precision,
                 "--worker_spec", json.dumps(case_spec)))
             for name, (worker, case_spec) in variants(spec, options).items()}
    if "flops" in options.cases:
        counted = {**spec, "distily_overrides": {}, "steps": spec["steps"] + 1}  # the counted step after the timed ones
        cases["flops"] = lambda: run_worker(HERE / "hardware_efficiency.py", "--worker", precision,
                                            "--worker_spec", json.dumps(counted))
        for peak in dict.fromkeys((precision, "fp32")):
            cases[f"matmul_{peak}"] = lambda peak=peak: matmul_peak(peak, options.repeats)
    runs = interleaved(cases, options.runs)
    trainers = {name: runs.pop(name) for name in list(runs)
                if not (name == "flops" or name.startswith("matmul_") or name.endswith("_allocator"))}
    result = summarise(trainers)
    median = result["medians"]
    ratios = result["ratios"]
    allocated = {name.removesuffix("_allocator"): medians(case_runs, ("allocated_peak_extra_bytes",
                                                                       "allocated_at_start_bytes"))
                 for name, case_runs in runs.items() if name.endswith("_allocator")}
    for median_peaks in allocated.values():
        median_peaks["allocated_total_peak_bytes"] = (median_peaks["allocated_peak_extra_bytes"]
                                                      + median_peaks["allocated_at_start_bytes"])
    if len(allocated) == len(ALLOCATOR_CASES):
        for name, key in (("allocated_peak_memory", "allocated_peak_extra_bytes"),
                          ("allocated_total_peak_memory", "allocated_total_peak_bytes")):
            ratios[f"recorded_over_live_{name}"] = ratio(allocated, "distily_recorded", "distily", key)
    for name, key in (("tokens_per_second", "tokens_per_second"), ("peak_memory", "peak_extra_bytes"),
                      ("process_peak_memory", "process_peak_bytes")):
        for prefix, variant in (("recorded_over_live", "distily_recorded"),
                                ("compiled_over_eager", "distily_compiled")):
            if variant in median and "distily" in median:
                ratios[f"{prefix}_{name}"] = ratio(median, variant, "distily", key)
    step, peaks = None, {}
    if "flops" in runs:
        step = medians(runs["flops"], ("flops_per_second", "flops_per_step"))
        peaks = {name: medians(peak_runs, ("flops_per_second",))["flops_per_second"]
                 for name, peak_runs in runs.items() if name.startswith("matmul_")}
        for peak in dict.fromkeys(("fp32", precision)):
            ratios[f"distily_step_over_{peak}_matmul_peak"] = step["flops_per_second"] / peaks[f"matmul_{peak}"]
    goals_met = {name: (ratios[name] >= bound if sense == ">=" else ratios[name] <= bound)
                 for name, (sense, bound) in GOALS.items() if name in ratios}
    return {**result, "allocated_peaks": allocated, "distily_step": step, "matmul_peaks": peaks,
            "goals_met": goals_met, "runs": {**trainers, **runs}}


def main(argv=None) -> dict:
    options = parse_arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    for shape in options.shapes:
        spec = shape_spec(options, shape)
        results[shape] = {**SHAPES[shape], "vocab": spec["vocab"]}
        for precision in options.precision:
            results[shape][precision] = shape_results(options, spec, precision)
    info = machine()
    print(f"\n{describe(info)}\nteacher {options.teacher_layers} layers, student {options.student_layers}, width "
          f"{options.hidden}; batch {options.batch} x {options.seq} tokens; {options.steps} timed steps after "
          f"{options.warmup}; median of {options.runs} interleaved runs")
    for shape, by_precision in results.items():
        for precision in options.precision:
            print(f"\n{shape} (vocab {by_precision['vocab']}) " + report(precision, by_precision[precision]))
            for name, peak in by_precision[precision]["allocated_peaks"].items():
                print(f"{name}: at the allocator, {peak['allocated_at_start_bytes'] / 2**20:.0f} MiB alive when "
                      f"training starts, {peak['allocated_peak_extra_bytes'] / 2**20:.0f} MiB more at its peak")
            print("goals met:", by_precision[precision]["goals_met"])
    payload = {"arguments": vars(options), "goals": GOALS, **results}
    print(f"wrote {write_results(options.name, payload)}")
    return payload


if __name__ == "__main__":
    main()
