"""``distily demo``: distill the bundled teacher into a 2-layer student on Python's own documentation,
offline and on a CPU, and print teacher against student."""

import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from distily.arguments import file_in_the_way
from distily.config import ArgumentParser, parse_config
from distily.demo import TEACHER_DIR
from distily.demo.corpus import write_corpus
from distily.errors import DistilyConfigError
from distily.metrics import RunMetrics
from distily.models.precision import bf16_is_fast
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir

DEMO_STEPS = 300


def demo_values(output_dir: str, max_steps: Optional[int] = None) -> dict:
    """The demo's configuration, as the keys a config file would hold."""
    return {
        "teacher_model_name_or_path": str(TEACHER_DIR),
        "student_config_overrides": {"num_hidden_layers": 2},
        "student_init": "random",
        "dataset_name": str(Path(output_dir) / "data" / "python_docs.jsonl"),  # written once the config is valid
        "max_seq_length": 128,
        "max_eval_samples": 64,
        "output_dir": output_dir,
        "overwrite_output_dir": True,
        "max_steps": DEMO_STEPS if max_steps is None else max_steps,
        "per_device_train_batch_size": 16,
        "learning_rate": 3e-3,
        "bf16": bf16_is_fast(),  # fp32 where bf16 matmuls are emulated (CPUs without AVX512-BF16/AMX)
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 25,
        "report_to": "tensorboard",
        "seed": 0,
    }


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def summary_table(metrics: RunMetrics) -> Table:
    teacher, student = metrics.teacher, metrics.student
    before, after = student.before, student.after
    table = Table(title="distily demo: teacher vs student (held-out Python docs)")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student before", justify="right")
    table.add_column("student after", justify="right")
    table.add_row("distillation loss (forward KL)", "0", f"{before.loss:.3f}", f"{after.loss:.3f}")
    table.add_row(
        "next-token loss (nats)", f"{teacher.evaluation.lm_loss:.3f}", f"{before.lm_loss:.3f}", f"{after.lm_loss:.3f}"
    )
    table.add_row(
        "perplexity",
        f"{teacher.evaluation.perplexity:.1f}",
        f"{before.perplexity:.1f}",
        f"{after.perplexity:.1f}",
    )
    table.add_row(
        "bits per byte",
        f"{teacher.evaluation.bits_per_byte:.3f}",
        f"{before.bits_per_byte:.3f}",
        f"{after.bits_per_byte:.3f}",
    )
    table.add_row(
        "top-1 agreement with teacher", "1.000", f"{before.top1_agreement:.3f}", f"{after.top1_agreement:.3f}"
    )
    table.add_row("parameters", f"{teacher.parameters:,}", "", f"{student.parameters:,}")
    table.add_row("size on disk", _size(teacher.size_on_disk_bytes), "", _size(student.size_on_disk_bytes))
    table.add_row("training time", "", "", f"{metrics.train.wall_seconds:.0f} s")
    return table


def check_demo_output_dir(output_dir: str) -> None:
    """The demo replaces its own earlier run (it sets ``overwrite_output_dir``), so ``output_dir`` must be new,
    empty, or an earlier demo's: anything else (a model saved there, another run) is refused before a file is
    written."""
    path = Path(output_dir).expanduser()
    blocked = file_in_the_way(str(path))
    if blocked is not None:
        raise DistilyConfigError(f"output_dir={output_dir!r} {blocked}; expected a new or empty directory, or an "
                                 "earlier demo's")
    if not path.exists() or not any(path.iterdir()):
        return
    recorded = RunDir(path).recorded_settings()
    if recorded is None or recorded.get("teacher_model_name_or_path") != str(TEACHER_DIR):
        raise DistilyConfigError(
            f"output_dir={output_dir!r} exists and holds no earlier demo run, which the demo would replace; "
            "expected a new or empty directory, or an earlier demo's"
        )


def run_demo(output_dir: str, max_steps: Optional[int] = None) -> RunMetrics:
    started = time.perf_counter()
    check_demo_output_dir(output_dir)
    config = parse_config(**demo_values(output_dir, max_steps))
    write_corpus(config.data.dataset_name)
    metrics = RunMetrics.from_dict(run_distillation(config, command="distily demo"))
    console = Console()
    console.print(summary_table(metrics))
    before, after = metrics.student.before.loss, metrics.student.after.loss
    console.print(
        f"held-out distillation loss fell from {before:.3f} to {after:.3f} ({1 - after / before:.0%} lower); "
        f"demo took {time.perf_counter() - started:.0f} s; outputs in {output_dir}"
    )
    return metrics


def main(args: list[str], command_line: str) -> int:
    parser = ArgumentParser(prog="distily demo", description="Offline demo on the bundled teacher.")
    parser.add_argument("--output_dir", default="distily-demo", help="where the demo run is written")
    parser.add_argument("--max_steps", type=int, default=None, help="training steps (default: the demo's own)")
    options = parser.parse_args(args)
    run_demo(options.output_dir, max_steps=options.max_steps)
    return 0
