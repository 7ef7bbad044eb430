"""What a user configures about the models: the teacher, and how the student is obtained from it."""

from dataclasses import dataclass, field
from typing import Optional, Union

from distily.arguments import json_dict, one_of
from distily.errors import DistilyConfigError

TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
TEACHER_QUANTIZATIONS = ("none", "8bit", "4bit")
STUDENT_INITS = ("teacher", "random", "pruned")
FROM_TEACHER_LAYERS = ("teacher", "pruned")  # the inits that start from chosen teacher layers


@dataclass
class TeacherArguments:
    """The teacher, as every command that runs it loads it."""

    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Teacher: a Hugging Face Hub id or a local checkpoint directory (required)."}
    )
    teacher_torch_dtype: str = field(
        default="auto",
        metadata={"help": f"Teacher weights dtype, one of {', '.join(TORCH_DTYPES)} (auto: the checkpoint's). A "
                  "student initialised from the teacher copies its weights in this dtype: bfloat16 or float16 from a "
                  "float32 checkpoint gives it rounded copies."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub for the models loaded."}
    )

    def __post_init__(self):
        one_of(self.teacher_torch_dtype, TORCH_DTYPES, "teacher_torch_dtype")


@dataclass
class ModelArguments(TeacherArguments):
    """The teacher and how the student is obtained."""

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
    student_tokenizer_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "The student's tokenizer (a Hub id or local path). Default: a student checkpoint's own, else the "
            "teacher's. One that differs from the teacher's makes the run cross-tokenizer (docs/cross_tokenizer.md)."
        },
    )
    student_config_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Student from a separate config (a config.json file, a directory or a Hub id)."},
    )
    student_config_overrides: Optional[Union[dict, str]] = field(
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
            "embeddings, final norm and LM head where shapes match); 'pruned' copies them too, keeping of a narrower "
            "student's widths the teacher's most important MLP neurons, attention heads (whole KV groups) and hidden "
            "channels by its activations on the first training rows (Minitron; Llama, Mistral, Qwen2, Qwen3, Gemma "
            "1-3 text, Phi-3); 'random' keeps the random init."
        },
    )
    pruning_calibration_samples: int = field(
        default=256,
        metadata={
            "help": "student_init=pruned: how many of the first training rows (padding excluded) the teacher runs on "
            "to rank its neurons, heads and hidden channels (Minitron used 1024)."
        },
    )
    student_layers_from_teacher: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Teacher layer index copied into each student layer (student_init=teacher or pruned). Default: "
            "evenly spaced, first and last included; where one reuses the keys and values of a teacher layer not "
            "chosen (Gemma 3n, Gemma 4), that layer replaces the nearest chosen one none of them needs."
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
            "and 'lm_head' name the input embeddings (with Gemma 3n's and Gemma 4's per-layer token table) and the "
            "output layer of any architecture."
        },
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
        default=False,
        metadata={"help": "BitNet: insert SubLN norms before the attention output and MLP down projections."},
    )

    def __post_init__(self):
        super().__post_init__()
        one_of(self.teacher_quantization, TEACHER_QUANTIZATIONS, "teacher_quantization")
        one_of(self.student_init, STUDENT_INITS, "student_init")
        self.student_config_overrides = json_dict(self.student_config_overrides, "student_config_overrides")
        sources = [
            name
            for name in ("student_model_name_or_path", "student_config_name_or_path")
            if getattr(self, name) is not None
        ]
        if len(sources) > 1:
            raise DistilyConfigError(
                "student_model_name_or_path and student_config_name_or_path are both set; expected at most one"
            )
        layers = self.student_layers_from_teacher
        if layers is not None and self.student_model_name_or_path is not None:
            raise DistilyConfigError(
                f"student_layers_from_teacher={layers} is set with student_model_name_or_path, a student loaded, not "
                "built from teacher layers; expected at most one of them"
            )
        if layers is not None and self.student_init not in FROM_TEACHER_LAYERS:
            raise DistilyConfigError(
                f"student_layers_from_teacher={layers} is set with student_init={self.student_init!r}, which copies "
                "no teacher layer; expected student_init='teacher' or 'pruned'"
            )
        samples = self.pruning_calibration_samples
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise DistilyConfigError(f"pruning_calibration_samples={samples!r} is not a row count; expected an "
                                     "integer >= 1")
        for name in ("bitnet_input_norm", "bitnet_subln"):
            if getattr(self, name) and not self.student_as_bitnet:
                raise DistilyConfigError(f"{name}=true needs a BitNet student; expected student_as_bitnet=true")
        if self.student_init == "pruned" and self.student_model_name_or_path is not None:
            raise DistilyConfigError(
                "student_init=pruned is set with student_model_name_or_path, a student loaded, not built from the "
                "teacher; expected at most one of them"
            )
        if self.student_model_name_or_path is not None and self.student_config_overrides:
            raise DistilyConfigError(
                "student_config_overrides is set with student_model_name_or_path; overrides apply to a student "
                "built from a config, expected student_config_name_or_path or no student source"
            )
