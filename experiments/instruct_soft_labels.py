"""How much the teacher's logits on the reference answers say beyond the answers themselves.

    python experiments/instruct_soft_labels.py runs/instruct-refs256-seed0-1500 runs/instruct-refs256-seed1-1500 ...

Students (a) and (b) of ``experiments/instruct.py`` train on the same reference conversations: (a) on the answers'
tokens (cross-entropy), (b) on the teacher's distributions at those tokens (the generalized JSD). (b) can only
learn more than (a) where those distributions are soft: where the teacher spreads probability beyond the
reference token. For each ``instruct.py`` work folder given (its ``teacher/`` and ``data/references.jsonl``), this
measures, over every answer token of the reference conversations (the letters and the end of turn, the tokens
both losses count): the teacher's mean and median probability of the reference token, the share of tokens where
it is above 0.99, and the mean entropy of the teacher's distribution (nats; 0 for a one-hot label), at each of
``--temperatures`` (the KD loss's ``logits_temperature``: the teacher's logits divided by it before the softmax).

Writes every number to ``benchmarks/results/instruct_references256_soft_labels.json`` and prints one line a folder.
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from distily.outputs import write_json_atomic

from instruct import tokenized_batch
from wikitext import REPO, command_line

CONFIDENT = 0.99  # a teacher probability above this is as good as a hard label


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dirs", nargs="+", help="instruct.py work folders (--work_dir), each with a teacher")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "instruct_references256_soft_labels.json"))
    return parser.parse_args(argv)


@torch.no_grad()
def soft_labels(work_dir: Path, temperatures: list[float]) -> dict[str, dict]:
    """The teacher's distributions at each of ``temperatures`` at the answer tokens of ``work_dir``'s reference
    conversations, by temperature (its ``:g`` text); the teacher runs once."""
    teacher_dir = work_dir / "teacher"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    lines = (work_dir / "data" / "references.jsonl").read_text().splitlines()
    batch = tokenized_batch([json.loads(line)["messages"] for line in lines], tokenizer)
    logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [rows, seq, vocab]
    targets = batch["labels"][:, 1:]  # [rows, seq - 1]: the token each position predicts, -100 outside answers
    counted = targets != -100  # [rows, seq - 1]
    logits, targets = logits[:, :-1][counted], targets[counted]  # [answer tokens, vocab], [answer tokens]
    found = {}
    for temperature in temperatures:
        log_probs = (logits / temperature).log_softmax(-1)  # [answer tokens, vocab]
        reference = log_probs.gather(1, targets[:, None]).squeeze(1).exp()  # [answer tokens]
        entropy = -(log_probs.exp() * log_probs).sum(-1)  # [answer tokens]
        found[f"{temperature:g}"] = {
            "conversations": len(lines),
            "answer_tokens": len(targets),
            "mean_reference_probability": float(reference.mean()),
            "median_reference_probability": float(reference.median()),
            "share_above_0.99": float((reference > CONFIDENT).float().mean()),
            "mean_entropy_nats": float(entropy.mean()),
        }
    return found


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("instruct_soft_labels.py", argv)
    folders = {work_dir: soft_labels(Path(work_dir), args.temperatures) for work_dir in args.work_dirs}
    for work_dir, by_temperature in folders.items():
        for temperature, found in by_temperature.items():
            print(f"{work_dir}, T {temperature}: teacher's probability of the reference token: mean "
                  f"{found['mean_reference_probability']:.4f}, median {found['median_reference_probability']:.4f}, "
                  f"above {CONFIDENT} at {100 * found['share_above_0.99']:.1f}% of {found['answer_tokens']} tokens; "
                  f"mean entropy {found['mean_entropy_nats']:.4f} nats")
    results = {"command": command, "by_work_dir_and_temperature": folders}
    write_json_atomic(args.json, results)
    return results


if __name__ == "__main__":
    main()
