"""Does a width-pruned student (student_init=pruned) start and end closer to the teacher than a random one?

    OMP_NUM_THREADS=1 python experiments/pruning.py [--work_dir runs/pruning] [--max_steps 300]

The demo's run (``distily demo``: the bundled teacher, Llama, 4 layers, width 192, 6 heads / 2 KV heads, MLP 512;
its Python-documentation corpus; 300 steps of forward KL) for students of about the same size:

- ``pruned``: 4 layers at width 128, 4 heads / 2 KV heads, MLP 256, from the teacher pruned by activation importance
  on the first 256 training rows (``pruning_calibration_samples``);
- ``random``: the same shape, randomly initialised;
- ``depth-only``: the demo's own student, 2 layers of the teacher's width, randomly initialised;
- ``depth-only-teacher``: the same 2 layers copied from teacher layers 0 and 3 (``student_init: teacher``), the
  depth pruning Distily did before width pruning existed;
- ``pruned-mlp``: 4 layers of the teacher's width and heads with the MLP pruned to 176 neurons, the depth-only
  students' parameter count (1.19M against 1.18M), so that width and depth pruning compare at one size.

Prints a markdown table of each student's held-out KL to the teacher and perplexity before and after training.
"""

import argparse
from pathlib import Path

from distily.commands.demo import demo_values
from distily.config import parse_config
from distily.demo.corpus import write_corpus
from distily.metrics import RunMetrics
from distily.training.distill import run_distillation

NARROW = {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 256}
MLP_ONLY = {"num_hidden_layers": 4, "intermediate_size": 176}
STUDENTS = {
    "pruned": {"student_config_overrides": NARROW, "student_init": "pruned"},
    "random": {"student_config_overrides": NARROW, "student_init": "random"},
    "depth-only": {},  # the demo's: {"num_hidden_layers": 2}, random
    "depth-only-teacher": {"student_init": "teacher"},
    "pruned-mlp": {"student_config_overrides": MLP_ONLY, "student_init": "pruned"},
}


def run_student(name: str, overrides: dict, work_dir: Path, max_steps: int) -> RunMetrics:
    values = {**demo_values(str(work_dir / name), max_steps), **overrides, "report_to": "none"}
    config = parse_config(**values)
    write_corpus(config.data.dataset_name)
    return RunMetrics.from_dict(run_distillation(config, command=f"experiments/pruning.py ({name})"))


def table(results: dict[str, RunMetrics]) -> str:
    lines = ["| student | parameters | KL before | KL after | perplexity before | perplexity after | top-1 after |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, metrics in results.items():
        before, after = metrics.student.before, metrics.student.after
        lines.append(f"| {name} | {metrics.student.parameters:,} | {before.loss:.3f} | {after.loss:.3f} | "
                     f"{before.perplexity:.1f} | {after.perplexity:.1f} | {after.top1_agreement:.3f} |")
    teacher = metrics.teacher
    lines.append(f"| teacher | {teacher.parameters:,} | | | {teacher.evaluation.perplexity:.1f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="runs/pruning")
    parser.add_argument("--max_steps", type=int, default=None, help="training steps (default: the demo's)")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    args = parser.parse_args()
    results = {name: run_student(name, STUDENTS[name], Path(args.work_dir), args.max_steps) for name in args.students}
    print(table(results))


if __name__ == "__main__":
    main()
