"""A live teacher whose tokenizer is not the student's (cross-tokenizer distillation, docs/cross_tokenizer.md).

Each text is tokenized by both tokenizers and aligned (``distily.data.alignment``), each conversation of chat data
rendered by both models' chat templates and aligned inside the assistant's turns (``distily.data.chat_alignment``);
a batch carries the student's ids (and its assistant mask), the teacher's ids and the alignment. The teacher runs
on its own ids; the logit loss is a ``CROSS_TOKENIZER_LOSSES`` loss at the aligned positions, and hidden-state
components pair the aligned positions.
The student is evaluated on its own tokens (the held-out split and the named eval sets, with the student's
tokenizer); there is no agreement with the teacher, whose vocabulary differs, and the teacher's own held-out loss is
on its own tokens (compare the two per byte of text, not per token).
"""

from functools import cached_property, partial
from typing import Callable, Optional

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.alignment import (
    TEACHER_ATTENTION_MASK, TEACHER_INPUT_IDS, TEACHER_LOSS_MASK, build_aligned_datasets, check_offsets,
    collate_aligned,
)
from distily.data.batches import collate, longest_row
from distily.data.chat import ChatTemplate
from distily.data.chat_alignment import (
    CompletionAlignment, build_aligned_chat_datasets, chat_templates, end_of_turn_id,
)
from distily.data.framing import INPUT_IDS, LOSS_MASK
from distily.data.training_data import DistillationData
from distily.data.vocabulary import VocabularyMap, map_vocabularies, token_pairs
from distily.errors import DistilyConfigError
from distily.evaluation.arguments import HELDOUT_SET
from distily.evaluation.heldout import Evaluator, heldout_metrics
from distily.generation.engine import chat_stop_ids
from distily.metrics import Evaluation, FramingMetrics, metric_key
from distily.models.architecture import output_vocab_size, resolve_max_seq_length
from distily.objectives.cross_tokenizer import NEEDS_SHARED_TOKENS, CrossTokenizerLogitsComponent
from distily.objectives.features import HiddenStatesComponent
from distily.objectives.objective import DistillationObjective, HardLabelComponent
from distily.objectives.router import RouterAuxComponent
from distily.teachers.live import LiveTeacher, calibrate_cakld_beta

ALIGNED_PIECES = "aligned_pieces"  # metrics.json's framing.packing: document pieces cut at aligned characters
ALIGNED_CONVERSATIONS = "aligned_conversations"  # one conversation a row, each model's own rendering
SUPPORTED_COMPONENTS = (CrossTokenizerLogitsComponent, HardLabelComponent, HiddenStatesComponent, RouterAuxComponent)


def teacher_rows(dataset: Dataset) -> Dataset:
    """The teacher's side of aligned rows, as plain ``input_ids`` rows (with their ``loss_mask``, for chat data)."""
    names = {TEACHER_INPUT_IDS: INPUT_IDS, TEACHER_LOSS_MASK: LOSS_MASK}
    found = {column: name for column, name in names.items() if column in dataset.column_names}
    return dataset.select_columns(list(found)).rename_columns(found)


class CrossTokenizerTeacher(LiveTeacher):
    def __init__(self, live: LiveTeacher, student_tokenizer: PreTrainedTokenizerBase):
        """The live teacher ``live``, for a student that reads ``student_tokenizer``'s tokens."""
        self.__dict__.update(live.__dict__)
        if self.config.evaluation.lm_eval_tasks:
            raise DistilyConfigError(
                "lm_eval_tasks runs the student and the teacher with one tokenizer; expected no lm_eval_tasks in a "
                "cross-tokenizer run (evaluate the saved student with `distily eval` instead)"
            )
        if self.chat and self.config.data.loss_on != "assistant":
            raise DistilyConfigError(
                f"loss_on={self.config.data.loss_on!r}: across tokenizers only the assistant's turns align (each "
                "template frames the rest its own way); expected loss_on=assistant"
            )
        for tokenizer, role in ((student_tokenizer, "student"), (self.tokenizer, "teacher")):
            check_offsets(tokenizer, role)
        # the student's and the teacher's chat templates, resolved once (a student without one fails here)
        self._templates = chat_templates(self.config.data, student_tokenizer, self.tokenizer) if self.chat else None
        self._student_tokenizer = student_tokenizer
        self._student_vocab = len(student_tokenizer)

    @property
    def student_tokenizer(self) -> PreTrainedTokenizerBase:
        return self._student_tokenizer

    def logit_columns(self, student: PreTrainedModel) -> None:
        return None  # each model's own vocabulary: the loss maps between them

    @cached_property
    def _token_pairs(self) -> list[tuple[int, int]]:
        """The tokenizers' ``token_pairs``, found once for the student's rows and the loss's map."""
        return token_pairs(self._student_tokenizer, self.tokenizer)

    def student_token_map(self) -> VocabularyMap:
        return map_vocabularies(self._student_tokenizer, self.tokenizer, required=False, pairs=self._token_pairs)

    def student_built(self, student: PreTrainedModel) -> None:
        """Sizes the vocabulary map; a student built from the teacher's config takes its special tokens (BOS, end of
        text, padding) from its own tokenizer, in its config and generation config, not the teacher's ids."""
        self._student_vocab = output_vocab_size(student)
        if self.config.model.student_model_name_or_path is None:
            for settings in (student.config, student.generation_config):
                for role in ("bos_token_id", "eos_token_id", "pad_token_id"):
                    setattr(settings, role, getattr(self._student_tokenizer, role))
        super().student_built(student)

    def student_chat_template(self) -> Optional[ChatTemplate]:
        return self._templates[0] if self.chat else None

    def completion_alignment(self, student: PreTrainedModel, max_seq_length: int) -> Optional[CompletionAlignment]:
        """With chat data, the student's completions (ending at its chat stop tokens) in the teacher's tokens after the
        same conversation's prompt in its template, then its end-of-turn token when the student ended its turn; None
        with text (which ``__init__`` refuses for on-policy)."""
        if not self.chat:
            return None
        return CompletionAlignment(
            self._student_tokenizer, self.tokenizer,
            tuple(chat_stop_ids(self._student_tokenizer, student, self._templates[0])),  # as its generator stops
            end_of_turn_id(self.tokenizer, self._templates[1]), max_seq_length,
        )

    @property
    def logits_component(self) -> Callable:
        objective = self.config.objective
        vocabulary = map_vocabularies(
            self._student_tokenizer, self.tokenizer, self._student_vocab, output_vocab_size(self.model),
            required=objective.cross_tokenizer_loss in NEEDS_SHARED_TOKENS, pairs=self._token_pairs,
        )
        return partial(CrossTokenizerLogitsComponent, cross_tokenizer_loss=objective.cross_tokenizer_loss,
                       vocabulary=vocabulary)

    def datasets(self, student: PreTrainedModel) -> DistillationData:
        """The documents cut into pieces both models take, tokenized by both tokenizers and aligned."""
        config = self.config
        training = config.training
        max_seq_length = resolve_max_seq_length(config.data.max_seq_length, self.model, student)
        tokenizers = (self._student_tokenizer, self.tokenizer)
        with training.main_process_first(local=training.save_on_each_node, desc="tokenizing"):
            if self.chat:
                return build_aligned_chat_datasets(config.data, self._templates, *tokenizers, max_seq_length,
                                                   training.split_seed, self.documents)
            return build_aligned_datasets(config.data, *tokenizers, max_seq_length, training.split_seed, self.documents)

    @property
    def student_pad_token_id(self) -> int:
        pad = self._student_tokenizer.pad_token_id
        return pad if pad is not None else 0

    def collate_fn(self) -> Callable:
        return partial(collate_aligned, pad_token_id=self.student_pad_token_id, teacher_pad_token_id=self.pad_token_id)

    def longest_train_row(self, data: DistillationData) -> int:
        """The most tokens in one training row, in either model's tokens."""
        return max(longest_row(data.train), longest_row(data.train, TEACHER_INPUT_IDS))

    def mean_confidence(self, train: Dataset) -> float:
        return calibrate_cakld_beta(self.model, teacher_rows(train), collate)

    def check_objective(self, objective: DistillationObjective) -> None:
        """Attention maps and relations pair positions one to one, which two tokenizations do not."""
        for name, component in objective.components.items():
            if not isinstance(component, SUPPORTED_COMPONENTS):
                raise DistilyConfigError(
                    f"the {name} component pairs teacher and student positions one to one, which differ across "
                    f"tokenizers; expected {name}_weight=0 in a cross-tokenizer run "
                    "(logits, hidden states, hard labels, a mixture-of-experts student's router loss)"
                )

    def framing_metrics(self, data: DistillationData, collate_fn: Callable) -> FramingMetrics:
        return FramingMetrics(ALIGNED_CONVERSATIONS if self.chat else ALIGNED_PIECES, loss_on=data.loss_on)

    def evaluator(self, data, eval_sets, collate_fn, vocab_size) -> Evaluator:
        """The student alone on its own tokens (held-out split and named sets); the teacher on its own, once."""
        batch_size = self.config.training.per_device_eval_batch_size
        self._eval = data.eval
        plain = partial(collate, pad_token_id=self.student_pad_token_id)
        columns = [column for column in (INPUT_IDS, LOSS_MASK) if column in data.eval.column_names]
        self._evaluator = Evaluator({HELDOUT_SET: data.eval.select_columns(columns), **eval_sets}, plain,
                                    batch_size, tokenizer=self._student_tokenizer)
        return self._evaluator

    def own_metrics(self) -> Evaluation:
        """The teacher's held-out loss, perplexity and bits per byte, on its own tokens of the held-out text."""
        batch_size = self.config.training.per_device_eval_batch_size
        found = heldout_metrics(self.model, teacher_rows(self._eval), partial(collate, pad_token_id=self.pad_token_id),
                                batch_size, desc="Evaluating the teacher", tokenizer=self.tokenizer)
        return Evaluation({metric_key(HELDOUT_SET, name): value for name, value in found.items()})

    def __call__(self, batch, objective: DistillationObjective):
        teacher_batch = {INPUT_IDS: batch[TEACHER_INPUT_IDS], "attention_mask": batch[TEACHER_ATTENTION_MASK]}
        return super().__call__(teacher_batch, objective)
