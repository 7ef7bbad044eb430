"""``distily record``: run the teacher once over the packed train and eval sequences and write a store.

The sequences are exactly those ``distily distill`` would train and evaluate on with the same config
(same documents, split, tokenizer, length, seed and limits). Recording resumes: shards already in the
store are kept, and the rest are recorded as an uninterrupted run would have. Launched on several processes
(``accelerate launch``, ``torchrun``), each records its share of the shards on its own device and the main process
lists them all: the store is the one a single process writes. A chat template that writes the day
renders the whole recording with one date (``chat_template_date``, else the resumed recording's, else today), which
the store's settings record.
"""

import json
import math
from typing import Optional

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

import distily
from distily.arguments import user_set
from distily.config import RecordConfig
from distily.data.batches import collate
from distily.data.chat import adopt_chat_template, run_date
from distily.data.documents import check_token_ids, load_training_documents
from distily.data.framing import Framing, check_causality, check_models_keep_documents_apart
from distily.data.packing import chat_tokenization, data_framing
from distily.data.store import (
    MANIFEST,
    TEACHER_CONFIG_DIR,
    TOKENIZER_DIR,
    StoreWriter,
    bytes_per_entry,
    check_store_directory,
    id_dtype,
    read_manifest,
    recorded_chat_template_date,
    shard_name,
)
from distily.data.tokenization_cache import tokenizer_fingerprint
from distily.data.training_data import build_datasets
from distily.errors import DistilyConfigError, RunInterrupted
from distily.evaluation.perplexity import perplexity
from distily.models.architecture import output_vocab_size, resolve_max_seq_length, token_id_limit
from distily.models.identity import WEIGHTS_DIGEST, local_weights_digest, teacher_identity
from distily.models.teacher import DTYPES, from_pretrained, load_teacher, load_tokenizer, teacher_config
from distily.models.vocab import check_tokenizer_fits
from distily.preemption import StopSignals, stopped_on
from distily.recording.disk_space import check_store_space
from distily.recording.hf import HFRecorder, hidden_states_dtype

FIDELITY_KS = (8, 32, 64, 128)


def recording_settings(config: RecordConfig, teacher: PreTrainedModel, tokenizer, documents, max_seq_length) -> dict:
    """Everything that decides a store's content: provenance, framing and recording options."""
    data, record = config.data, config.record
    framing = data_framing(documents, tokenizer, max_seq_length, data.packing)
    vocab = output_vocab_size(teacher)
    chat = chat_tokenization(documents, tokenizer, data, max_seq_length)
    chat_settings = {} if chat is None else {  # chat data only: a text store's settings stay as they were
        "loss_on": chat.loss_on, "chat_template_sha256": chat.template.sha256,
        **({"chat_template_kwargs": chat.template.kwargs} if chat.template.kwargs else {}),
        **({"chat_template_date": chat.template.date} if chat.template.date else {}),  # a dated template's
        **({"eval_split_by": data.eval_split_by} if user_set(data, "eval_split_by") else {}),  # not the default
    }
    return {
        **teacher_identity(config.model.teacher_model_name_or_path, teacher),
        "teacher_dtype": str(teacher.dtype).removeprefix("torch."),
        "teacher_vocab_size": vocab,
        "teacher_num_hidden_layers": teacher.config.num_hidden_layers,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "max_seq_length": max_seq_length,
        "packing": framing.packing,
        "text_document_delimiter": data.text_document_delimiter,
        "dataset_name": data.dataset_name,
        "dataset_config_name": data.dataset_config_name,
        "dataset_split": data.dataset_split,
        "dataset_text_column": data.dataset_text_column,
        "dataset_fingerprint": documents._fingerprint,
        "eval_fraction": data.eval_fraction,
        "max_samples": data.max_samples,
        "max_eval_samples": data.max_eval_samples,
        "seed": config.inference.split_seed,
        "record_top_k": record.record_top_k,
        "logits_temperature": record.logits_temperature,
        "record_hidden_states_layers": sorted(record.record_hidden_states_layers or []),
        "record_hidden_states_dtype": str(hidden_states_dtype(teacher)).removeprefix("torch."),
        "record_shard_size": record.record_shard_size,
        "record_backend": record.record_backend,
        "id_dtype": str(id_dtype(vocab)).removeprefix("torch."),
        "fidelity_k": sorted({min(k, vocab) for k in (*FIDELITY_KS, record.record_top_k)}),
        **chat_settings,
    }


def _fidelity_positions(writer: StoreWriter) -> int:
    """The positions the held-out fidelity sums cover: each shard's loss positions, or all its positions for a shard
    recorded before they were counted (its sums covered all of them), so that a recording resumed across that change
    finishes with the mean of what was summed."""
    return sum(entry["stats"].get("loss_positions", entry["stats"]["positions"])
               for entry in writer.shards["eval"].values())


def _report(writer: StoreWriter) -> dict:
    """What the manifest says about the finished store: sizes, the teacher's held-out loss, fidelity."""
    settings = writer.settings
    totals = {split: writer.totals(split) for split in writer.shards}
    entries = [entry for shards in writer.shards.values() for entry in shards.values()]
    tokens = sum(total.get("positions", 0) for total in totals.values())
    held_out = totals["eval"]
    lm_loss = held_out["nll_sum"] / max(held_out["targets"], 1)
    report = {
        "distily_version": distily.__version__,
        "rows": {split: sum(e["rows"] for e in shards.values()) for split, shards in writer.shards.items()},
        "bytes_per_topk_entry": bytes_per_entry(settings["teacher_vocab_size"]),
        "bytes_per_token": sum(e["bytes"] for e in entries) / max(tokens, 1),
        "teacher_heldout": {"lm_loss": lm_loss, "perplexity": perplexity(lm_loss)},
    }
    if "fidelity" in held_out:
        positions = _fidelity_positions(writer)  # for chat data with loss_on: assistant, the assistant's
        report["fidelity"] = {
            "tokens": positions,
            "temperature": settings["logits_temperature"],
            "by_k": {
                k: {"kl": sums["kl_sum"] / positions, "tail_mass": sums["tail_mass_sum"] / positions}
                for k, sums in sorted(held_out["fidelity"].items(), key=lambda item: int(item[0]))
            },
        }
    return report


def _recorder(config: RecordConfig, teacher: PreTrainedModel, max_seq_length: int, fidelity_ks: list[int]):
    record = config.record
    if record.record_backend == "vllm":
        from distily.recording.vllm_backend import VLLMRecorder

        return VLLMRecorder(
            config.model.teacher_model_name_or_path,
            record.record_top_k,
            record.logits_temperature,
            record.record_hidden_states_layers or [],
            teacher,
            max_seq_length,
            config.model.trust_remote_code,
        )
    return HFRecorder(
        teacher.to(config.inference.device),
        record.record_top_k,
        record.logits_temperature,
        sorted(record.record_hidden_states_layers or []),
        config.inference.per_device_eval_batch_size,
        fidelity_ks,
    )


def _check_teacher_reads(teacher: PreTrainedModel, framing: Framing) -> None:
    """The live teacher's refusals, before a row is recorded: a teacher that sees later tokens, or (packings with
    document masks) one that lets packed documents attend to each other, would fill the store with predictions a
    causal student reading each document alone cannot match, and a run from the store runs no teacher to probe."""
    check_causality(teacher, "teacher")
    check_models_keep_documents_apart([("teacher", teacher)], framing)


def _teacher_for(config: RecordConfig) -> PreTrainedModel:
    """The loaded teacher (hf), or for vllm one without weights in the dtype it runs in (the checkpoint's for auto):
    its config and dtype are all the store and the engine need."""
    model_args = config.model
    if config.record.record_backend == "hf":
        return load_teacher(model_args.teacher_model_name_or_path, model_args.teacher_torch_dtype,
                            model_args.trust_remote_code)
    name = model_args.teacher_model_name_or_path
    config = from_pretrained(AutoConfig, name, "teacher config", trust_remote_code=model_args.trust_remote_code)
    dtype = DTYPES[model_args.teacher_torch_dtype]
    chosen = {} if dtype == "auto" else {"dtype": dtype}  # auto: the config's, the checkpoint's
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(teacher_config(config, name),
                                                trust_remote_code=model_args.trust_remote_code, **chosen)


def run_recording(
    config: RecordConfig,
    teacher: Optional[PreTrainedModel] = None,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
) -> dict:
    """Record the teacher into ``teacher_store`` (resuming a recording with the same settings) and return
    the manifest. ``teacher`` and ``tokenizer`` may be passed in when already loaded (``distily generate``)."""
    model_args, record = config.model, config.record
    # with a launcher: this process's rank (over gloo on the CPU), and its own accelerator as the current device
    state = PartialState(cpu=config.inference.device.type == "cpu")
    check_store_directory(record.teacher_store)  # before the teacher: a bad store path or dataset fails fast
    # one date for the whole recording: the one given, else a resumed recording's, else today
    config.data.chat_template_date = run_date(config.data.chat_template_date,
                                              recorded_chat_template_date(record.teacher_store))
    documents = load_training_documents(config.data)
    teacher = teacher if teacher is not None else _teacher_for(config)
    tokenizer = tokenizer or load_tokenizer(model_args.teacher_model_name_or_path, "teacher",
                                            model_args.trust_remote_code)
    check_tokenizer_fits(tokenizer, teacher, "teacher")  # a run from the store checks it too
    check_token_ids(documents, token_id_limit(teacher), config.data)  # pre-tokenized rows: ids it takes
    max_seq_length = resolve_max_seq_length(config.data.max_seq_length, teacher)
    settings = recording_settings(config, teacher, tokenizer, documents, max_seq_length)
    with state.main_process_first():  # the main process reopens a finished store with damaged shards
        writer = StoreWriter(record.teacher_store, settings)
    if writer.finished:
        return json.loads((writer.path / MANIFEST).read_text())
    with state.main_process_first():  # one process writes the tokenization cache, the others read it
        data = build_datasets(config.data, tokenizer, max_seq_length, config.inference.split_seed, documents)
    if record.record_backend == "hf":  # vllm's teacher has no weights here (its engine loads them)
        _check_teacher_reads(teacher, data.framing)
    adopt_chat_template(tokenizer, config.data.chat_template)  # its students are saved with the rows' template
    datasets = {"train": data.train, "eval": data.eval}
    check_store_space(writer, _shards_to_record(writer, datasets, record.record_shard_size), datasets, teacher,
                      tokenizer, record, log=state.is_main_process)  # before the first write
    if state.is_main_process:
        tokenizer.save_pretrained(writer.path / TOKENIZER_DIR)
        teacher.config.save_pretrained(writer.path / TEACHER_CONFIG_DIR)
    if data.framing.document_masks and record.record_backend == "vllm":
        raise DistilyConfigError(
            f"record_backend=vllm records whole rows, not packed documents (packing={data.framing.packing}); "
            "expected record_backend=hf or packing=stream or padded"
        )
    recorder = _recorder(config, teacher, max_seq_length, writer.settings["fidelity_k"])
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    _record_shards(writer, recorder, datasets, record.record_shard_size, pad_token_id, state)
    if state.is_main_process:
        digest = local_weights_digest(model_args.teacher_model_name_or_path)  # a run naming the teacher checks it
        writer.finish({**_report(writer), "packed_rows": data.packed_rows,  # all rows or a cut/sample
                       **({WEIGHTS_DIGEST: digest} if digest is not None else {})})
    state.wait_for_everyone()
    return read_manifest(writer.path / MANIFEST)


def _shards_to_record(writer: StoreWriter, datasets: dict[str, Dataset], shard_size: int) -> list[tuple]:
    """``(split, index, rows)`` of each shard the store lacks, in the order an uninterrupted recording writes them."""
    return [(split, index, range(start, min(start + shard_size, len(dataset))))
            for split, dataset in datasets.items() for index, start in enumerate(range(0, len(dataset), shard_size))
            if not writer.done(split, index)]


def _record_shards(writer: StoreWriter, recorder, datasets: dict[str, Dataset], shard_size: int, pad_token_id: int,
                   state: PartialState) -> None:
    """Record the shards the store lacks. Of N processes, each records every N-th of them, and the main process lists
    each round of N in ``progress.json`` (a recording stopped in a round is resumed from the shards listed). A stop
    signal (SIGTERM, SIGUSR1: ``distily.preemption``) or a refused shard on any process stops every one once the
    round is listed (each process exits with the refusal's line: none is left waiting for another)."""
    pending = _shards_to_record(writer, datasets, shard_size)
    mine = pending[state.process_index :: state.num_processes]
    total = sum(len(dataset) for dataset in datasets.values())
    with StopSignals() as signals, signals.deferred(), tqdm(
            total=total, initial=writer.rows_done(), desc="Recording teacher", unit="seq",
            disable=not state.is_main_process) as progress:
        for round_index in range(math.ceil(len(pending) / state.num_processes)):
            saved, refusal = None, None  # this process's shard of the round: (split, index, entry), or its refusal
            if round_index < len(mine):
                saved, refusal = _record_shard(writer, recorder, datasets, mine[round_index], pad_token_id, progress)
            gathered = gather_object([(saved, signals.received or 0, refusal)])
            for process, (shard, _, _) in enumerate(gathered):
                if shard is None or not state.is_main_process:
                    continue
                writer.list_shard(*shard)
                if process != state.process_index:  # the main process's rows were counted as it recorded them
                    progress.update(shard[2]["rows"])
            refusals = [refused for _, _, refused in gathered if refused is not None]
            if refusals:  # on every process, once the round's recorded shards are listed: none waits for another
                raise DistilyConfigError(refusal or refusals[0])
            stop = max(number for _, number, _ in gathered)
            if stop:  # listed: the store resumes after this round
                raise RunInterrupted(f"{stopped_on(stop)} between shards; those recorded are kept in "
                                     f"{str(writer.path)!r}, the same command records the rest", stop)


def _record_shard(writer: StoreWriter, recorder, datasets: dict[str, Dataset], shard: tuple, pad_token_id: int,
                  progress) -> tuple[Optional[tuple], Optional[str]]:
    """Record and save the ``shard`` ``(split, index, rows)``: ``((split, index, entry), None)``, or ``(None, the
    refusal)`` where a row's teacher outputs cannot be stored or the shard cannot be written (a full disk), with
    nothing of the shard written."""
    split, index, rows = shard
    batch = collate([datasets[split][row] for row in rows], pad_token_id)  # [rows, seq], to the longest
    try:
        tensors, stats = recorder.record(batch, held_out=split == "eval", progress=progress)
    except DistilyConfigError as err:
        return None, f"shard {shard_name(split, index)!r}: {err}"
    try:
        return (split, index, writer.save_shard(split, index, tensors, stats)), None
    except DistilyConfigError as err:  # its line names the shard's file
        return None, str(err)
