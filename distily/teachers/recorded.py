"""Training from a recorded teacher (``teacher_source: recorded``).

``RecordedTeacher`` opens a store for a run: it verifies the shards, checks the store's provenance
against the run (sequence length, dataset, tokenizer, temperature, teacher; the split settings the run takes
from the store before it starts: ``store_split``), gives the datasets (the
stored token ids and sparse targets), and, called on a batch, the teacher's outputs the objective reads
(``RecordedTeacherOutput``, fed to the sparse logit loss). The teacher model is not loaded, except once,
to copy layers into a student initialised from it; nothing of it runs, so it is neither probed nor
counted in the preflight, and metrics.json gives it no memory figure.
"""

from functools import partial
from typing import Callable, Optional

from datasets import Dataset
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from distily.config import DistillConfig
from distily.data.batches import collate
from distily.data.chat import ChatTemplate, run_chat_template
from distily.data.documents import load_training_documents
from distily.data.framing import Framing
from distily.data.store import (
    ROW_NLL,
    ROW_TARGETS,
    TAIL_LOGPROB,
    TOPK_IDS,
    TOPK_LOGPROBS,
    StoreDataset,
    TeacherStore,
    collate_recorded,
    hidden_states_key,
)
from distily.data.tokenization_cache import tokenizer_fingerprint
from distily.data.training_data import DistillationData, evaluated_rows
from distily.errors import DistilyConfigError
from distily.evaluation.bytes import byte_metrics, dataset_target_bytes, token_byte_lengths
from distily.evaluation.heldout import Evaluator, heldout_metrics
from distily.evaluation.perplexity import perplexity
from distily.metrics import Evaluation, RecordingSource
from distily.models.architecture import max_positions, output_vocab_size
from distily.models.arguments import FROM_TEACHER_LAYERS, ModelArguments
from distily.models.identity import WEIGHTS_DIGEST, checkpoint_identity, local_weights_digest
from distily.models.teacher import from_pretrained, hub_revision, load_teacher, load_tokenizer
from distily.objectives.losses import forward_kl
from distily.objectives.objective import DistillationObjective
from distily.objectives.sparse import RecordedRows, RecordedTeacherOutput, SparseLogitsComponent, bucket_logprobs
from distily.teachers.source import TeacherSource
from distily.teachers.store_split import holds_all, store_split, store_where


def needs_teacher_weights(model_args: ModelArguments) -> bool:
    """Whether building the student copies teacher weights (layers, whole or pruned, or named modules)."""
    from_teacher_layers = (model_args.student_model_name_or_path is None
                           and model_args.student_init in FROM_TEACHER_LAYERS)
    return from_teacher_layers or bool(model_args.copy_teacher_modules)


class RecordedTeacher(TeacherSource):
    logits_component = SparseLogitsComponent

    @classmethod
    def settled_config(cls, config: DistillConfig) -> DistillConfig:
        """``config`` with the split the store's rows were drawn with (``store_split``)."""
        return store_split(config, TeacherStore(config.record.teacher_store))

    def __init__(self, config: DistillConfig):
        """Open and verify the store, and check it against the run, whose ``config`` has the store's split
        (``settled_config``). The documents, when a dataset is named, are loaded first: a bad dataset fails fast."""
        documents = load_training_documents(config.data) if config.data.dataset_name else None
        self.config = config
        self.store = TeacherStore(config.record.teacher_store)
        self.where = store_where(self.store)
        self.settings = self.store.settings
        self.temperature = self.settings["logits_temperature"]
        self.max_seq_length = self.settings["max_seq_length"]
        self.store.verify()
        self.tokenizer = load_tokenizer(self.store.tokenizer_path, "teacher store", config.model.trust_remote_code)
        self._check_provenance(config, documents)
        self._eval: Optional[StoreDataset] = None  # the evaluated rows, set with the evaluator

    def _mismatch(self, what: str, run_value, stored_value) -> DistilyConfigError:
        return DistilyConfigError(
            f"{what}={run_value!r} differs from the {stored_value!r} {self.where} was recorded with; expected "
            f"{stored_value!r} or a store recorded for this run"
        )

    def _check_provenance(self, config: DistillConfig, documents: Optional[Dataset]) -> None:
        requested = config.data.max_seq_length
        if requested is not None and requested != self.max_seq_length:
            raise self._mismatch("max_seq_length", requested, self.max_seq_length)
        packing = config.data.packing
        if packing != "auto" and packing != self.settings["packing"]:
            raise self._mismatch("packing", packing, self.settings["packing"])
        if self.settings.get("loss_on", config.data.loss_on) != config.data.loss_on:  # a store of chat data
            raise self._mismatch("loss_on", config.data.loss_on, self.settings["loss_on"])
        self._check_chat_template(config)
        if config.objective.logits_temperature != self.temperature:
            raise self._mismatch("logits_temperature", config.objective.logits_temperature, self.temperature)
        if documents is not None and documents._fingerprint != self.settings["dataset_fingerprint"]:
            delimiter = self.settings.get("text_document_delimiter", config.data.text_document_delimiter)
            if config.data.text_document_delimiter != delimiter:  # the same .txt file, cut into other documents
                raise self._mismatch("text_document_delimiter", config.data.text_document_delimiter, delimiter)
            raise DistilyConfigError(
                f"dataset_name={config.data.dataset_name!r} holds other documents than the "
                f"{self.settings['dataset_name']!r} {self.where} was recorded on (fingerprint "
                f"{documents._fingerprint} vs {self.settings['dataset_fingerprint']}); expected the same documents, "
                "or no dataset_name to train on the store's"
            )
        model_args = config.model
        if model_args.teacher_model_name_or_path is not None:
            tokenizer = load_tokenizer(model_args.teacher_model_name_or_path, "teacher", model_args.trust_remote_code)
            fingerprint = tokenizer_fingerprint(tokenizer)
            if fingerprint != self.settings["tokenizer_fingerprint"]:
                raise DistilyConfigError(
                    f"the tokenizer of teacher_model_name_or_path={model_args.teacher_model_name_or_path!r} "
                    f"(fingerprint {fingerprint}) is not the one {self.where} was recorded with "
                    f"({self.settings['tokenizer_fingerprint']}); expected the recorded teacher's tokenizer"
                )
            self._check_teacher(model_args.teacher_model_name_or_path)

    def _check_teacher(self, name: str) -> None:
        """A teacher the run names must be the recorded one, whether the student copies its weights or not: the run
        names it as its teacher (run_settings.json, the model card). Its identity is read without loading it: the Hub
        commit its id resolves to, or of a local checkpoint the sampled digest of its weight files the manifest holds
        (milliseconds), else, of a store recorded before it did, the hash of every byte of them; of a store that
        recorded neither (a Hub teacher whose commit the back end did not give), its name."""
        recorded_digest = self.store.manifest.get(WEIGHTS_DIGEST)
        digest = local_weights_digest(name) if recorded_digest is not None else None
        if digest is not None:
            if digest != recorded_digest:
                raise self._other_teacher(name, WEIGHTS_DIGEST)
            return
        revision = hub_revision(name)
        identity = checkpoint_identity(name, revision.resolved if revision is not None else None)
        recorded = [key for key in ("teacher_revision", "teacher_weights_sha256") if self.settings[key] is not None]
        for key in recorded or ["teacher_model_name_or_path"]:
            if identity[key] != self.settings[key]:
                raise self._other_teacher(name, key)

    def _other_teacher(self, name: str, key: str) -> DistilyConfigError:
        return DistilyConfigError(
            f"teacher_model_name_or_path={name!r} is not the teacher {self.where} was recorded with "
            f"({self.settings['teacher_model_name_or_path']!r}, {key} differs); expected the recorded teacher, "
            "or no teacher_model_name_or_path where the student copies no teacher weights"
        )

    def _check_chat_template(self, config: DistillConfig) -> None:
        """A store of chat data holds rows rendered with one template, its keyword arguments and (a dated template)
        one date: a run that names another template (or other arguments) would train on the store's rows and save its
        student with its own; one with another date would frame its prompts (the generation eval's, lm-eval's) otherwise
        than the rows it trains on."""
        recorded = self.settings.get("chat_template_sha256")
        if recorded is None:  # a store of text
            return
        if config.data.chat_template is not None:
            given = run_chat_template(self.tokenizer, config.data.chat_template)
            if given.sha256 != recorded:
                raise DistilyConfigError(
                    f"chat_template={config.data.chat_template[:60]!r} (sha256 {given.sha256[:12]}) is not the "
                    f"template {self.where} was rendered with (sha256 {recorded[:12]}); expected that template, or "
                    "no chat_template to take the store's"
                )
        stored_kwargs = self.settings.get("chat_template_kwargs", {})
        if config.data.chat_template_kwargs != stored_kwargs:
            raise self._mismatch("chat_template_kwargs", config.data.chat_template_kwargs, stored_kwargs)
        stored_date = self.settings.get("chat_template_date")  # absent: not a dated template
        if stored_date is not None and config.data.chat_template_date != stored_date:
            raise self._mismatch("chat_template_date", config.data.chat_template_date, stored_date)

    def student_init_model(self) -> PreTrainedModel:
        """The teacher the student is built from: with its weights when the student copies some (checked to
        be the recorded teacher's), otherwise without any (its config on the meta device)."""
        self.hold(self._teacher_for_student(self.config.model))
        return self.model

    def student_built(self, student: PreTrainedModel) -> None:
        """Free the teacher's weights (loaded only to initialise the student)."""
        self.model.to("meta")
        self.model.tie_weights()  # the move gave tied weights (embedding and LM head) a tensor each

    def student_chat_template(self) -> Optional[ChatTemplate]:
        """A store of chat data: the template its rows were rendered with, which its tokenizer carries (a store
        recorded before it did carries the teacher's own, or none: then None)."""
        if self.settings.get("chat_template_sha256") is None or not isinstance(self.tokenizer.chat_template, str):
            return None
        return run_chat_template(self.tokenizer, None, self.settings.get("chat_template_kwargs", {}),
                                 date=self.config.data.chat_template_date)

    def _teacher_for_student(self, model_args: ModelArguments) -> PreTrainedModel:
        if not needs_teacher_weights(model_args):
            teacher_config = from_pretrained(AutoConfig, self.store.teacher_config_path, "teacher store config")
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(teacher_config, trust_remote_code=model_args.trust_remote_code)
        name = model_args.teacher_model_name_or_path
        if name is None:
            raise DistilyConfigError(
                "the student copies teacher weights (student_init='teacher' or 'pruned', or copy_teacher_modules), so "
                f"teacher_model_name_or_path is needed with a recorded teacher too; expected "
                f"{self.settings['teacher_model_name_or_path']!r} (the recorded teacher) or student_init=random"
            )
        return load_teacher(name, model_args.teacher_torch_dtype, model_args.trust_remote_code)  # checked: provenance

    def datasets(self, student: PreTrainedModel) -> DistillationData:
        """The store's sequences (at the length they were recorded at), once the student fits them."""
        self._check_student(student)
        data_args = self.config.data
        return DistillationData(
            train=self.store.dataset("train", data_args.max_samples),
            eval=self._held_out(data_args.max_eval_samples),
            max_seq_length=self.max_seq_length,
            framing=Framing(self.settings["packing"], self.max_seq_length),
            loss_on=self.settings.get("loss_on"),  # a store of chat data holds it
        )

    def _held_out(self, limit: Optional[int]) -> StoreDataset:
        """The held-out rows a live run evaluates with ``max_eval_samples=limit``: from a store of every held-out row
        (in packing order), the sample ``evaluated_rows`` draws; from a store of a sample, its first rows (the same
        draw, cut shorter)."""
        rows = self.store.dataset("eval")
        if not holds_all(self.store, "eval"):
            return self.store.dataset("eval", limit)
        indices = Dataset.from_dict({"row": range(len(rows))})
        return rows.select(evaluated_rows(indices, limit, self.settings["seed"])["row"])

    def collate_fn(self) -> Callable:
        return partial(collate_recorded, pad_token_id=self.pad_token_id)

    def _token_collate(self) -> Callable:
        """``collate`` of the token ids alone (for text eval sets, and counting the store rows' bytes)."""
        return partial(collate, pad_token_id=self.pad_token_id)

    def longest_train_row(self, data: DistillationData) -> int:
        return data.train.longest_row()

    def mean_confidence(self, train: Dataset) -> float:
        raise DistilyConfigError("logits_loss=cakld from a store needs a fixed beta; expected logits_loss_kwargs beta")

    def _check_student(self, student: PreTrainedModel) -> None:
        width = output_vocab_size(student)
        if width != self.settings["teacher_vocab_size"]:
            raise DistilyConfigError(
                f"the student has {width} logits but {self.where} was recorded over the teacher's "
                f"{self.settings['teacher_vocab_size']}; expected a student with the teacher's output width"
            )
        limit = max_positions(student.config)
        if limit is not None and limit < self.max_seq_length:
            raise DistilyConfigError(
                f"{self.where} holds {self.max_seq_length}-token sequences, beyond the student's position limit "
                f"{limit}; expected a store recorded with max_seq_length <= {limit}"
            )

    def check_objective(self, objective: DistillationObjective) -> None:
        """Every component must be computable from the store: no attention probabilities or hooked
        internals, and hidden states only of recorded layers."""
        recorded = set(self.settings["record_hidden_states_layers"])
        for name, component in objective.components.items():
            if component.needs_attentions or component.reads_teacher_internals:
                raise DistilyConfigError(
                    f"the {name} component reads the live teacher's internals, which a store does not record; "
                    f"expected teacher_source=live or {name}_weight=0"
                )
            if component.needs_hidden_states:
                missing = sorted({teacher_index for _, teacher_index in component.layer_pairs} - recorded)
                if missing:
                    raise DistilyConfigError(
                        f"{name}_layer_map uses teacher hidden states {missing}, but {self.where} recorded "
                        f"{sorted(recorded)}; expected record_hidden_states_layers to include them"
                    )

    def evaluator(self, data, eval_sets, collate_fn, vocab_size) -> Callable[[PreTrainedModel], dict[str, float]]:
        """The held-out split against the store; named sets on the student alone (the teacher is not loaded)."""
        batch_size = self.config.training.per_device_eval_batch_size
        named = Evaluator(eval_sets, self._token_collate(), batch_size, tokenizer=self.tokenizer)
        self._eval = data.eval

        def evaluate_student(student: PreTrainedModel) -> dict[str, float]:
            return {**self.student_metrics(student, data.eval, collate_fn, batch_size), **named(student)}

        return evaluate_student

    def __call__(self, batch: dict[str, torch.Tensor], objective: DistillationObjective) -> RecordedTeacherOutput:
        """The teacher's outputs for a batch built by ``collate_recorded`` (the trainer calls this)."""
        depth = self.settings["teacher_num_hidden_layers"]
        return RecordedTeacherOutput(
            topk_logprobs=batch[TOPK_LOGPROBS],
            topk_ids=batch[TOPK_IDS],
            tail_logprob=batch[TAIL_LOGPROB],
            temperature=self.temperature,
            hidden_states=tuple(batch.get(hidden_states_key(index)) for index in range(depth + 1)),
        )

    def own_metrics(self) -> Evaluation:
        """The teacher's held-out next-token loss on the evaluated rows, from the store, and its bits per byte
        (the bytes of the rows' targets, by the store's tokenizer)."""
        dataset = self._eval
        targets = int(dataset.row_values(ROW_TARGETS).sum())
        nll = float(dataset.row_values(ROW_NLL).sum())
        lm_loss = nll / max(targets, 1)
        n_bytes = dataset_target_bytes(dataset, self._token_collate(), token_byte_lengths(self.tokenizer))
        return Evaluation({"lm_loss": lm_loss, "perplexity": perplexity(lm_loss), **byte_metrics(nll, n_bytes)})

    def recording(self) -> RecordingSource:
        return RecordingSource(
            teacher_model_name_or_path=self.settings["teacher_model_name_or_path"],
            teacher_store=str(self.store.path),
            record_top_k=self.settings["record_top_k"],
            recording_temperature=self.temperature,
        )

    def student_metrics(
        self, student: PreTrainedModel, dataset: StoreDataset, collate_fn: Callable, batch_size: int
    ) -> dict:
        """``heldout_metrics`` of the student against the store: ``kl_to_teacher`` is the forward KL over the store's
        k + 1 buckets at the recording temperature T (at most the full KL at T, equal to it when k is the
        vocabulary; a live run's is taken at T = 1, so at T != 1 the two differ either way), ``top1_agreement`` the
        match with the teacher's recorded top token."""
        return heldout_metrics(student, dataset, collate_fn, batch_size, desc="Evaluating against the store",
                               tokenizer=self.tokenizer, reference=StoreReference(self.temperature))


class StoreReference:
    """The ``Reference`` of a store's held-out rows (``heldout.py``): the student's KL to the recorded k + 1 buckets
    and its agreement with the recorded top token, chunk by chunk."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def begin(self, batch: dict[str, torch.Tensor]) -> None:
        self.targets = RecordedRows(RecordedTeacherOutput(batch[TOPK_LOGPROBS], batch[TOPK_IDS], batch[TAIL_LOGPROB],
                                                          self.temperature))

    def sums(self, logits: torch.Tensor, chunk) -> dict[str, float]:
        topk_logprobs, topk_ids, tail_logprob = self.targets(chunk.rows, logits.shape[-1])
        student_buckets, teacher_buckets = bucket_logprobs(logits, topk_logprobs, topk_ids, tail_logprob,
                                                           self.temperature)
        return {"kl": forward_kl(student_buckets, teacher_buckets).sum().item(),
                "agree": int((logits.argmax(-1) == topk_ids[:, 0]).sum()), "positions": logits.shape[0]}
