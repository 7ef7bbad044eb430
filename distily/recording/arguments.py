"""What a user configures about the teacher's outputs: where ``distily distill`` reads them from, how
``distily record`` stores them, and how ``distily generate`` samples text from the teacher."""

from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import TrainingArguments

from distily.arguments import check_local_path_exists, check_not_blank, check_seed, field_of, one_of, split_seed
from distily.errors import DistilyConfigError
from distily.generation.arguments import SamplingSettings
from distily.objectives.arguments import ObjectiveArguments
from distily.training.arguments import DistillationTrainingArguments

TEACHER_SOURCES = ("live", "recorded")
RECORD_BACKENDS = ("hf", "vllm")
RESPONSES_COLUMN = "messages"  # the column generate writes its responses to generate_prompts in, whatever is set


@dataclass
class TeacherSourceArguments:
    """Where ``distily distill`` gets the teacher's outputs: the teacher itself, or a store ``distily record`` wrote."""

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

    def __post_init__(self):
        one_of(self.teacher_source, TEACHER_SOURCES, "teacher_source")
        if self.teacher_source == "recorded" and self.teacher_store is None:
            raise DistilyConfigError(
                "teacher_source='recorded' needs teacher_store; expected the directory written by `distily record`"
            )


@dataclass
class RecordArguments:
    """Recording the teacher once (``distily record``): what is kept per token, and where."""

    teacher_store: Optional[str] = field_of(
        TeacherSourceArguments, "teacher_store",
        help="Directory the store is written into (required); a recording with the same settings resumes there.",
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
    logits_temperature: float = field_of(
        ObjectiveArguments, "logits_temperature",
        help="Softmax temperature the teacher is recorded at; a store serves runs at this temperature only.",
    )
    disk_check: bool = field_of(
        DistillationTrainingArguments, "disk_check",
        help="Estimate the store's size before the teacher runs, print it, and refuse a recording whose filesystem "
        "has less free space (false: print it only).",
    )

    def __post_init__(self):
        check_not_blank(self.teacher_store, "teacher_store", "a directory for the store")  # '': the current one
        one_of(self.record_backend, RECORD_BACKENDS, "record_backend")
        for name in ("record_top_k", "record_shard_size"):
            if getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        layers = self.record_hidden_states_layers or []
        if any(index < 0 for index in layers) or len(set(layers)) != len(layers):
            raise DistilyConfigError(
                f"record_hidden_states_layers={layers} is not supported; expected distinct indices >= 0"
            )
        if self.logits_temperature <= 0:
            raise DistilyConfigError(f"logits_temperature={self.logits_temperature} must be > 0")


@dataclass
class InferenceArguments:
    """How ``distily record`` and ``distily generate`` run the teacher: seed, batch size, device."""

    seed: int = field_of(TrainingArguments, "seed", help="Random seed (the split of the documents, the samples).")
    data_seed: Optional[int] = field_of(
        TrainingArguments, "data_seed",
        help="Where set, the seed of the split of the documents and of their samples in place of seed (as in distill).",
    )
    per_device_eval_batch_size: int = field_of(
        DistillationTrainingArguments, "per_device_eval_batch_size", help="Sequences per batch of the teacher."
    )
    use_cpu: bool = field_of(
        TrainingArguments, "use_cpu", help="Run the teacher on the CPU even where an accelerator is."
    )

    def __post_init__(self):
        if self.per_device_eval_batch_size < 1:
            raise DistilyConfigError(
                f"per_device_eval_batch_size={self.per_device_eval_batch_size} must be a positive integer"
            )
        check_seed(self.seed)
        check_seed(self.data_seed, "data_seed")

    @property
    def split_seed(self) -> int:
        """The seed distill splits and samples the documents with (``distily.arguments.split_seed``)."""
        return split_seed(self.seed, self.data_seed)

    @property
    def device(self) -> torch.device:
        """The accelerator (as training would use it), or the CPU."""
        accelerator = None if self.use_cpu else torch.accelerator.current_accelerator()
        return accelerator if accelerator is not None else torch.device("cpu")


@dataclass
class GenerateArguments:
    """Synthetic data (``distily generate``): sequences sampled from the teacher, or its responses to prompts."""

    generate_output: Optional[str] = field(
        default=None,
        metadata={"help": "Where the samples go: a .jsonl or .parquet file, or a directory written with save_to_disk; "
                  "usable as dataset_name. Samples hold input_ids and text columns; responses to generate_prompts a "
                  "messages column."},
    )
    generate_prompts: Optional[str] = field(
        default=None,
        metadata={"help": "A prompt dataset (a local jsonl/json/parquet file or directory, or a Hub id) with a prompt "
                  "column (a string) or a messages column (role/content turns ending with the user's): the teacher "
                  "answers each, formatted with its chat template (or chat_template). Default: sample from BOS (the "
                  "end-of-text token without one)."},
    )
    generate_prompts_split: str = field(default="train", metadata={"help": "Split of generate_prompts to read."})
    generate_num_return_sequences: int = field(
        default=1, metadata={"help": "Responses sampled per prompt of generate_prompts (each one conversation)."}
    )
    generate_num_samples: int = field(
        default=1000, metadata={"help": "Number of sequences sampled (without generate_prompts)."}
    )
    generate_length: int = field(
        default=256,
        metadata={"help": "Tokens sampled per sequence or response (a sampled stop token ends it earlier: the end of "
                  "text, an end of turn the teacher's generation config lists, or for a response the chat "
                  "template's end of turn)."},
    )
    generate_keep_unfinished: bool = field(
        default=False,
        metadata={"help": "Keep responses to generate_prompts that reach generate_length (or the teacher's last "
                  "position) without a stop token. By default they are dropped and counted: cut mid-answer, the chat "
                  "template would close them as whole answers, and the student would learn to stop where the cut "
                  "fell."},
    )
    generate_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the first token; 0: greedy (the teacher's most likely response to "
                  "each of generate_prompts, one per prompt)."},
    )
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
        metadata={"help": "Also record the teacher over the samples (or the conversations with its responses, as chat "
                  "data: loss_on, chat_template) into teacher_store in the same command, with the teacher already "
                  "loaded."},
    )

    def __post_init__(self):
        check_not_blank(self.generate_output, "generate_output", "a .jsonl or .parquet file, or a directory")
        for name in ("generate_num_samples", "generate_length", "generate_num_return_sequences"):
            if getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.generate_final_temperature is not None and self.generate_final_temperature <= 0:
            raise DistilyConfigError(f"generate_final_temperature={self.generate_final_temperature} must be > 0")
        if self.generate_temperature < 0:
            raise DistilyConfigError(f"generate_temperature={self.generate_temperature} must be >= 0 (0: greedy)")
        if self.generate_temperature == 0:
            self._check_greedy()
        if not 0.0 < self.generate_top_p <= 1.0:
            raise DistilyConfigError(f"generate_top_p={self.generate_top_p} is out of range; expected 0 < x <= 1")
        check_local_path_exists(self.generate_prompts, "generate_prompts")

    def _check_greedy(self) -> None:
        """Greedy decoding answers each prompt with its one most likely response: from BOS, or several per prompt,
        it would write copies; a temperature schedule has nothing to move."""
        if self.generate_prompts is None:
            raise DistilyConfigError(
                "generate_temperature=0 (greedy) without generate_prompts would write one sequence "
                f"{self.generate_num_samples} times; expected a temperature > 0 to sample from BOS, or generate_prompts"
            )
        copies = self.generate_num_return_sequences
        if copies > 1:
            raise DistilyConfigError(
                f"generate_temperature=0 (greedy) with generate_num_return_sequences={copies} would write copies of "
                "one response; expected 1 response per prompt, or a temperature > 0"
            )
        if self.generate_final_temperature is not None:
            raise DistilyConfigError(
                f"generate_final_temperature={self.generate_final_temperature} with generate_temperature=0 (greedy); "
                "expected no final temperature, or a generate_temperature > 0 to move from"
            )

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            self.generate_length, self.generate_temperature, self.generate_top_p, self.generate_final_temperature
        )
