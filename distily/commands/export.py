"""``distily export RUN_DIR --format packed|gguf``: turn a trained BitNet student into a deployable file."""

from __future__ import annotations

from pathlib import Path

import torch

from distily.config import ArgumentParser
from distily.errors import DistilyConfigError
from distily.export.packed import PACKED_EXPORT, write_packed_checkpoint
from distily.export.report import read_export_report
from distily.models.bitnet import load_bitnet_student
from distily.models.teacher import load_tokenizer
from distily.outputs import check_output

EXPORT_FORMATS = ("packed", "gguf")
# The text llama.cpp's perplexity is checked on after a GGUF export (where llama-cpp-python is installed).
PERPLEXITY_TEXT = (
    "A ternary language model keeps one of three values for each weight and a single scale for each "
    "matrix. Its activations are rounded to eight bits for every token. Trained by distillation from a "
    "larger model, it learns to reproduce the teacher's next-token distribution while taking a small "
    "fraction of the memory, and it runs quickly on an ordinary processor. The export writes the "
    "weights in a packed form and checks that the file computes what the trained model computed."
)
PERPLEXITY_MAX_TOKENS = 128
# Tokens of the fixed random batch the packed export is checked on: [batch, seq].
VERIFY_BATCH, VERIFY_SEQUENCE = 2, 32
DEFAULT_GGUF_TYPE = "TQ2_0"


def default_output(run_dir: Path, format: str, qtype: str = DEFAULT_GGUF_TYPE) -> Path:
    """Where an export goes when no output is given: inside the run directory."""
    return run_dir / ("packed" if format == "packed" else f"student-{qtype.lower()}.gguf")


def export_run(run_dir: str | Path, format: str, output: str | Path | None = None, *, qtype: str = DEFAULT_GGUF_TYPE,
               overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Export the BitNet student saved in `run_dir` and verify what was written; returns the output path.

    format "packed": a transformers-loadable checkpoint with 2-bit weights (a directory), checked by
    reloading it and comparing logits with the fake-quantised student. format "gguf": one llama.cpp file
    with `qtype` ternary tensors (TQ2_0 or TQ1_0), checked tensor by tensor and, where llama-cpp-python
    is installed, by llama.cpp's perplexity on PERPLEXITY_TEXT (within 2% of the student's). What was
    checked, and what was not, is in the export's report (distily.export.report.read_export_report).
    `trust_remote_code` lets the run's tokenizer run its custom code (as in the other commands).

    An existing `output` is refused (DistilyConfigError, before the student is loaded) unless
    `overwrite` and it is a previous export of the same format; the run directory, the current
    directory and any directory containing them are never replaced.
    """
    run_dir = Path(run_dir)
    if format not in EXPORT_FORMATS:
        raise DistilyConfigError(
            f"export format '{format}' is not supported; expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise DistilyConfigError(f"run directory '{run_dir}' {what}; expected a run's output_dir (a saved student "
                                 "checkpoint)")
    if not (run_dir / "config.json").is_file():
        raise DistilyConfigError(f"run directory '{run_dir}' has no config.json; expected a saved student checkpoint")
    output = Path(output) if output is not None else default_output(run_dir, format, qtype)
    rules = {"overwrite": overwrite, "protected": {run_dir: "the run directory"}}
    write_gguf, gguf_export = _gguf_writer(qtype) if format == "gguf" else (None, None)
    check_output(output, directory=format == "packed", previous=gguf_export or PACKED_EXPORT, **rules)
    student = load_bitnet_student(run_dir, trust_remote_code=trust_remote_code)
    config = student.config
    if format == "gguf":
        perplexity_ids = _perplexity_ids(run_dir, config, trust_remote_code)
        return write_gguf(student, run_dir, output, qtype=qtype, perplexity_ids=perplexity_ids, **rules)
    sequence = min(VERIFY_SEQUENCE, getattr(config, "max_position_embeddings", VERIFY_SEQUENCE))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (VERIFY_BATCH, sequence), generator=generator)
    return write_packed_checkpoint(student, output, tokenizer_dir=run_dir, verify_input_ids=input_ids, **rules)


def _perplexity_ids(run_dir: Path, config, trust_remote_code: bool) -> torch.Tensor:
    """PERPLEXITY_TEXT tokenised by the run's tokenizer: [seq], at most the model's context."""
    tokenizer = load_tokenizer(str(run_dir), "student", trust_remote_code)
    limit = min(PERPLEXITY_MAX_TOKENS, getattr(config, "max_position_embeddings", PERPLEXITY_MAX_TOKENS))
    return torch.tensor(tokenizer(PERPLEXITY_TEXT)["input_ids"][:limit])


def _gguf_writer(qtype: str):
    """distily.export.gguf's write_gguf and GGUF_EXPORT, once `qtype` is a type it writes (refused before the student
    loads); imported on use because the gguf package is an optional extra."""
    try:
        from distily.export.gguf import GGUF_EXPORT, check_ternary_type, write_gguf
    except ImportError as error:
        raise DistilyConfigError(
            f"GGUF export needs the gguf package ({error}); expected `pip install 'distily[bitnet]'`"
        ) from error
    check_ternary_type(qtype)
    return write_gguf, GGUF_EXPORT


def main(args: list[str], command_line: str) -> int:
    parser = ArgumentParser(prog="distily export", description="Export a BitNet student and verify what was written.")
    parser.add_argument("run_dir", help="a run's output_dir (or any saved BitNet student)")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(EXPORT_FORMATS)}")
    parser.add_argument("--output", default=None, help="where to write (default: inside RUN_DIR)")
    parser.add_argument("--gguf_type", default=None,
                        help=f"GGUF ternary type: TQ2_0 or TQ1_0 (--format gguf; default {DEFAULT_GGUF_TYPE})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output, if it is a previous export of this format (never the run "
                             "directory, the current directory or a directory containing them)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="allow the run's tokenizer to run its custom code (from its tokenizer_config.json)")
    options = parser.parse_args(args)
    if options.gguf_type is not None and options.format != "gguf":
        raise DistilyConfigError(
            f"--gguf_type {options.gguf_type} is a GGUF setting but --format is {options.format!r}; expected "
            "--format gguf, or no --gguf_type"
        )
    path = export_run(options.run_dir, options.format, options.output, qtype=options.gguf_type or DEFAULT_GGUF_TYPE,
                      overwrite=options.overwrite, trust_remote_code=options.trust_remote_code)
    print(read_export_report(path).line(path))  # says which checks did not run, if any
    return 0
