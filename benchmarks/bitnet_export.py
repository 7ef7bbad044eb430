"""File sizes and CPU decode speed of an exported BitNet student against the fp32 Hugging Face student.

    python benchmarks/bitnet_export.py [--hidden 1024 --layers 8 --vocab 32000 --tokens 32 --runs 5]

Builds a Llama-shaped student from a config (random weights: speed and size do not depend on them),
converts it to BitNet, exports packed and GGUF (TQ2_0 and TQ1_0), then times greedy decoding of
--tokens new tokens after a 16-token prompt, interleaving the backends run by run and reporting the
median of --runs runs:
    hf_fp32        the dense fp32 student in transformers (what the export replaces)
    llama_cpp_*    the GGUF file in llama.cpp (when llama-cpp-python is installed)
Prints a table with ratios against hf_fp32 and writes benchmarks/results/bitnet_export.json, the ratios under
"ratios" (``<file>_over_hf_fp32_bytes``, ``<backend>_over_hf_fp32_tokens_per_second``,
``packed_linear_weights_over_fp16_linear_weights_bytes``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from common import write_results
from distily.data.tokenizer import train_byte_level_bpe
from distily.export.gguf import write_gguf
from distily.export.packed import linear_weight_bytes, write_packed_checkpoint
from distily.models.bitnet import convert_to_bitnet

PROMPT_LENGTH = 16


def build_tokenizer(path: Path) -> None:
    """A small byte-level BPE tokenizer; GGUF pads its vocabulary to the model's with unused tokens."""
    train_byte_level_bpe(["benchmark text for a benchmark tokenizer"] * 16, 1000, bos=False).save_pretrained(path)


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.suffix in (".safetensors", ".gguf"))


def hf_decoder(model, prompt: list[int], tokens: int):
    input_ids = torch.tensor([prompt])

    def decode() -> None:
        with torch.no_grad():
            model.generate(input_ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)

    return decode


def llama_cpp_decoder(path: Path, prompt: list[int], tokens: int, threads: int):
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), n_ctx=PROMPT_LENGTH + tokens + 8, n_threads=threads, verbose=False)

    def decode() -> None:
        model.reset()
        for count, _ in enumerate(model.generate(prompt, temp=0.0, reset=True), start=1):
            if count == tokens:
                break

    return decode


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per timed decode")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=256)
    dense = AutoModelForCausalLM.from_config(config).eval()
    student = convert_to_bitnet(copy.deepcopy(dense)).eval()
    prompt = torch.randint(0, 1000, (PROMPT_LENGTH,), generator=torch.Generator().manual_seed(1)).tolist()

    with tempfile.TemporaryDirectory(prefix="bitnet-bench-") as work:
        report(args, dense, student, prompt, Path(work))


def ratios(sizes: dict, speed: dict) -> dict:
    """What the table prints beside the figures, each named for what it compares: the bytes of every file and the
    decode speed of every backend over hf_fp32's, and the packed linear weights' bytes over theirs in fp16."""
    return {**{f"{name}_over_hf_fp32_bytes": size / sizes["hf_fp32"]
               for name, size in sizes.items() if name != "hf_fp32"},
            **{f"{name}_over_hf_fp32_tokens_per_second": value / speed["hf_fp32"]
               for name, value in speed.items() if name != "hf_fp32"},
            "packed_linear_weights_over_fp16_linear_weights_bytes":
                sizes["packed_linear_weights"] / sizes["fp16_linear_weights"]}


def report(args, dense, student, prompt: list[int], work: Path) -> None:
    """Export into `work`, measure sizes and decode speed, print the table and write the results file."""
    build_tokenizer(work / "tokenizer")
    dense.save_pretrained(work / "hf_fp32")
    write_packed_checkpoint(student, work / "packed", verify_input_ids=torch.tensor([prompt]))
    sizes = {"hf_fp32": directory_bytes(work / "hf_fp32"), "packed": directory_bytes(work / "packed")}
    packed_linear, fp16_linear = linear_weight_bytes(work / "packed")
    sizes.update({"packed_linear_weights": packed_linear, "fp16_linear_weights": fp16_linear})
    decoders_ = {"hf_fp32": hf_decoder(dense, prompt, args.tokens)}
    for qtype in ("TQ2_0", "TQ1_0"):
        path = write_gguf(student, work / "tokenizer", work / f"student-{qtype}.gguf", qtype=qtype)
        sizes[f"gguf_{qtype}"] = path.stat().st_size
        try:
            decoders_[f"llama_cpp_{qtype}"] = llama_cpp_decoder(path, prompt, args.tokens, args.threads)
        except ImportError:
            pass

    for decode in decoders_.values():  # warm-up
        decode()
    seconds = {name: [] for name in decoders_}
    for _ in range(args.runs):
        for name, decode in decoders_.items():
            start = time.perf_counter()
            decode()
            seconds[name].append(time.perf_counter() - start)
    speed = {name: args.tokens / statistics.median(times) for name, times in seconds.items()}
    compared = ratios(sizes, speed)

    print(f"student: llama hidden={args.hidden} intermediate={args.intermediate} layers={args.layers} "
          f"vocab={args.vocab}")
    print(f"{'file':<24}{'MiB':>10}{'vs hf_fp32':>12}")
    for name, size in sizes.items():
        print(f"{name:<24}{size / 2**20:>10.2f}{compared.get(f'{name}_over_hf_fp32_bytes', 1.0):>12.3f}")
    print("packed linear weights / fp16 linear weights: "
          f"{compared['packed_linear_weights_over_fp16_linear_weights_bytes']:.4f}")
    print(f"{'decode (median of ' + str(args.runs) + ')':<24}{'tok/s':>10}{'vs hf_fp32':>12}"
          f"   (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for name, tokens_per_second in speed.items():
        print(f"{name:<24}{tokens_per_second:>10.1f}"
              f"{compared.get(f'{name}_over_hf_fp32_tokens_per_second', 1.0):>12.2f}")
    write_results("bitnet_export", {"arguments": vars(args), "ratios": compared, "bytes": sizes,
                                    "tokens_per_second": speed, "seconds_per_run": seconds})


if __name__ == "__main__":
    main()
