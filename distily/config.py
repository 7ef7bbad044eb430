"""What a user configures: dataclasses with help text, merged from a YAML/JSON file and CLI flags.

A config file and CLI flags use the same keys; a flag wins over the file. Parsing goes through
``transformers.HfArgumentParser`` so every field is a ``--flag`` with its default and help text,
and the training options are ``transformers.TrainingArguments`` with defaults that suit
distillation.
"""

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from distily.data.framing import PACKINGS
from distily.errors import DistilyConfigError

TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
TEACHER_QUANTIZATIONS = ("none", "8bit", "4bit")
STUDENT_INITS = ("teacher", "random")


def _json_dict(value: Any, key: str) -> dict:
    """A dict given as a dict (from YAML) or as a JSON string (from a CLI flag)."""
    if value is None or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise DistilyConfigError(f"{key}={value!r} is not valid JSON; expected a JSON object such as '{{\"a\": 1}}'")
    if not isinstance(parsed, dict):
        raise DistilyConfigError(f"{key}={value!r} is a JSON {type(parsed).__name__}; expected a JSON object")
    return parsed


def _one_of(value: str, choices: tuple, key: str) -> None:
    if value not in choices:
        raise DistilyConfigError(f"{key}={value!r} is not supported; expected one of {', '.join(choices)}")


@dataclass
class ModelArguments:
    """The teacher and how the student is obtained."""

    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Teacher: a Hugging Face Hub id or a local checkpoint directory (required)."}
    )
    teacher_torch_dtype: str = field(
        default="auto", metadata={"help": f"Teacher weights dtype, one of {', '.join(TORCH_DTYPES)}."}
    )
    teacher_quantization: str = field(
        default="none",
        metadata={
            "help": "Load the teacher quantized by bitsandbytes (LLM.int8 for 8bit, NF4 for 4bit; CPU or GPU; "
            f"`pip install distily[quantization]`), one of {', '.join(TEACHER_QUANTIZATIONS)}. The student is "
            "still built from the full-precision weights."
        },
    )
    student_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Student from a Hub id or local checkpoint. Default: built from the teacher's config."},
    )
    student_config_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Student from a separate config (a config.json file, a directory or a Hub id)."},
    )
    student_config_overrides: Optional[str] = field(
        default=None,
        metadata={
            "help": "JSON object of config keys to change in the teacher's config for the student, e.g. "
            '\'{"num_hidden_layers": 6}\'. Architecture-specific names (GPT-2\'s n_layer, n_embd) work too.'
        },
    )
    student_init: str = field(
        default="teacher",
        metadata={
            "help": "How a student built from a config is initialised: 'teacher' copies teacher layers (and "
            "embeddings, final norm and LM head where shapes match); 'random' keeps the random init."
        },
    )
    student_layers_from_teacher: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Teacher layer index copied into each student layer (student_init=teacher). Default: evenly "
            "spaced, first and last included."
        },
    )
    copy_teacher_modules: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Named teacher modules copied into the student whatever the init, e.g. model.embed_tokens."},
    )
    freeze_student_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Named student modules whose parameters are not trained, e.g. model.embed_tokens; 'embeddings' "
            "and 'lm_head' name the input embeddings and the output layer of any architecture."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub for teacher and student."}
    )
    student_as_bitnet: bool = field(
        default=False,
        metadata={
            "help": "Make the student BitNet b1.58: every linear projection in its decoder blocks becomes ternary "
            "(absmean weights, int8 absmax activations, straight-through gradients), starting from its weights."
        },
    )
    bitnet_input_norm: bool = field(
        default=False, metadata={"help": "BitNet: an RMSNorm at the input of each ternary layer (the BitNet recipe)."}
    )
    bitnet_subln: bool = field(
        default=False, metadata={"help": "BitNet: insert SubLN norms before the attention output and MLP down projections."}
    )

    def __post_init__(self):
        _one_of(self.teacher_torch_dtype, TORCH_DTYPES, "teacher_torch_dtype")
        _one_of(self.teacher_quantization, TEACHER_QUANTIZATIONS, "teacher_quantization")
        _one_of(self.student_init, STUDENT_INITS, "student_init")
        self.student_config_overrides = _json_dict(self.student_config_overrides, "student_config_overrides")
        sources = [
            name
            for name in ("student_model_name_or_path", "student_config_name_or_path")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            raise DistilyConfigError(
                "student_model_name_or_path and student_config_name_or_path are both set; expected at most one"
            )
        if self.student_model_name_or_path is not None and self.student_config_overrides:
            raise DistilyConfigError(
                "student_config_overrides is set with student_model_name_or_path; overrides apply to a student "
                "built from a config, expected student_config_name_or_path or no student source"
            )


PACKING_HELP = (
    "How documents become blocks: stream (EOS-separated, cut into full blocks: GPT-2, Qwen), bos_blocks (every "
    "block opens with BOS, documents masked apart: Llama, Mistral, Gemma), documents (whole documents best-fit "
    "into blocks, masked apart, padded) or auto (documents when the tokenizer adds BOS, else stream; "
    "pre-tokenized rows as documents). See docs/data.md."
)
TEXT_DOCUMENT_DELIMITER_HELP = (
    "What one document is in a .txt file (line breaks are kept inside it): blank_line (blocks separated by blank "
    "lines, the usual paragraph or article layout), line (one record per line), file (the whole file) or a regular "
    "expression that starts a document (e.g. WikiText's articles: '^ = [^=]')."
)


@dataclass
class DataArguments:
    """The text the student learns from, and how it is tokenized, packed and split."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub dataset id, or a local path: a txt/jsonl/json/parquet file, a directory of them, or a "
            "dataset saved with save_to_disk (required)."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset subset (config) name."})
    dataset_split: str = field(default="train", metadata={"help": "Dataset split to read."})
    dataset_text_column: str = field(
        default="text",
        metadata={"help": "Column holding the text. A dataset with an input_ids column is used pre-tokenized."},
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Length of the packed sequences. Default: the smaller of the models' limit and 1024."},
    )
    packing: str = field(default="auto", metadata={"help": PACKING_HELP})
    text_document_delimiter: str = field(default="blank_line", metadata={"help": TEXT_DOCUMENT_DELIMITER_HELP})
    max_samples: Optional[int] = field(
        default=None, metadata={"help": "Limit on the number of packed training sequences."}
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of documents held out for evaluation (split before packing, so no overlap)."},
    )
    max_eval_samples: Optional[int] = field(
        default=256, metadata={"help": "Limit on the number of packed evaluation sequences."}
    )
    tokenization_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where tokenized datasets are cached. Default: $HF_HOME/distily/tokenized."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes used to tokenize (datasets.map num_proc)."}
    )

    def __post_init__(self):
        if not 0.0 < self.eval_fraction < 1.0:
            raise DistilyConfigError(f"eval_fraction={self.eval_fraction} is out of range; expected 0 < x < 1")
        _one_of(self.packing, PACKINGS, "packing")
        for name in ("max_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DistilyConfigError(f"{name}={value} must be a positive integer")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise DistilyConfigError(f"max_seq_length={self.max_seq_length} is too short; expected at least 2")


ATTENTION_HEAD_MATCHING = ("group", "mean")
ATTENTION_RELATION_KINDS = ("query", "key", "value")
LAYER_MAP_HELP = (
    "a name in LAYER_MAPS: all, last, last_k, uniform, uniform_last, pairs or indices (see docs/objectives.md). "
    "Index i is the output of block i, 0 the embeddings."
)
LAYER_MAP_KWARGS_HELP = (
    'JSON object of layer-map parameters: \'{"k": 2}\' for last_k, \'{"pairs": [[1, 2], [2, 4]]}\' for pairs, '
    '\'{"indices": [1, 2]}\' for indices.'
)


@dataclass
class ObjectiveArguments:
    """What the student is trained to match: weighted components, each logged on its own."""

    logits_loss: str = field(
        default="forward_kl", metadata={"help": "Loss between student and teacher logits (a name in LOSSES)."}
    )
    logits_weight: float = field(default=1.0, metadata={"help": "Weight of the logit component (0 disables it)."})
    logits_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the logit loss; the loss is scaled by T^2."}
    )
    logits_loss_kwargs: Optional[str] = field(
        default=None, metadata={"help": 'JSON object of extra loss parameters, e.g. \'{"beta": 0.5}\'.'}
    )
    hard_label_weight: float = field(
        default=0.0, metadata={"help": "Weight of the next-token cross-entropy on the data itself (0 disables it)."}
    )
    hidden_states_weight: float = field(
        default=0.0, metadata={"help": "Weight of hidden-state distillation (0 disables it)."}
    )
    hidden_states_layer_map: str = field(
        default="all", metadata={"help": f"Which student hidden state learns from which teacher one: {LAYER_MAP_HELP}"}
    )
    hidden_states_layer_map_kwargs: Optional[str] = field(default=None, metadata={"help": LAYER_MAP_KWARGS_HELP})
    hidden_states_projector: str = field(
        default="linear",
        metadata={
            "help": "Maps the student's width to the teacher's, trained with the student and never exported: "
            "identity, linear, orthogonal or mlp (a name in PROJECTORS); one per layer pair."
        },
    )
    hidden_states_norm: str = field(
        default="none",
        metadata={
            "help": "Normalisation before the loss: none, layernorm (both sides), teacher_only, or affine (learned "
            "gain and bias on the student side) (a name in NORMS)."
        },
    )
    hidden_states_loss: str = field(
        default="mse", metadata={"help": "Hidden-state loss per token: mse or cosine (a name in FEATURE_LOSSES)."}
    )
    attentions_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of attention-probability distillation, KL(teacher || student) per attention row (0 "
            "disables it). Needs attention probabilities, so both models then run eager attention."
        },
    )
    attentions_layer_map: str = field(
        default="all", metadata={"help": f"Which student attention learns from which teacher one: {LAYER_MAP_HELP}"}
    )
    attentions_layer_map_kwargs: Optional[str] = field(default=None, metadata={"help": LAYER_MAP_KWARGS_HELP})
    attentions_heads: str = field(
        default="group",
        metadata={
            "help": "How heads meet: group (the model with more heads averaged in contiguous groups down to the "
            "other's count; one count must divide the other) or mean (all heads of each model averaged)."
        },
    )
    attention_relations_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of MiniLMv2 attention-relation distillation (q-q, k-k, v-v) (0 disables it). q/k/v are "
            "captured by hooks, so the models keep their attention implementation."
        },
    )
    attention_relations_layer_map: str = field(
        default="last", metadata={"help": f"Which student block learns from which teacher block: {LAYER_MAP_HELP}"}
    )
    attention_relations_layer_map_kwargs: Optional[str] = field(default=None, metadata={"help": LAYER_MAP_KWARGS_HELP})
    attention_relations_heads: Optional[int] = field(
        default=None,
        metadata={
            "help": "Relation heads each q/k/v width is split into, the same for both models. Default: the greatest "
            "common divisor of both models' head and KV-head counts."
        },
    )
    attention_relations_kinds: list[str] = field(
        default_factory=lambda: list(ATTENTION_RELATION_KINDS),
        metadata={"help": "Relations distilled: any of query, key, value (for q-q, k-k, v-v)."},
    )

    def __post_init__(self):
        self.logits_loss_kwargs = _json_dict(self.logits_loss_kwargs, "logits_loss_kwargs")
        for name in ("hidden_states", "attentions", "attention_relations"):
            key = f"{name}_layer_map_kwargs"
            setattr(self, key, _json_dict(getattr(self, key), key))
        if self.logits_temperature <= 0:
            raise DistilyConfigError(f"logits_temperature={self.logits_temperature} must be > 0")
        weights = ("logits_weight", "hard_label_weight", "hidden_states_weight", "attentions_weight",
                   "attention_relations_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if all(getattr(self, name) == 0 for name in weights):
            raise DistilyConfigError(f"{', '.join(weights)} are all 0; expected a component to train")
        _one_of(self.attentions_heads, ATTENTION_HEAD_MATCHING, "attentions_heads")
        if self.attention_relations_heads is not None and self.attention_relations_heads < 1:
            raise DistilyConfigError(
                f"attention_relations_heads={self.attention_relations_heads} must be a positive integer"
            )
        kinds = self.attention_relations_kinds
        if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(ATTENTION_RELATION_KINDS):
            raise DistilyConfigError(
                f"attention_relations_kinds={kinds!r} is not supported; expected distinct values among "
                f"{', '.join(ATTENTION_RELATION_KINDS)}"
            )


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` with defaults for distillation and a few additions."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where the student, checkpoints, logs and metrics.json are written (required)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir instead of refusing to start."}
    )
    bitnet_schedule: bool = field(
        default=False,
        metadata={
            "help": "BitNet two-stage schedule (needs student_as_bitnet): the learning rate drops at "
            "bitnet_stage_boundary, and weight decay, applied only to latent ternary weights, goes to 0 there."
        },
    )
    bitnet_stage_boundary: float = field(
        default=0.5, metadata={"help": "Fraction of the training steps where the BitNet schedule's second stage starts."}
    )
    max_nonfinite_steps: int = field(
        default=5,
        metadata={"help": "Optimizer steps with non-finite gradients are skipped; this many in a row stop the run."},
    )
    memory_check: bool = field(
        default=True,
        metadata={"help": "Estimate the peak memory before training, print it, and refuse a run that cannot fit."},
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of the student (AdamW)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warmup: a number of steps, or a fraction of the training steps if < 1."}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Sequences per device per step."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per device in evaluation."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (a fraction: of the run)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: no, steps or epoch."})
    eval_steps: Optional[float] = field(default=0.25, metadata={"help": "Evaluate every N steps (< 1: a fraction)."})
    save_steps: float = field(default=0.25, metadata={"help": "Checkpoint every N steps (< 1: a fraction)."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept, the newest (0: all)."})
    report_to: Optional[str] = field(default="tensorboard", metadata={"help": "Loggers: tensorboard, wandb, none..."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all dataset columns (needed)."})
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count the tokens read in training (metrics.json's tokens_seen): non_padding (real tokens), "
                  "all (padding too) or no."},
    )
    ddp_find_unused_parameters: Optional[bool] = field(
        default=None,
        metadata={"help": "DDP: search the graph for parameters without gradients every step (it costs time). "
                  "Default: off when the objective has a logit or hard-label term, so every trainable student "
                  "parameter gets a gradient; on for feature-only objectives, which may leave later layers without."},
    )

    def __post_init__(self):
        if self.output_dir is None:
            raise DistilyConfigError("output_dir is not set; expected a directory for the student and its logs")
        if not 0 < self.bitnet_stage_boundary < 1:
            raise DistilyConfigError(f"bitnet_stage_boundary={self.bitnet_stage_boundary} is out of range; expected 0 < x < 1")
        if self.max_nonfinite_steps < 1:
            raise DistilyConfigError(f"max_nonfinite_steps={self.max_nonfinite_steps} must be a positive integer")
        self._check_training_values()
        counted = {"true": "all", "false": "no"}.get(str(self.include_num_input_tokens_seen).lower())
        self.include_num_input_tokens_seen = counted or self.include_num_input_tokens_seen
        _one_of(self.include_num_input_tokens_seen, ("non_padding", "all", "no"), "include_num_input_tokens_seen")
        if not torch.accelerator.is_available():
            self.use_cpu = True  # lets bf16 mean CPU autocast on machines without an accelerator
        super().__post_init__()

    def _check_training_values(self) -> None:
        """Values the Trainer would take and then train nothing with, or fail on deep inside a step."""
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise DistilyConfigError(f"learning_rate={self.learning_rate} must be > 0; expected e.g. 1e-4")
        if self.weight_decay < 0:
            raise DistilyConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            why = "is not usable"
            if self.max_steps == 0:
                why = "trains nothing (an untrained student would be written as a finished run)"
            raise DistilyConfigError(
                f"max_steps={self.max_steps} {why}; expected a positive number of optimizer steps, or -1 to train "
                "num_train_epochs"
            )
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise DistilyConfigError(
                f"num_train_epochs={self.num_train_epochs} with max_steps=-1 trains nothing; expected num_train_epochs "
                "> 0 or a positive max_steps"
            )


TEACHER_SOURCES = ("live", "recorded")
RECORD_BACKENDS = ("hf", "vllm")


@dataclass
class RecordArguments:
    """Recording the teacher once (``distily record``) and training students from the record."""

    teacher_source: str = field(
        default="live",
        metadata={
            "help": "Where the teacher's outputs come from: live (the teacher runs at every step) or recorded (read "
            "from teacher_store; the teacher is not loaded, except once to copy layers into the student)."
        },
    )
    teacher_store: Optional[str] = field(
        default=None,
        metadata={"help": "Directory of a recorded-teacher store: written by `distily record`, read when "
                  "teacher_source=recorded (see docs/recording.md)."},
    )
    record_top_k: int = field(
        default=64,
        metadata={"help": "Teacher log-probabilities kept per token (the largest k, plus the tail's total mass). "
                  "The recording temperature is logits_temperature."},
    )
    record_hidden_states_layers: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Teacher hidden states to record, as indices into hidden_states (0: embeddings, i: the "
                  "output of block i). Default: none."},
    )
    record_shard_size: int = field(default=256, metadata={"help": "Sequences per store shard (the unit of resume)."})
    record_backend: str = field(
        default="hf",
        metadata={"help": f"Recording back end, one of {', '.join(RECORD_BACKENDS)}: hf (batched Transformers "
                  "forward, any device) or vllm (prompt log-probs; needs the vllm package and a GPU)."},
    )

    def __post_init__(self):
        _one_of(self.teacher_source, TEACHER_SOURCES, "teacher_source")
        _one_of(self.record_backend, RECORD_BACKENDS, "record_backend")
        for name in ("record_top_k", "record_shard_size"):
            if getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        layers = self.record_hidden_states_layers or []
        if any(index < 0 for index in layers) or len(set(layers)) != len(layers):
            raise DistilyConfigError(
                f"record_hidden_states_layers={layers} is not supported; expected distinct indices >= 0"
            )
        if self.teacher_source == "recorded" and self.teacher_store is None:
            raise DistilyConfigError(
                "teacher_source='recorded' needs teacher_store; expected the directory written by `distily record`"
            )


@dataclass
class GenerateArguments:
    """Synthetic data (``distily generate``): sequences sampled from the teacher."""

    generate_output: Optional[str] = field(
        default=None,
        metadata={"help": "Where the samples go: a .jsonl file, or a directory written with save_to_disk; both hold "
                  "input_ids and text columns, usable as dataset_name."},
    )
    generate_num_samples: int = field(default=1000, metadata={"help": "Number of sequences sampled."})
    generate_length: int = field(
        default=256, metadata={"help": "Tokens sampled per sequence (a sampled end-of-text token ends it earlier)."}
    )
    generate_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the first token."})
    generate_final_temperature: Optional[float] = field(
        default=None,
        metadata={"help": "Temperature of the last token; it moves linearly from generate_temperature along the "
                  "sequence. Default: constant generate_temperature."},
    )
    generate_top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling: keep the smallest token set with this much probability."}
    )
    generate_record: bool = field(
        default=False,
        metadata={"help": "Also record the teacher over the samples into teacher_store in the same command, with "
                  "the teacher already loaded."},
    )

    def __post_init__(self):
        for name in ("generate_num_samples", "generate_length"):
            if getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("generate_temperature", "generate_final_temperature"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise DistilyConfigError(f"{name}={value} must be > 0")
        if not 0.0 < self.generate_top_p <= 1.0:
            raise DistilyConfigError(f"generate_top_p={self.generate_top_p} is out of range; expected 0 < x <= 1")


EVAL_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
EVAL_SET_KEYS = ("path", "config", "split", "text_column", "max_samples")
HELDOUT_SET = "heldout"  # the held-out split of the training dataset, always evaluated


def _eval_sets(value: Any) -> dict[str, dict]:
    """``eval_datasets`` as ``{name: {path, config, split, text_column, max_samples}}``."""
    sets = {}
    for name, spec in _json_dict(value, "eval_datasets").items():
        where = f"eval_datasets[{name!r}]"
        if not EVAL_SET_NAME.match(name) or name == HELDOUT_SET:
            raise DistilyConfigError(
                f"{where}: the name is not usable; expected letters, digits, '_', '.' or '-', and not "
                f"{HELDOUT_SET!r}"
            )
        spec = {"path": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise DistilyConfigError(f"{where}={spec!r}; expected a path or Hub id, or an object with a 'path'")
        unknown = sorted(set(spec) - set(EVAL_SET_KEYS))
        if unknown:
            raise DistilyConfigError(
                f"{where} has unknown key {unknown[0]!r}; expected keys among {', '.join(EVAL_SET_KEYS)}"
            )
        max_samples = spec.get("max_samples")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise DistilyConfigError(f"{where} max_samples={max_samples!r} must be a positive integer")
        sets[name] = {"config": None, "split": "train", "text_column": "text", "max_samples": None, **spec}
    return sets


@dataclass
class EvaluationArguments:
    """What is measured besides the objective: perplexity sets, overlap with the training data, benchmarks."""

    eval_datasets: Optional[str] = field(
        default=None,
        metadata={
            "help": "JSON object of named perplexity sets, measured for teacher and student at every evaluation. "
            "A value is a Hub dataset id or a local path (txt/jsonl/json/parquet file or directory), or an object "
            "with path, config, split (slices such as train[:2000] work), text_column and max_samples (default: "
            'max_eval_samples), e.g. \'{"recent": "data/wiki_2025.jsonl", "fr": {"path": "wikimedia/wikipedia", '
            '"config": "20231101.fr", "split": "train[:2000]"}}\'.'
        },
    )
    eval_overlap_ngram: int = field(
        default=13,
        metadata={
            "help": "Eval sets and the held-out split are checked against the training sequences by content: a "
            "sequence overlaps when it shares a span of this many tokens with one. Overlaps are reported "
            "(metrics.json, model card). 0 skips the check."
        },
    )
    lm_eval_tasks: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "lm-evaluation-harness tasks run after training on the student and on the teacher (cached), "
            "e.g. mmlu_pro hellaswag, or tasks defined in lm_eval_include_path. Needs `pip install distily[eval]`."
        },
    )
    lm_eval_include_path: Optional[str] = field(
        default=None,
        metadata={"help": "Directory of local lm-eval task YAML files (with local data files, so they run offline)."},
    )
    lm_eval_limit: Optional[float] = field(
        default=None,
        metadata={
            "help": "Examples per lm-eval task: a count, or a fraction if < 1. Default: all. A limited run is a "
            "sample, and its scores are marked so."
        },
    )
    lm_eval_num_fewshot: Optional[int] = field(
        default=None, metadata={"help": "Few-shot examples per lm-eval prompt. Default: each task's own."}
    )
    lm_eval_bootstrap_iters: int = field(
        default=100000,
        metadata={"help": "Bootstrap iterations for lm-eval standard errors of non-mean metrics (0: no stderr)."},
    )
    lm_eval_cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Where the teacher's lm-eval results are kept, by teacher, tasks and settings, so a teacher is "
            "benchmarked once. Default: $HF_HOME/distily/lm_eval."
        },
    )

    def __post_init__(self):
        self.eval_datasets = _eval_sets(self.eval_datasets)
        for name in ("eval_overlap_ngram", "lm_eval_bootstrap_iters", "lm_eval_num_fewshot"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DistilyConfigError(f"{name}={value} must be >= 0")
        limit = self.lm_eval_limit
        if limit is not None:
            if limit <= 0 or (limit >= 1 and limit != int(limit)):
                raise DistilyConfigError(
                    f"lm_eval_limit={limit} is not usable; expected a count, or a fraction 0 < x < 1"
                )
            self.lm_eval_limit = int(limit) if limit >= 1 else limit
        if self.lm_eval_include_path is not None:
            if not os.path.isdir(os.path.expanduser(self.lm_eval_include_path)):
                raise DistilyConfigError(
                    f"lm_eval_include_path={self.lm_eval_include_path!r} is not a directory; expected a directory of "
                    "lm-eval task YAML files"
                )
            if not self.lm_eval_tasks:
                raise DistilyConfigError(
                    f"lm_eval_include_path={self.lm_eval_include_path!r} is set without lm_eval_tasks; expected the "
                    "names of the tasks to run"
                )


@dataclass
class EvalCommandArguments:
    """``distily eval``: the model to evaluate, its teacher, and where the results go."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The model evaluated: a Hub id or a local checkpoint directory (required)."}
    )
    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Its teacher, evaluated beside it and compared to it (optional)."}
    )
    torch_dtype: str = field(
        default="auto", metadata={"help": f"Weights dtype of both models, one of {', '.join(TORCH_DTYPES)}."}
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Length of the packed sequences. Default: the smaller of the models' limit and 1024."},
    )
    packing: str = field(default="auto", metadata={"help": PACKING_HELP})
    text_document_delimiter: str = field(default="blank_line", metadata={"help": TEXT_DOCUMENT_DELIMITER_HELP})
    max_eval_samples: Optional[int] = field(
        default=256, metadata={"help": "Limit on the packed sequences of each eval set."}
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per batch."})
    tokenization_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where tokenized eval sets are cached. Default: $HF_HOME/distily/tokenized."}
    )
    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where eval.json, results.md and the comparison plot are written (optional)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub for both models."}
    )

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise DistilyConfigError("no model to evaluate; expected `distily eval MODEL` (a Hub id or a checkpoint)")
        _one_of(self.torch_dtype, TORCH_DTYPES, "torch_dtype")
        _one_of(self.packing, PACKINGS, "packing")
        for name in ("max_seq_length", "max_eval_samples", "per_device_eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DistilyConfigError(f"{name}={value} must be a positive integer")


CONFIG_CLASSES = (
    ModelArguments,
    DataArguments,
    ObjectiveArguments,
    DistillationTrainingArguments,
    RecordArguments,
    GenerateArguments,
    EvaluationArguments,
)


@dataclass
class DistillConfig:
    """Everything ``distily distill`` runs with, one dataclass per concern."""

    model: ModelArguments
    data: DataArguments
    objective: ObjectiveArguments
    training: DistillationTrainingArguments
    record: RecordArguments
    generate: GenerateArguments
    evaluation: EvaluationArguments

    def __post_init__(self):
        if self.training.ddp_find_unused_parameters is None:
            reaches_output = self.objective.logits_weight > 0 or self.objective.hard_label_weight > 0
            self.training.ddp_find_unused_parameters = not reaches_output


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line ``DistilyConfigError``s instead of usage dumps."""

    def error(self, message):
        raise DistilyConfigError(message)


def make_parser(prog: str = "distily distill") -> HfArgumentParser:
    return _Parser(
        CONFIG_CLASSES,
        prog=prog,
        allow_abbrev=False,
        usage=f"{prog} [CONFIG.yaml] [--key value ...]",
        description="Distill a teacher into a student. Every key of CONFIG.yaml is also a flag; flags win.",
    )


def _known_keys() -> set[str]:
    return {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}


class _KeyGivenTwice(Exception):
    def __init__(self, key, first_line: int, line: int):
        super().__init__(key, first_line, line)
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _KeyGivenTwice(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: YAML's own error follows
                break
        return super().construct_mapping(node, deep)


def read_config_file(path: str) -> dict:
    """Read a YAML or JSON config file into a flat dict of keys; a key given twice is an error."""
    if not os.path.isfile(path):
        raise DistilyConfigError(f"config file {path!r} does not exist; expected a YAML or JSON file")
    try:
        data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise DistilyConfigError(f"config file {path!r} is not valid YAML: {str(err).splitlines()[0]}")
    except _KeyGivenTwice as twice:
        lines = f"lines {twice.first_line} and {twice.line}" if twice.first_line != twice.line else f"line {twice.line}"
        raise DistilyConfigError(f"config file {path!r} sets {twice.key!r} twice ({lines}); expected each key once")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistilyConfigError(f"config file {path!r} holds a {type(data).__name__}; expected a mapping of keys")
    return data


def check_keys(keys) -> None:
    known = _known_keys()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DistilyConfigError(f"unknown config key {key!r}{hint}; see `distily distill --help` for the keys")


def _as_flags(config: dict) -> list[str]:
    """Turn file values into the flags they stand for, so both go through one parser and its checks."""
    argv = []
    for key, value in config.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_config(
    config_path: Optional[str] = None,
    argv: Optional[list[str]] = None,
    defaults: Optional[dict] = None,
    **values,
) -> DistillConfig:
    """Build a ``DistillConfig`` from a config file, CLI flags and keyword values (later sources win);
    ``defaults`` fill keys that none of them sets (a command's own defaults)."""
    file_values = read_config_file(config_path) if config_path else {}
    check_keys(file_values)
    check_keys(values)
    flags = _as_flags(defaults or {}) + _as_flags(file_values) + list(argv or []) + _as_flags(values)
    parser = make_parser()
    _, remaining = parser.parse_known_args(flags)
    if remaining:
        unknown = next((a for a in remaining if a.startswith("--")), remaining[0])
        check_keys([unknown.lstrip("-").split("=")[0]])
        raise DistilyConfigError(f"unexpected argument {unknown!r}; expected --key value pairs")
    try:
        configs = parser.parse_args_into_dataclasses(args=flags)
    except DistilyConfigError:
        raise
    except ValueError as err:  # raised by TrainingArguments.__post_init__ and friends
        raise DistilyConfigError(str(err).strip().splitlines()[0])
    return DistillConfig(*configs)


def make_eval_parser() -> HfArgumentParser:
    return _Parser(
        (EvalCommandArguments, EvaluationArguments),
        prog="distily eval",
        allow_abbrev=False,
        usage="distily eval MODEL [--teacher_model_name_or_path TEACHER] [--key value ...]",
        description="Evaluate a model, beside its teacher: perplexity sets, agreement, lm-eval tasks.",
    )


def parse_eval_config(argv: list[str]) -> tuple[EvalCommandArguments, EvaluationArguments]:
    """``distily eval`` flags: the command's own arguments and the evaluation settings ``distill`` shares."""
    parser = make_eval_parser()
    _, remaining = parser.parse_known_args(argv)
    if remaining:
        raise DistilyConfigError(f"unexpected argument {remaining[0]!r}; expected a key of `distily eval --help`")
    command, evaluation = parser.parse_args_into_dataclasses(args=argv)
    return command, evaluation
