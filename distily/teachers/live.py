"""The live teacher (``teacher_source: live``): loaded once, run under ``no_grad`` on every batch.

Its full logits feed the logit loss (``LogitsComponent``); when the whole teacher is on each device, it runs
without its LM head and the loss applies the head slice by slice (``chunked.py``), so its ``[tokens, vocab]``
logits are never held at once.
"""

import itertools
import math
from functools import partial
from typing import Callable, Optional

from datasets import Dataset
import torch
from accelerate import Accelerator
from accelerate.utils import DynamoBackend
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from distily.config import DistillConfig
from distily.evaluation.arguments import HELDOUT_SET
from distily.data.batches import collate
from distily.data.chat import MESSAGES, ChatTemplate, run_chat_template
from distily.data.documents import check_token_ids, load_training_documents
from distily.data.framing import check_causality, model_inputs
from distily.data.training_data import DistillationData, build_datasets
from distily.errors import DistilyConfigError
from distily.evaluation.framing_check import check_framing
from distily.evaluation.heldout import Evaluator
from distily.metrics import Evaluation, FramingMetrics, metric_key
from distily.models.architecture import decoder_of, plain_lm_head, resolve_max_seq_length, token_id_limit
from distily.models.finite import NonFiniteOutputs, nonfinite_message, on_any_process
from distily.models.teacher import load_teacher, load_tokenizer
from distily.objectives.component import loss_positions
from distily.objectives.losses import teacher_confidence
from distily.objectives.objective import DistillationObjective, LogitsComponent
from distily.teachers.placement import place_teacher, teacher_is_sharded
from distily.teachers.source import TeacherSource

CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 20, 8


@torch.no_grad()
def calibrate_cakld_beta(teacher: PreTrainedModel, dataset, collate_fn) -> float:
    """CAKLD's beta: the teacher's mean confidence over the first training batches (as BitDistiller does,
    Du et al., 2024), estimated once before training."""
    loader = DataLoader(dataset, batch_size=CALIBRATION_BATCH_SIZE, collate_fn=collate_fn)
    device = next(teacher.parameters()).device
    batches = list(itertools.islice(loader, CALIBRATION_BATCHES))
    return teacher_confidence(
        (teacher(**model_inputs(b, device)).logits for b in batches),
        (loss_positions(b).to(device) for b in batches),
    )


class LiveTeacher(TeacherSource):
    logits_component = LogitsComponent

    def __init__(self, config: DistillConfig):
        """Load the training documents (a bad dataset fails before the models load), the teacher (checked to be
        causal before the student copies anything from it) and its tokenizer."""
        model_args = config.model
        self.config = config
        self.documents = load_training_documents(config.data)
        if config.training.lmbda > 0 and not self.chat:
            raise DistilyConfigError(
                f"lmbda={config.training.lmbda}: on-policy distillation completes the prompts of chat data, and "
                f"{config.data.dataset_name!r} holds none; expected messages or prompt + completion data, or lmbda=0"
            )
        self.hold(load_teacher(
            model_args.teacher_model_name_or_path, model_args.teacher_torch_dtype, model_args.trust_remote_code
        ))
        check_causality(self.model, "teacher")
        self.tokenizer = load_tokenizer(
            model_args.teacher_model_name_or_path, "teacher", model_args.trust_remote_code
        )
        self.placed = self.model  # the teacher as it runs (sharded under FSDP2/ZeRO-3): set in ``prepare``
        self.fuse_lm_head = False  # decided in ``prepare``
        self._evaluator: Optional[Evaluator] = None
        self.nonfinite_outputs = NonFiniteOutputs()
        self.process_group_device: Optional[torch.device] = None  # a run's on several processes: set in ``prepare``

    @property
    def live_model(self) -> PreTrainedModel:
        return self.model

    def student_init_model(self) -> PreTrainedModel:
        return self.model

    def student_built(self, student: PreTrainedModel) -> None:
        """Quantize the teacher now (the student copied its full-precision weights)."""
        model_args = self.config.model
        if model_args.teacher_quantization != "none":
            self.hold(load_teacher(
                model_args.teacher_model_name_or_path,
                model_args.teacher_torch_dtype,
                model_args.trust_remote_code,
                model_args.teacher_quantization,
            ))

    @property
    def chat(self) -> bool:
        """Whether the data are conversations."""
        return MESSAGES in self.documents.column_names

    def student_chat_template(self) -> Optional[ChatTemplate]:
        if not self.chat:
            return None
        data = self.config.data
        return run_chat_template(self.tokenizer, data.chat_template, data.chat_template_kwargs,
                                 date=data.chat_template_date)

    def datasets(self, student: PreTrainedModel) -> DistillationData:
        """The documents tokenized and packed, at the length both models take."""
        config = self.config
        training = config.training
        check_token_ids(self.documents, token_id_limit(self.model, student), config.data)  # pre-tokenized rows
        max_seq_length = resolve_max_seq_length(config.data.max_seq_length, self.model, student)
        # one process writes the tokenization cache, the others read it (one per node without a shared filesystem)
        with training.main_process_first(local=training.save_on_each_node, desc="tokenizing"):
            return build_datasets(config.data, self.tokenizer, max_seq_length, training.split_seed, self.documents)

    def collate_fn(self) -> Callable:
        return partial(collate, pad_token_id=self.pad_token_id)

    def mean_confidence(self, train: Dataset) -> float:
        return calibrate_cakld_beta(self.model, train, collate)

    def framing_metrics(self, data: DistillationData, collate_fn: Callable) -> FramingMetrics:
        """The packing, and the teacher's loss packed vs by document on a few held-out documents."""
        if data.eval_documents is None:
            return super().framing_metrics(data, collate_fn)
        config = self.config
        return check_framing(
            self.model, data.eval_documents, self.tokenizer, data.framing, config.data.dataset_text_column,
            collate_fn, config.training.per_device_eval_batch_size,
        ) or super().framing_metrics(data, collate_fn)

    def evaluator(self, data, eval_sets, collate_fn, vocab_size) -> Callable[[PreTrainedModel], dict[str, float]]:
        """Held-out split and named sets, against the teacher; its own metrics computed once, in the first
        evaluation (before training), and checked there: ``_evaluate``."""
        batch_size = self.config.training.per_device_eval_batch_size
        self._evaluator = Evaluator({HELDOUT_SET: data.eval, **eval_sets}, collate_fn, batch_size, self.model,
                                    vocab_size, tokenizer=self.tokenizer)
        return self._evaluate

    def _evaluate(self, student: PreTrainedModel) -> dict[str, float]:
        """The evaluator's metrics of ``student``, once the teacher is found finite: its own held-out loss on each set
        (in its own dtype), and its outputs in the evaluation's losses just computed (under the run's autocast, as in
        training; on every process). A teacher whose logits hold NaN or +inf stops the run at the evaluation before
        training, before any step (a masked column's -inf logit leaves both finite), on every process together: one
        that stopped alone would leave the others waiting in their next collective."""
        metrics = self._evaluator(student)
        nonfinite_loss = self._nonfinite_heldout_loss()
        if on_any_process(nonfinite_loss is not None, self.process_group_device):
            raise DistilyConfigError(nonfinite_message(
                nonfinite_loss or "the teacher's held-out loss on another process: its logits", self.model.dtype
            ))
        if on_any_process(self.nonfinite_outputs.take(), self.process_group_device):
            raise DistilyConfigError(self.nonfinite_outputs.message("the teacher's outputs in the evaluation's losses"))
        return metrics

    def _nonfinite_heldout_loss(self) -> Optional[str]:
        """The teacher's first held-out loss (its own, on an eval set) that is not finite, in words; None if all
        are."""
        teacher_metrics = self._evaluator.teacher_metrics()
        losses = {name: teacher_metrics[metric_key(name, "lm_loss")] for name in self._evaluator.eval_sets}
        return next((f"the teacher's held-out loss on eval set {name!r} is {loss}: its logits"
                     for name, loss in losses.items() if not math.isfinite(loss)), None)

    def own_metrics(self) -> Evaluation:
        return Evaluation(self._evaluator.teacher_metrics())

    def memory_bytes(self) -> int:
        return self.model.get_memory_footprint()

    def prepare(self, accelerator: Accelerator) -> None:
        """Place the teacher (sharded like the student, or whole on each device); a whole teacher runs without
        its LM head, which the logit loss applies slice by slice. With the Trainer's ``torch_compile``, what runs
        is compiled as the student is (the accelerator's dynamo settings)."""
        self.fuse_lm_head = not teacher_is_sharded(accelerator) and plain_lm_head(self.model)
        self.process_group_device = accelerator.device if accelerator.num_processes > 1 else None
        self.placed = place_teacher(self.model, accelerator)
        self.forward = decoder_of(self.placed) if self.fuse_lm_head else self.placed
        dynamo = accelerator.state.dynamo_plugin
        if dynamo.backend != DynamoBackend.NO:
            self.forward = torch.compile(self.forward, **dynamo.to_kwargs())

    def __call__(self, batch: dict[str, torch.Tensor], objective: DistillationObjective):
        """The teacher's outputs for ``batch``, noted in ``nonfinite_outputs``: its logits, or the last hidden state
        the logit loss applies its LM head to."""
        with torch.no_grad():
            outputs = self.forward(
                **model_inputs(batch),
                output_hidden_states=objective.needs("needs_hidden_states"),
                output_attentions=objective.needs("needs_attentions"),
            )
        logits = getattr(outputs, "logits", None)
        self.nonfinite_outputs.add(outputs.last_hidden_state if logits is None else logits, self.model.dtype)
        return outputs
