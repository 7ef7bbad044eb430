"""Before ``distily record`` runs the teacher: the bytes the store will take, from the shards still to record (a
resumed recording counts only those), against the free space of the filesystem it is written on."""

import logging

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distily.data.batches import longest_row
from distily.data.framing import LOSS_MASK, POSITION_IDS
from distily.data.store import TEACHER_CONFIG_DIR, TOKENIZER_DIR, StoreWriter, shard_layout
from distily.models.architecture import output_vocab_size
from distily.objectives.model_shape import ModelShape
from distily.outputs import check_free_space, safetensors_size, saved_size
from distily.recording.arguments import RecordArguments
from distily.recording.hf import hidden_states_dtype

logger = logging.getLogger(__name__)

MANIFEST_BYTES_PER_SHARD = 2048  # a shard's entry (file, rows, bytes, sha256, stats) in progress.json and manifest
REMEDIES = "fewer rows (max_samples, max_eval_samples), a smaller record_top_k or fewer record_hidden_states_layers"


def store_bytes(writer: StoreWriter, pending: list[tuple], datasets: dict[str, Dataset], teacher: PreTrainedModel,
                tokenizer: PreTrainedTokenizerBase, record: RecordArguments) -> int:
    """Bytes the recording still writes into ``writer``'s store: each shard of ``pending`` (``(split, index, rows)``)
    as ``shard_layout`` gives it, its rows padded to the longest as ``collate`` pads them; the tokenizer and teacher
    config of a store that has none yet; the shards' entries in the progress file and manifest."""
    columns = next(iter(datasets.values())).column_names
    width = ModelShape.from_config(teacher.config).width
    shards = sum(
        safetensors_size(shard_layout(
            len(rows), longest_row(datasets[split].select(rows)), record.record_top_k, output_vocab_size(teacher),
            {layer: width for layer in record.record_hidden_states_layers or []}, hidden_states_dtype(teacher),
            POSITION_IDS in columns, LOSS_MASK in columns,
        ))
        for split, _, rows in pending
    )
    started = (writer.path / TOKENIZER_DIR).is_dir() and (writer.path / TEACHER_CONFIG_DIR).is_dir()
    saved = 0 if started else saved_size(tokenizer.save_pretrained) + saved_size(teacher.config.save_pretrained)
    listed = sum(len(entries) for entries in writer.shards.values()) + len(pending)
    return shards + saved + MANIFEST_BYTES_PER_SHARD * listed


def check_store_space(writer: StoreWriter, pending: list[tuple], datasets: dict[str, Dataset],
                      teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: RecordArguments,
                      log: bool = True) -> None:
    """Log the store's size against the free space (``log``: on the main process), and refuse a recording that
    cannot fit (unless ``disk_check`` is false) before anything is written."""
    needed = store_bytes(writer, pending, datasets, teacher, tokenizer, record)
    resumed = any(writer.shards.values())
    what = "the rest of the teacher store" if resumed else "teacher store"
    line = check_free_space(writer.path, needed, what, REMEDIES, refuse=record.disk_check,
                            detail=f" ({len(pending)} shards to record)")
    if log:
        logger.info(line)
