"""Where a run's teacher outputs come from: one ``TeacherSource`` per kind (``live``, ``recorded``).

``run_distillation`` asks the source, in this order, for everything that depends on the teacher:

- ``settled_config(config)`` (before it is opened): the run's config with what the source decides filled in
  (a store: the split its rows were drawn with), which the run records, reports and opens the source with;
- ``student_init_model()``: the model the student is built from (layers, config), with ``student_token_map()``
  where its tokenizer is another, then ``student_built(student)`` once the student exists;
- ``datasets(student)`` and ``collate_fn()``: what the run trains and evaluates on;
- ``live_model``: the model that runs during the run (its weights count in the preflight), or None;
- ``probed_models()``: the teacher models checked to keep packed documents apart;
- ``resolve_objective(...)``, ``logits_component`` and ``check_objective(...)``: the objective it can feed;
- ``framing_metrics(...)``, ``evaluator(...)``, ``summary(...)``: held-out metrics and metrics.json's
  ``teacher`` section;

and the trainer calls ``prepare(...)`` once and the source itself on every batch (the teacher outputs the
objective reads). A new kind (generated on-policy, a remote server) is one more subclass registered in
``TEACHER_SOURCES`` (``distily.teachers.sources``).
"""

import dataclasses
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional

from datasets import Dataset
import torch
from accelerate import Accelerator
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from distily.config import DistillConfig
from distily.objectives.arguments import ObjectiveArguments
from distily.data.batches import longest_row
from distily.data.chat import ChatTemplate
from distily.data.chat_alignment import CompletionAlignment, end_of_turn_id
from distily.data.training_data import DistillationData
from distily.data.vocabulary import VocabularyMap
from distily.metrics import Evaluation, FramingMetrics, MultimodalCheckpoint, RecordingSource, TeacherMetrics
from distily.models.architecture import output_vocab_size
from distily.models.finite import NonFiniteOutputs
from distily.models.summary import architecture_summary, parameter_count
from distily.models.teacher import from_pretrained, language_model_bytes, unused_towers
from distily.models.vocab import shared_vocab_size
from distily.objectives.component import Component
from distily.objectives.objective import DistillationObjective
from distily.outputs import directory_size

logger = logging.getLogger(__name__)


def multimodal_checkpoint(
    name_or_path: Optional[str], model: PreTrainedModel, trust_remote_code: bool
) -> Optional[MultimodalCheckpoint]:
    """The multimodal checkpoint the teacher ``model`` is the language model of (its config read again, at the commit
    the teacher was loaded from); None for a text-only one, or a recorded teacher not named."""
    if name_or_path is None:
        return None
    config = from_pretrained(AutoConfig, name_or_path, "teacher", trust_remote_code=trust_remote_code,
                             revision=getattr(model.config, "_commit_hash", None))
    if config.get_text_config() is config:
        return None
    whole = directory_size(name_or_path) if os.path.isdir(name_or_path) else None
    return MultimodalCheckpoint(config.model_type, unused_towers(config), whole)


def checkpoint_size(name_or_path: Optional[str], model: PreTrainedModel, multimodal: bool = False) -> int:
    """Bytes of the teacher's weights on disk: a local checkpoint's weight files, of a ``multimodal`` one the tensors
    of the language model it loaded (``language_model_bytes``); for a Hub model (or a recorded one not named, or a
    multimodal checkpoint without safetensors files), the loaded weights' bytes."""
    if name_or_path is not None and os.path.isdir(name_or_path):
        size = language_model_bytes(name_or_path) if multimodal else directory_size(name_or_path)
        if size is not None:
            return size
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass(frozen=True)
class TeacherCheckpoint:
    """What metrics.json says of the teacher's checkpoint: its size on disk and the multimodal checkpoint it is the
    language model of (if it is)."""

    size_on_disk_bytes: int
    multimodal: Optional[MultimodalCheckpoint]


def teacher_checkpoint(
    name_or_path: Optional[str], model: PreTrainedModel, trust_remote_code: bool
) -> TeacherCheckpoint:
    """``TeacherCheckpoint`` of the teacher ``model`` loaded from ``name_or_path``, read from its checkpoint."""
    multimodal = multimodal_checkpoint(name_or_path, model, trust_remote_code)
    return TeacherCheckpoint(checkpoint_size(name_or_path, model, multimodal is not None), multimodal)


class TeacherSource(ABC):
    """The teacher of one run. ``model`` is its architecture and size (it sizes the objective and is reported;
    a teacher that does not run may hold it on the meta device); ``live_model`` is the model that runs during
    the run, or None when its outputs are read rather than computed."""

    config: DistillConfig
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    checkpoint: TeacherCheckpoint  # read with ``model`` (``hold``), not again at the run's end
    logits_component: type[Component]  # the logit loss this teacher's outputs feed
    nonfinite_outputs: Optional[NonFiniteOutputs] = None  # a teacher that runs notes its outputs' NaN and +inf here

    def hold(self, model: PreTrainedModel) -> None:
        """Make ``model``, just loaded, the teacher's, and read now what metrics.json says of its checkpoint: a folder
        moved or a Hub cache pruned before the run ends cannot cost it its metrics."""
        model_args = self.config.model
        self.model = model
        self.checkpoint = teacher_checkpoint(model_args.teacher_model_name_or_path, model, model_args.trust_remote_code)

    @classmethod
    def settled_config(cls, config: DistillConfig) -> DistillConfig:
        """``config`` with what this kind of source decides filled in: as given, unless the source says otherwise."""
        return config

    @property
    def live_model(self) -> Optional[PreTrainedModel]:
        return None

    @property
    def student_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer the student reads (saved with it): the teacher's, unless the source maps between two."""
        return self.tokenizer

    def logit_columns(self, student: PreTrainedModel) -> Optional[int]:
        """How many logit columns the logit loss compares (None: all of each model's)."""
        return shared_vocab_size(output_vocab_size(self.model), output_vocab_size(student), len(self.tokenizer))

    @abstractmethod
    def student_init_model(self) -> PreTrainedModel:
        """The teacher the student is built from (weights where the student copies some)."""

    def student_token_map(self) -> Optional[VocabularyMap]:
        """Which student token is which teacher token where the student reads another tokenizer (a student built
        from the teacher gets the rows of the tokens both hold by token); None with one tokenizer."""
        return None

    def student_built(self, student: PreTrainedModel) -> None:
        """Called once the student is built from ``student_init_model()``."""

    def student_chat_template(self) -> Optional[ChatTemplate]:
        """The template the student's conversations are rendered in, None for text data."""
        return None

    @abstractmethod
    def datasets(self, student: PreTrainedModel) -> DistillationData:
        """The train and eval sequences, and their length (text is packed to the length every model takes; a
        source with fixed sequences has its own)."""

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @abstractmethod
    def collate_fn(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """Turns rows of ``datasets()`` into the batches the trainer and the evaluator read."""

    def probed_models(self) -> list[tuple[str, PreTrainedModel]]:
        """(role, model) of the teacher models that must keep packed documents apart: those that run."""
        return [("teacher", self.live_model)] if self.live_model is not None else []

    @property
    def student_pad_token_id(self) -> int:
        """The id the student's rows are padded with."""
        return self.pad_token_id

    def completion_alignment(self, student: PreTrainedModel, max_seq_length: int) -> Optional[CompletionAlignment]:
        """How the student's on-policy completions become rows in the teacher's tokens: None when the teacher reads
        the student's tokens."""
        return None

    def longest_train_row(self, data: DistillationData) -> int:
        """The most tokens in one training row: the longest a training batch is padded to."""
        return longest_row(data.train)

    @abstractmethod
    def mean_confidence(self, train: Dataset) -> float:
        """The teacher's mean top-token probability over the first training batches (CAKLD's beta)."""

    def resolve_objective(self, args: ObjectiveArguments, train: Dataset) -> ObjectiveArguments:
        """The objective's arguments as the run uses them (a new object; ``args`` is left as given): CAKLD's
        beta, when not given, is the teacher's mean confidence (as BitDistiller does, Du et al., 2024)."""
        if args.logits_loss != "cakld" or "beta" in args.logits_loss_kwargs:
            return args
        beta = self.mean_confidence(train)
        logger.info(f"CAKLD beta (teacher's mean confidence) = {beta:.4f}")
        return dataclasses.replace(args, logits_loss_kwargs={**args.logits_loss_kwargs, "beta": beta})

    def check_objective(self, objective: DistillationObjective) -> None:
        """Refuse an objective this teacher's outputs cannot feed."""

    def framing_metrics(self, data: DistillationData, collate_fn: Callable) -> FramingMetrics:
        """metrics.json's ``framing``."""
        return FramingMetrics(data.framing.packing, loss_on=data.loss_on)

    @abstractmethod
    def evaluator(
        self, data: DistillationData, eval_sets: dict[str, Dataset], collate_fn: Callable, vocab_size: int
    ) -> Callable[[PreTrainedModel], dict[str, float]]:
        """The student's evaluator, called at each evaluation: held-out split and named eval sets."""

    @abstractmethod
    def own_metrics(self) -> Evaluation:
        """The teacher's own held-out metrics (after an evaluation)."""

    def recording(self) -> Optional[RecordingSource]:
        """Where the teacher's outputs were recorded (None for one that runs)."""
        return None

    def memory_bytes(self) -> Optional[int]:
        """The teacher's memory when it ran (None for one that does not)."""
        return None

    def summary(self) -> TeacherMetrics:
        """metrics.json's ``teacher``: its own held-out metrics, where it was recorded, size, precision, architecture
        and the multimodal checkpoint it is the language model of (if it is; both as read when it loaded); its memory
        only when it ran."""
        return TeacherMetrics(
            evaluation=self.own_metrics(),
            recording=self.recording(),
            parameters=parameter_count(self.model),
            size_on_disk_bytes=self.checkpoint.size_on_disk_bytes,
            quantization=self.config.model.teacher_quantization,
            memory_bytes=self.memory_bytes(),
            multimodal_checkpoint=self.checkpoint.multimodal,
            architecture=architecture_summary(self.model),
        )

    def prepare(self, accelerator: Accelerator) -> None:
        """Called by the trainer once, after the objective attached its hooks: place what runs."""

    @abstractmethod
    def __call__(self, batch: dict[str, torch.Tensor], objective: DistillationObjective) -> Any:
        """The teacher's outputs for a batch, as the objective reads them (the trainer calls this every step)."""


def stop_at_end_of_turn(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> None:
    """List ``template``'s end-of-turn token first among the student's generation stops (its generation config's
    ``eos_token_id``), so that its completions end with its turn: on-policy, in the generation eval and in the saved
    student. A base model given a chat template stops only at its end of text, and would write the next turn."""
    end = end_of_turn_id(tokenizer, template)
    configured = student.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    if end is not None and end not in configured:
        student.generation_config.eos_token_id = [end, *(token for token in configured if token is not None)]
