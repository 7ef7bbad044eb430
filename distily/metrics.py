"""What a distillation run measured, as ``metrics.json`` holds it: the teacher, the student before and after
training, the training figures, how the documents were framed, the named eval sets and their overlap with the
training sequences, and lm-eval results.

``RunMetrics.to_dict()`` is metrics.json's content; ``RunMetrics.from_dict`` reads it back, and the two round-trip
unchanged (a figure a run does not have, such as a recorded teacher's memory or an uncounted ``tokens_seen``, is
absent, not null). Metrics measured per eval set are named at run time (``perplexity`` on the held-out split,
``<set>_perplexity`` on a named set, see ``metric_key``); an ``Evaluation`` holds them and reads them by metric
and set. The student's evaluations are kept as the Trainer returned them (``before_*``, ``after_*``; the
``epoch`` and token count its log adds are training's), and the Trainer's training figures as it gave them.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from distily.evaluation.arguments import HELDOUT_SET

# measured on each eval set (bits and nats per byte: by the model's own tokenizer, see distily.evaluation.bytes)
BYTE_METRICS = ("bits_per_byte", "nats_per_byte")  # comparable across tokenizers
LOSS_METRICS = ("lm_loss", "perplexity", *BYTE_METRICS)  # a model's own, on each eval set: the teacher's are these
PER_SET_METRICS = (*LOSS_METRICS, "kl_to_teacher", "top1_agreement")
BEFORE, AFTER = "before", "after"  # the student's evaluations before and after training
GENERATION = "generation"  # greedy answers to held-out prompts: generation/<metric> (distily.evaluation.generations)


def metric_key(set_name: str, metric: str) -> str:
    """``perplexity`` on the held-out split, ``<set>_perplexity`` on a named eval set."""
    return metric if set_name == HELDOUT_SET else f"{set_name}_{metric}"


def generation_key(metric: str) -> str:
    """``generation/exact_match``, ``generation/<metric function>``, ``generation/kl_to_teacher``,
    ``generation/samples`` (the prompts answered)."""
    return f"{GENERATION}/{metric}"


def _split(values: dict, names) -> tuple[dict, dict]:
    """``values`` as (those named in ``names``, the others), each in ``values``'s order."""
    return ({key: value for key, value in values.items() if key in names},
            {key: value for key, value in values.items() if key not in names})


def _read(cls, values: dict, rest: str):
    """A ``cls`` from ``values``: its ``FIXED`` fields, and the other values as the mapping ``rest``."""
    fixed, others = _split(values, cls.FIXED)
    return cls(**fixed, **{rest: others})


def _present(**values) -> dict:
    """The values that are not None (a figure a run does not have is left out of metrics.json)."""
    return {key: value for key, value in values.items() if value is not None}


def _model_dict(model, details: dict) -> dict:
    """A model's size, ``details``, architecture and lm-eval results (when measured), in metrics.json's order."""
    return {"parameters": model.parameters, "size_on_disk_bytes": model.size_on_disk_bytes, **details,
            "architecture": model.architecture, **_present(lm_eval=model.lm_eval)}


@dataclass(frozen=True)
class Evaluation:
    """One model's metrics at one evaluation, keyed by ``metric_key`` (and the objective's ``loss`` and
    ``loss_<component>``, when the student was evaluated against it)."""

    values: dict[str, float]

    def get(self, metric: str, set_name: str = HELDOUT_SET) -> Optional[float]:
        return self.values.get(metric_key(set_name, metric))

    @property
    def loss(self) -> Optional[float]:
        """The distillation objective on the held-out split."""
        return self.values.get("loss")

    @property
    def lm_loss(self) -> Optional[float]:
        return self.get("lm_loss")

    @property
    def perplexity(self) -> Optional[float]:
        return self.get("perplexity")

    @property
    def bits_per_byte(self) -> Optional[float]:
        return self.get("bits_per_byte")

    @property
    def top1_agreement(self) -> Optional[float]:
        return self.get("top1_agreement")


@dataclass(frozen=True)
class RecordingSource:
    """Where a recorded teacher's outputs came from."""

    teacher_model_name_or_path: str
    teacher_store: str
    record_top_k: int
    recording_temperature: float

    SOURCE = "recorded"

    def to_dict(self) -> dict:
        return {"source": self.SOURCE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> Optional["RecordingSource"]:
        if values.get("source") != cls.SOURCE:
            return None
        return cls(**{item.name: values[item.name] for item in dataclasses.fields(cls)})


RECORDING_KEYS = ("source", *(item.name for item in dataclasses.fields(RecordingSource)))


@dataclass(frozen=True)
class MultimodalCheckpoint:
    """The multimodal checkpoint a teacher was the language model of: its ``model_type``, the towers left on disk
    (``vision``, ``audio``) and, for a local one, the bytes of all its weights (the teacher's ``size_on_disk_bytes``
    counts its language model's alone)."""

    model_type: str
    unused_towers: list[str]
    checkpoint_size_on_disk_bytes: Optional[int] = None

    def to_dict(self) -> dict:
        return _present(**dataclasses.asdict(self))


@dataclass(frozen=True)
class TeacherMetrics:
    """The teacher: its own held-out metrics, where a recorded teacher came from, size, precision, memory (when
    it ran), architecture, the multimodal checkpoint it is the language model of (if it is) and lm-eval results
    (when measured)."""

    evaluation: Evaluation
    parameters: int
    size_on_disk_bytes: int
    quantization: str
    architecture: dict[str, Any]
    recording: Optional[RecordingSource] = None
    memory_bytes: Optional[int] = None
    multimodal_checkpoint: Optional[MultimodalCheckpoint] = None
    lm_eval: Optional[dict[str, dict[str, float]]] = None

    FIXED = ("parameters", "size_on_disk_bytes", "quantization", "memory_bytes", "multimodal_checkpoint",
             "architecture", "lm_eval")

    def with_metrics(self, values: dict[str, float]) -> "TeacherMetrics":
        """This teacher with ``values`` added to its evaluation."""
        return dataclasses.replace(self, evaluation=Evaluation({**self.evaluation.values, **values}))

    @property
    def model_name_or_path(self) -> Optional[str]:
        """The teacher's Hub id or path when only its recording knows it."""
        return self.recording.teacher_model_name_or_path if self.recording else None

    def to_dict(self) -> dict:
        return {
            **self.evaluation.values,
            **(self.recording.to_dict() if self.recording else {}),
            **_model_dict(self, {"quantization": self.quantization, **_present(
                memory_bytes=self.memory_bytes,
                multimodal_checkpoint=self.multimodal_checkpoint and self.multimodal_checkpoint.to_dict(),
            )}),
        }

    @classmethod
    def from_dict(cls, values: dict) -> "TeacherMetrics":
        fixed, rest = _split(values, cls.FIXED)
        recording, evaluation = _split(rest, RECORDING_KEYS)
        if "multimodal_checkpoint" in fixed:
            fixed["multimodal_checkpoint"] = MultimodalCheckpoint(**fixed["multimodal_checkpoint"])
        return cls(evaluation=Evaluation(evaluation), recording=RecordingSource.from_dict(recording), **fixed)


@dataclass(frozen=True)
class StudentMetrics:
    """The student: size as saved, the teacher layers it stands for (``distily.models.student.layers_from_teacher``),
    its evaluations before and after training, architecture and lm-eval results."""

    parameters: int
    size_on_disk_bytes: int
    evaluations: dict[str, Any]  # as Trainer.evaluate returned them, under before_* and after_*
    architecture: dict[str, Any]
    lm_eval: Optional[dict[str, dict[str, float]]] = None
    teacher_layers_copied: Optional[list[int]] = None  # the teacher layer copied into each student layer
    teacher_layer_settings: Optional[list[int]] = None  # the teacher layer whose per-layer settings each one took
    pruning: Optional[dict] = None  # student_init=pruned: calibration rows, sizes kept and the teacher's

    FIXED = ("parameters", "size_on_disk_bytes", "architecture", "lm_eval", "teacher_layers_copied",
             "teacher_layer_settings", "pruning")

    def evaluation(self, stage: str) -> Evaluation:
        """The evaluation ``BEFORE`` or ``AFTER`` training."""
        prefix = f"{stage}_"
        return Evaluation({key.removeprefix(prefix): value for key, value in self.evaluations.items()
                           if key.startswith(prefix)})

    @property
    def before(self) -> Evaluation:
        return self.evaluation(BEFORE)

    @property
    def after(self) -> Evaluation:
        return self.evaluation(AFTER)

    @property
    def bitnet(self) -> Optional[dict]:
        """The student's BitNet options; None for a dense student."""
        return self.architecture.get("bitnet")

    def to_dict(self) -> dict:
        layers = _present(teacher_layers_copied=self.teacher_layers_copied,
                          teacher_layer_settings=self.teacher_layer_settings, pruning=self.pruning)
        return _model_dict(self, {**layers, **self.evaluations})

    @classmethod
    def from_dict(cls, values: dict) -> "StudentMetrics":
        return _read(cls, values, "evaluations")


@dataclass(frozen=True)
class TrainMetrics:
    """Training: the Trainer's figures as it gave them (``train_runtime``, ``epoch``, ...; those of the last session
    when the run was resumed, after ``resumed_from_step``) but ``train_loss``, the mean training loss over all the
    run's steps; the wall time of every session's training, optimizer steps and the tokens read (None when not
    counted)."""

    trainer: dict[str, Any]
    wall_seconds: float
    global_step: int
    tokens_seen: Optional[int] = None
    resumed_from_step: Optional[int] = None  # the step the last session started from (None: one session)

    FIXED = ("wall_seconds", "global_step", "tokens_seen", "resumed_from_step")

    @property
    def runtime(self) -> float:
        """The Trainer's training time in seconds (without the evaluations before and after)."""
        return self.trainer["train_runtime"]

    @property
    def epoch(self) -> float:
        return self.trainer.get("epoch", 0)

    def to_dict(self) -> dict:
        return {**self.trainer, "wall_seconds": self.wall_seconds, "global_step": self.global_step,
                **_present(tokens_seen=self.tokens_seen, resumed_from_step=self.resumed_from_step)}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainMetrics":
        return _read(cls, values, "trainer")


@dataclass(frozen=True)
class FramingMetrics:
    """How the documents were packed, and the teacher's held-out loss as packed and on the same documents run
    alone (when measured); for chat data the tokens the losses counted (``loss_on``)."""

    packing: str
    teacher_lm_loss_packed: Optional[float] = None
    teacher_lm_loss_documents: Optional[float] = None
    loss_on: Optional[str] = None

    def to_dict(self) -> dict:
        return _present(**dataclasses.asdict(self))


@dataclass(frozen=True)
class EvalSetSource:
    """Where a named eval set came from (its ``eval_datasets`` entry) and how many sequences it holds."""

    config: Optional[str]
    split: str
    text_column: str
    max_samples: Optional[int]
    path: str
    sequences: int


@dataclass(frozen=True)
class OverlapCheck:
    """An eval set's sequences, and those that share an ``ngram``-token span with a training sequence."""

    sequences: int
    overlapping_sequences: int
    ngram: int


@dataclass(frozen=True)
class RunMetrics:
    """A finished run's ``metrics.json``."""

    distily_version: str
    command: Optional[str]
    teacher: TeacherMetrics
    student: StudentMetrics
    train: TrainMetrics
    max_seq_length: int
    framing: FramingMetrics
    train_sequences: int
    eval_sequences: int
    eval_sets: dict[str, EvalSetSource]
    eval_overlap: dict[str, OverlapCheck]  # empty when the check was off

    def with_benchmarks(self, student: dict, teacher: Optional[dict]) -> "RunMetrics":
        """These metrics with the student's lm-eval results, and the teacher's when it was measured."""
        return dataclasses.replace(
            self,
            student=dataclasses.replace(self.student, lm_eval=student),
            teacher=self.teacher if teacher is None else dataclasses.replace(self.teacher, lm_eval=teacher),
        )

    def to_dict(self) -> dict:
        return {
            "distily_version": self.distily_version,
            "command": self.command,
            "teacher": self.teacher.to_dict(),
            "student": self.student.to_dict(),
            "train": self.train.to_dict(),
            "max_seq_length": self.max_seq_length,
            "framing": self.framing.to_dict(),
            "train_sequences": self.train_sequences,
            "eval_sequences": self.eval_sequences,
            "eval_sets": {name: dataclasses.asdict(source) for name, source in self.eval_sets.items()},
            "eval_overlap": {name: dataclasses.asdict(check) for name, check in self.eval_overlap.items()},
        }

    @classmethod
    def from_dict(cls, values: dict) -> "RunMetrics":
        return cls(
            distily_version=values["distily_version"],
            command=values["command"],
            teacher=TeacherMetrics.from_dict(values["teacher"]),
            student=StudentMetrics.from_dict(values["student"]),
            train=TrainMetrics.from_dict(values["train"]),
            max_seq_length=values["max_seq_length"],
            framing=FramingMetrics(**values["framing"]),
            train_sequences=values["train_sequences"],
            eval_sequences=values["eval_sequences"],
            eval_sets={name: EvalSetSource(**source) for name, source in values["eval_sets"].items()},
            eval_overlap={name: OverlapCheck(**check) for name, check in values["eval_overlap"].items()},
        )
