"""What a user configures about training: ``transformers.TrainingArguments`` with defaults for distillation and
a few additions."""

import dataclasses
import importlib.util
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from accelerate.utils import get_torch_accelerator_backend, str_to_bool
from transformers import SchedulerType, TrainingArguments
from transformers.debug_utils import DebugOption
from transformers.trainer_pt_utils import AcceleratorConfig

from distily.arguments import check_seed, field_of, json_dict, one_of, split_seed
from distily.errors import DistilyConfigError
from distily.generation.arguments import GENERATION_BACKENDS


def fsdp_version(training: TrainingArguments) -> Optional[int]:
    """The FSDP version the Trainer's accelerator will run, None without FSDP: the run's ``fsdp`` with its
    ``fsdp_config`` (as TrainingArguments has read it; transformers' default version 2), else ``accelerate launch``'s
    config, passed in the environment (accelerate's default version 1)."""
    if training.fsdp:
        return int((training.fsdp_config or {}).get("version", 2))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


def fsdp_syncs_module_states(training: TrainingArguments) -> bool:
    """Whether the run's FSDP is version 1 broadcasting the first process's weights as it wraps the model
    (``sync_module_states``: on unless set off in ``fsdp_config``; accelerate launch passes its config's, on by
    default)."""
    if fsdp_version(training) != 1:
        return False
    if training.fsdp:
        return str_to_bool(str(training.fsdp_config.get("sync_module_states", "true"))) == 1
    return str_to_bool(os.environ.get("FSDP_SYNC_MODULE_STATES", "false")) == 1


JOINED_VALUE_KEYS = ("debug",)  # given on the command line as --debug=VALUE only: a bare --debug is the CLI's own


def boundary_step(stage_boundary: float, total_steps: int) -> int:
    """The first step of the BitNet schedule's second stage."""
    return round(stage_boundary * total_steps)


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` with defaults for distillation and a few additions."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where the student, checkpoints, logs and metrics.json are written (required)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir instead of refusing to start."}
    )
    resume_from_checkpoint: Optional[str] = field_of(
        TrainingArguments, "resume_from_checkpoint",
        help="Continue a run from a checkpoint: a checkpoint-* directory, or true for the newest intact one in "
        "output_dir (the Trainer's values), or auto (Distily's, for a job requeued with the same command each time): "
        "a new run where output_dir holds none, true's resume where it holds an unfinished run's checkpoints, the run "
        "started again where it stopped before its first checkpoint (same settings only), and nothing (exit 0) where "
        "it holds a finished run. See the README's Long runs.",
    )
    bitnet_schedule: bool = field(
        default=False,
        metadata={
            "help": "BitNet two-stage schedule (needs student_as_bitnet): the learning rate drops at "
            "bitnet_stage_boundary, and weight decay, applied only to latent ternary weights, goes to 0 there."
        },
    )
    bitnet_stage_boundary: float = field(
        default=0.5,
        metadata={"help": "Fraction of the training steps where the BitNet schedule's second stage starts."},
    )
    max_nonfinite_steps: int = field(
        default=5,
        metadata={"help": "Optimizer steps with non-finite gradients are skipped; this many in a row stop the run."},
    )
    memory_check: bool = field(
        default=True,
        metadata={"help": "Estimate the peak memory before training, print it, and refuse a run that cannot fit."},
    )
    disk_check: bool = field(
        default=True,
        metadata={"help": "Estimate the bytes the run writes at most (checkpoints, the student) before training, print "
                  "it, and refuse a run whose output_dir's filesystem has less free space (false: print it only)."},
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
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Loggers, one or several (--report_to tensorboard wandb): tensorboard, wandb, ...; "
                          "none or all"},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all dataset columns (needed)."})
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count the tokens read in training (metrics.json's tokens_seen): non_padding (real tokens), "
                  "all (padding too) or no."},
    )
    lmbda: float = field(
        default=0.0,
        metadata={"help": "On-policy distillation (GKD's lambda): the fraction of training batches, drawn per batch "
                  "from the seed, replaced by the student's own completions of their prompts, scored by the "
                  "teacher. Needs prompt/completion or chat data and a live teacher. 0: supervised KD only."},
    )
    on_policy_temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the student's on-policy completions (0: greedy)."}
    )
    on_policy_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top-p of on-policy completions."})
    on_policy_max_new_tokens: int = field(
        default=128,
        metadata={"help": "Tokens generated at most per on-policy completion (a stop token, end-of-text or the chat "
                  "template's end-of-turn, ends one earlier)."},
    )
    on_policy_backend: str = field(
        default="hf",
        metadata={"help": f"Generation back end of on-policy completions, one of {', '.join(GENERATION_BACKENDS)}: hf "
                  "(the student's generate, KV cache) or vllm (an engine the student's weights are copied into "
                  "after each optimizer step; needs the vllm package and a GPU)."},
    )
    debug: Union[str, list[DebugOption]] = field_of(
        TrainingArguments, "debug",
        help="The Trainer's debug features: underflow_overflow (detect overflow in model I/O), tpu_metrics_debug "
        "(print TPU metrics). On the command line one, joined to its flag (--debug=underflow_overflow): a bare --debug "
        "shows an error's full traceback and takes no value; in the config file one or a list.",
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
            raise DistilyConfigError(
                f"bitnet_stage_boundary={self.bitnet_stage_boundary} is out of range; expected 0 < x < 1"
            )
        if self.max_nonfinite_steps < 1:
            raise DistilyConfigError(f"max_nonfinite_steps={self.max_nonfinite_steps} must be a positive integer")
        self._check_training_values()
        self._check_optimizer_values()
        self._check_trainer_features()
        self._check_on_policy_values()
        self._check_accelerator_config()
        self._check_deepspeed()
        counted = {"true": "all", "false": "no"}.get(str(self.include_num_input_tokens_seen).lower())
        self.include_num_input_tokens_seen = counted or self.include_num_input_tokens_seen
        one_of(self.include_num_input_tokens_seen, ("non_padding", "all", "no"), "include_num_input_tokens_seen")
        if not torch.accelerator.is_available():
            self.use_cpu = True  # lets bf16 mean CPU autocast on machines without an accelerator
        super().__post_init__()
        self._check_fsdp_device()
        self._check_loggers()
        self._check_scheduler_kwargs()
        if self.max_steps > 0:  # by epochs, the steps are known once the data is: the run checks them then
            self.check_bitnet_schedule(self.max_steps)
        if self.fp16 and self.use_cpu:
            raise DistilyConfigError(
                "fp16=true on the CPU: no float16 autocast runs there, so the run would train in fp32; expected "
                "bf16=true (CPU autocast) or neither"
            )

    @property
    def split_seed(self) -> int:
        """The seed of the held-out split and of the samples of the data (``distily.arguments.split_seed``)."""
        return split_seed(self.seed, self.data_seed)

    def run_length(self, total_steps: int) -> str:
        """What sizes a run of ``total_steps`` optimizer steps, for a message: max_steps, or num_train_epochs and the
        steps they come to."""
        if self.max_steps > 0:
            return f"max_steps={self.max_steps}"
        return f"num_train_epochs={self.num_train_epochs} ({total_steps} optimizer steps)"

    def check_bitnet_schedule(self, total_steps: int) -> None:
        """The BitNet schedule's warmup ends before its second stage in a run of ``total_steps`` optimizer steps
        (max_steps, or the Trainer's count for num_train_epochs), or the run would be refused as its training
        starts."""
        if not self.bitnet_schedule:
            return
        warmup = self.get_warmup_steps(total_steps)
        boundary = boundary_step(self.bitnet_stage_boundary, total_steps)
        if warmup >= boundary:
            more = "more max_steps" if self.max_steps > 0 else "more num_train_epochs or a positive max_steps"
            raise DistilyConfigError(
                f"bitnet_schedule=true with {self.run_length(total_steps)}, warmup_steps={self.warmup_steps} ({warmup} "
                f"of them) and bitnet_stage_boundary={self.bitnet_stage_boundary}: the warmup does not end before the "
                f"second stage starts (step {boundary}); expected fewer warmup steps or {more}"
            )

    def _check_loggers(self) -> None:
        """report_to as TrainingArguments left it (a list; "all" and "none" resolved), each a logger transformers
        knows, or the Trainer would refuse it after the models have loaded."""
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK  # 2 s; only distill reads it

        unknown = [name for name in self.report_to if name not in INTEGRATION_TO_CALLBACK]
        if unknown:
            raise DistilyConfigError(
                f"report_to={unknown[0]!r} is not a logger; expected none, all or among "
                f"{', '.join(INTEGRATION_TO_CALLBACK)}"
            )

    def _check_scheduler_kwargs(self) -> None:
        """lr_scheduler_kwargs as a JSON object of parameters of the schedule, or the Trainer fails on it as it builds
        the schedule, the models loaded."""
        from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

        kwargs = json_dict(self.lr_scheduler_kwargs, "lr_scheduler_kwargs")
        schedule = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(self.lr_scheduler_type)]
        parameters = inspect.signature(schedule).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        own = [name for name in parameters if name not in ("optimizer", "num_warmup_steps", "num_training_steps")]
        unknown = [key for key in kwargs if key not in own]
        if unknown:
            raise DistilyConfigError(
                f"lr_scheduler_kwargs sets {unknown[0]!r}, which the {SchedulerType(self.lr_scheduler_type).value} "
                f"schedule does not take; expected among {', '.join(own)}"
            )

    def _check_on_policy_values(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise DistilyConfigError(f"lmbda={self.lmbda} is out of range; expected 0 <= x <= 1")
        if not self.on_policy_temperature >= 0:
            raise DistilyConfigError(f"on_policy_temperature={self.on_policy_temperature} must be >= 0 (0: greedy)")
        if not 0.0 < self.on_policy_top_p <= 1.0:
            raise DistilyConfigError(f"on_policy_top_p={self.on_policy_top_p} is out of range; expected 0 < x <= 1")
        if self.on_policy_max_new_tokens < 1:
            raise DistilyConfigError(
                f"on_policy_max_new_tokens={self.on_policy_max_new_tokens} must be a positive integer"
            )
        one_of(self.on_policy_backend, GENERATION_BACKENDS, "on_policy_backend")

    def _check_optimizer_values(self) -> None:
        """AdamW's values and optim_args, which torch and the Trainer refuse only as they build the optimizer, the
        models loaded."""
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} is out of range; expected 0 <= x < 1")
        if self.adam_epsilon < 0:
            raise DistilyConfigError(f"adam_epsilon={self.adam_epsilon} must be >= 0")
        pairs = self.optim_args.replace(" ", "").split(",") if self.optim_args else []  # as the Trainer splits them
        if any(pair.count("=") != 1 for pair in pairs):
            raise DistilyConfigError(
                f"optim_args={self.optim_args!r} is not usable; expected key=value pairs separated by commas, e.g. "
                "'beta1=0.9,beta2=0.95'"
            )

    def _check_trainer_features(self) -> None:
        """Features of the Trainer that Distily's training does not run: NEFTune, which it would hook into the input
        embeddings of the model it trains (Distily's wrapper of student and teacher has none), and label smoothing,
        which its loss, replaced by Distily's, would apply."""
        if self.label_smoothing_factor != 0:
            raise DistilyConfigError(
                f"label_smoothing_factor={self.label_smoothing_factor} is not applied by distill (its losses are its "
                "own: hard_label_weight weighs a plain cross-entropy); expected 0"
            )
        if self.neftune_noise_alpha is not None:
            raise DistilyConfigError(
                f"neftune_noise_alpha={self.neftune_noise_alpha} is not supported by distill (the Trainer hooks "
                "NEFTune into the model it trains, which is Distily's wrapper of student and teacher); expected it "
                "unset"
            )

    def _check_accelerator_config(self) -> None:
        """accelerator_config, which TrainingArguments reads with a FileNotFoundError (no such file), a TypeError (an
        unknown field) or an error that does not name it (a file that is not JSON)."""
        config = self.accelerator_config
        if isinstance(config, str) and not config.lstrip().startswith("{"):  # TrainingArguments loads '{...}' itself
            if not os.path.isfile(config):
                raise DistilyConfigError(
                    f"accelerator_config={config!r} is not a file; expected a JSON file or a JSON object of the "
                    "fields of transformers' AcceleratorConfig"
                )
            try:
                config = json.loads(Path(config).read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DistilyConfigError(
                    f"accelerator_config={self.accelerator_config!r} is not a JSON file ({err}); expected a JSON object"
                ) from None
        if isinstance(config, str):
            config = json_dict(config, "accelerator_config")
        known = [f.name for f in dataclasses.fields(AcceleratorConfig)]
        unknown = [key for key in config if key not in known] if isinstance(config, dict) else []
        if unknown:
            raise DistilyConfigError(
                f"accelerator_config sets {unknown[0]!r}, which is not a field of transformers' AcceleratorConfig; "
                f"expected among {', '.join(known)}"
            )

    def _check_fsdp_device(self) -> None:
        """accelerate refuses FSDP version 1's sync_module_states on a machine without an accelerator, in a
        RuntimeError per process as the Trainer starts. FSDP2 has no such step and starts there."""
        device = get_torch_accelerator_backend()[0] or "cpu"
        if device in ("cpu", "mps") and fsdp_syncs_module_states(self):
            raise DistilyConfigError(
                f"fsdp_version=1 cannot start on {device}: accelerate refuses FSDP1's sync_module_states without a "
                "GPU; expected fsdp_version 2 (in fsdp_config, or accelerate's config), or sync_module_states false"
            )

    def _check_deepspeed(self) -> None:
        """TrainingArguments reads a deepspeed config only with the package, raising PackageNotFoundError without."""
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise DistilyConfigError(
                f"deepspeed={self.deepspeed!r} needs the deepspeed package, which is not installed; expected "
                "`pip install deepspeed`, or no deepspeed"
            )

    def _check_training_values(self) -> None:
        """Values the Trainer would take and then train nothing with, or fail on deep inside a step."""
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise DistilyConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.dataloader_num_workers < 0:
            raise DistilyConfigError(
                f"dataloader_num_workers={self.dataloader_num_workers} must be >= 0 (0: load in the main process)"
            )
        check_seed(self.seed)
        check_seed(self.data_seed, "data_seed")
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
