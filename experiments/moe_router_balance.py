"""Does a mixture-of-experts student trained from random weights keep its experts busy without its router loss?

    OMP_NUM_THREADS=1 python experiments/moe_router_balance.py [--work_dir runs/moe_router_balance] [--max_steps 300]

The demo's run (``distily demo``: the bundled teacher, its Python-documentation corpus, forward KL) into a random
Mixtral student of the teacher's width (2 layers, 8 experts 128 wide, 2 a token), without its router load-balancing
loss and with it (``output_router_logits``, weighted by ``router_aux_loss_coef``). Prints a markdown table of each
student's tokens per expert on the held-out rows (the coefficient of variation and the busiest expert's share, per
layer) and its held-out KL to the teacher.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, MixtralConfig

from distily.commands.demo import TEACHER_DIR, demo_values
from distily.config import parse_config
from distily.data.arguments import DataArguments
from distily.data.training_data import build_datasets
from distily.demo.corpus import write_corpus
from distily.training.distill import run_distillation

COEFFICIENTS = {"without": None, "0.01": 0.01}  # the router loss's weight (None: off)


def student_config(coefficient) -> MixtralConfig:
    teacher = AutoConfig.from_pretrained(TEACHER_DIR)
    router = {} if coefficient is None else {"output_router_logits": True, "router_aux_loss_coef": coefficient}
    shared = {key: getattr(teacher, key) for key in ("vocab_size", "hidden_size", "num_attention_heads",
                                                     "num_key_value_heads", "max_position_embeddings",
                                                     "bos_token_id", "eos_token_id")}
    return MixtralConfig(num_hidden_layers=2, intermediate_size=128, num_local_experts=8, num_experts_per_tok=2,
                         **shared, **router)


def tokens_per_expert(student, rows) -> torch.Tensor:
    """[layers, experts]: the routed slots each expert took over ``rows``."""
    counts = 0
    with torch.no_grad():
        for row in rows:
            router_logits = student(input_ids=row["input_ids"][None], output_router_logits=True).router_logits
            picked = [logits.topk(student.config.num_experts_per_tok, -1).indices.flatten() for logits in router_logits]
            experts = student.config.num_local_experts
            counts = counts + torch.stack([torch.bincount(slots, minlength=experts) for slots in picked])
    return counts.float()


def run_student(name: str, coefficient, work_dir: Path, max_steps) -> dict:
    out = work_dir / name
    config_dir = work_dir / f"{name}_student_config"  # outside output_dir, which holds the run's outputs
    student_config(coefficient).save_pretrained(config_dir)
    values = {**demo_values(str(out), max_steps), "student_config_name_or_path": str(config_dir),
              "student_config_overrides": {}, "report_to": "none"}
    config = parse_config(**values)
    write_corpus(config.data.dataset_name)
    metrics = run_distillation(config, command=f"experiments/moe_router_balance.py ({name})")
    tokenizer = AutoTokenizer.from_pretrained(out)
    data = build_datasets(DataArguments(dataset_name=config.data.dataset_name,
                                        tokenization_cache_dir=str(out / "cache")), tokenizer, 128, seed=0)
    counts = tokens_per_expert(AutoModelForCausalLM.from_pretrained(out).eval(), data.eval.with_format("torch"))
    return {"cv": counts.std(-1, unbiased=False) / counts.mean(-1), "busiest": counts.max(-1).values / counts.sum(-1),
            "kl": metrics["student"]["after_kl_to_teacher"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="runs/moe_router_balance")
    parser.add_argument("--max_steps", type=int, default=None, help="training steps (default: the demo's)")
    args = parser.parse_args()
    print("| router loss | CV of tokens per expert, by layer | busiest expert's share | held-out KL |")
    print("|---|---|---|---:|")
    for name, coefficient in COEFFICIENTS.items():
        found = run_student(name, coefficient, Path(args.work_dir), args.max_steps)
        cv, busiest = (", ".join(f"{value:.2f}" for value in found[key]) for key in ("cv", "busiest"))
        print(f"| {name} | {cv} | {busiest} | {found['kl']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
