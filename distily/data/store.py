"""The recorded-teacher store: the teacher's sparse outputs over packed sequences, written once by
``distily record`` and read by any number of training runs.

A store is a directory::

    manifest.json            provenance, settings, shards with sha256, fidelity report (written last)
    progress.json            while recording: settings and the shards done so far (removed at the end)
    tokenizer/               the teacher's tokenizer (save_pretrained)
    teacher/config.json      the teacher's config (the student can be built from it without the weights)
    train-00000.safetensors  one shard: record_shard_size packed sequences
    eval-00000.safetensors   ...

Each shard holds, for ``rows`` sequences of ``seq`` tokens (``k`` = record_top_k):

    input_ids               [rows, seq]        int32    the token ids the teacher read (right-padded in a shard)
    attention_mask          [rows, seq]        int8     1 on real tokens, 0 on padding
    position_ids            [rows, seq]        int32    per-document positions (packings with document masks)
    loss_mask               [rows, seq]        int8     chat data: 1 where the next token is a target (assistant)
    teacher_topk_logprobs   [rows, seq, k]     float16  the k largest log p_t(v | x_<=i), descending
    teacher_topk_ids        [rows, seq, k]     uint16 (vocabulary <= 65536) or int32: their token ids
    teacher_tail_logprob    [rows, seq]        float32  log of the mass of all other tokens (-inf if none)
    teacher_nll             [rows]             float64  the row's summed next-token NLL at temperature 1
    teacher_targets         [rows]             int32    the row's next-token targets (what teacher_nll sums)
    teacher_hidden_states.i [rows, seq, width] float16 (bfloat16 for a bfloat16 teacher), recorded layers

so a top-k entry costs 4 bytes (6 with int32 ids). ``manifest.json`` carries the sha256 of its own content
(``MANIFEST_CHECKSUM``): a manifest edited by hand is refused; one written before manifests carried it is read
with a warning. Shards are safetensors files: memory-mapped,
read one row at a time. A shard is written beside its final name and renamed into place, and only
then listed (with its sha256) in ``progress.json``, itself replaced atomically: a killed recording
leaves complete, listed shards and nothing that looks complete but is not.
"""

import bisect
import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from distily.arguments import file_in_the_way
from distily.data.batches import collate
from distily.data.framing import INPUT_IDS, LOSS_MASK, POSITION_IDS
from distily.errors import DistilyConfigError
from distily.outputs import file_problem, file_sha256, filesystem_errors, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT, VERSION = "distily-teacher-store", 2
MANIFEST, PROGRESS = "manifest.json", "progress.json"
MANIFEST_CHECKSUM = "manifest_sha256"  # in manifest.json: the sha256 of its other content (manifest_checksum)
TOKENIZER_DIR, TEACHER_CONFIG_DIR = "tokenizer", "teacher"
SPLITS = ("train", "eval")

TOPK_LOGPROBS = "teacher_topk_logprobs"
TOPK_IDS = "teacher_topk_ids"
TAIL_LOGPROB = "teacher_tail_logprob"
ROW_NLL = "teacher_nll"
ROW_TARGETS = "teacher_targets"
ATTENTION_MASK = "attention_mask"
HIDDEN_STATES_PREFIX = "teacher_hidden_states."


def hidden_states_key(layer: int) -> str:
    return f"{HIDDEN_STATES_PREFIX}{layer}"


def id_dtype(vocab_size: int) -> torch.dtype:
    """The narrowest id type that holds every token id: 2 bytes up to 65536 tokens, else 4."""
    return torch.uint16 if vocab_size <= 2**16 else torch.int32


def bytes_per_entry(vocab_size: int) -> int:
    """Bytes of one top-k entry: a float16 log-probability and its id."""
    return 2 + torch.empty((), dtype=id_dtype(vocab_size)).element_size()


def shard_layout(rows: int, seq: int, top_k: int, vocab_size: int, hidden_widths: dict[int, int],
                 hidden_dtype: torch.dtype, position_ids: bool, loss_mask: bool) -> dict[str, torch.Tensor]:
    """The tensors of a shard of ``rows`` rows padded to ``seq`` tokens, on the meta device (shapes and dtypes, no
    data): the table above, with the hidden states of each layer in ``hidden_widths`` (layer -> width), and
    ``position_ids`` and ``loss_mask`` where the rows carry them."""
    def empty(dtype, *shape):
        return torch.empty(shape, dtype=dtype, device="meta")

    tensors = {
        INPUT_IDS: empty(torch.int32, rows, seq), ATTENTION_MASK: empty(torch.int8, rows, seq),
        TOPK_LOGPROBS: empty(torch.float16, rows, seq, top_k), TOPK_IDS: empty(id_dtype(vocab_size), rows, seq, top_k),
        TAIL_LOGPROB: empty(torch.float32, rows, seq), ROW_NLL: empty(torch.float64, rows),
        ROW_TARGETS: empty(torch.int32, rows),
        **{hidden_states_key(layer): empty(hidden_dtype, rows, seq, width) for layer, width in hidden_widths.items()},
    }
    if position_ids:
        tensors[POSITION_IDS] = empty(torch.int32, rows, seq)
    if loss_mask:
        tensors[LOSS_MASK] = empty(torch.int8, rows, seq)
    return tensors


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def manifest_checksum(manifest: dict) -> str:
    """The sha256 of a manifest's canonical JSON (sorted keys, no spaces), without its own checksum."""
    content = {key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(path: Path) -> dict:
    """A store's manifest.json, refused in one line when it is not JSON, not a store's, or edited since it was
    written (its content no longer hashes to its checksum)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DistilyConfigError(
            f"teacher store manifest '{path}' is not valid JSON ({error}); expected the manifest `distily record` wrote"
        ) from error
    found = manifest if isinstance(manifest, dict) else {}
    if found.get("format") != FORMAT or found.get("version") != VERSION:
        raise DistilyConfigError(
            f"teacher_store={str(path.parent)!r} is format {found.get('format')!r} version {found.get('version')!r}; "
            f"expected {FORMAT!r} version {VERSION}"
        )
    recorded = manifest.get(MANIFEST_CHECKSUM)
    if recorded is None:
        logger.warning(f"teacher store manifest '{path}' has no {MANIFEST_CHECKSUM} (written before manifests carried "
                       "one): an edit of it cannot be detected")
    elif manifest_checksum(manifest) != recorded:
        raise DistilyConfigError(
            f"teacher store manifest '{path}' was changed after recording: its content hashes to "
            f"{manifest_checksum(manifest)[:16]}..., expected its {MANIFEST_CHECKSUM} {recorded[:16]}...; expected "
            "the manifest as `distily record` wrote it (undo the edit, or record the store again)"
        )
    return manifest


def _written_by_a_store(name: str) -> bool:
    """A name a store writes: its manifest or progress file, tokenizer/, teacher/ and its shards (partial ones too)."""
    if name in (MANIFEST, PROGRESS, TOKENIZER_DIR, TEACHER_CONFIG_DIR):
        return True
    split, _, rest = name.partition("-")
    return split in SPLITS and rest.removesuffix(".partial").endswith(".safetensors")


def check_store_directory(path: str | os.PathLike) -> None:
    """A store is a directory of its own: ``teacher_store`` naming an existing file, a path below one, or a directory
    holding what no store writes (a user's folder, the current directory for '.') is refused in one line (checked
    before the teacher loads, not when the first shard is written beside the user's files)."""
    where = file_in_the_way(path)
    if where is None and os.path.isdir(path):
        foreign = sorted(name for name in os.listdir(path) if not _written_by_a_store(name))
        where = f"holds {foreign[0]!r}, which no store writes" if foreign else None
    if where is not None:
        raise DistilyConfigError(
            f"teacher_store={str(path)!r} {where}; expected a directory (new, or a store to resume)"
        )


def existing_recording(path: Path) -> tuple[Optional[dict], bool]:
    """The recording a store directory holds (its manifest, or the progress file of one under way) and whether it is
    finished; (None, False) where none is."""
    for name in (MANIFEST, PROGRESS):
        existing = path / name
        if existing.is_file():
            recording = read_manifest(existing) if name == MANIFEST else json.loads(existing.read_text())
            return recording, name == MANIFEST
    return None, False


def recorded_chat_template_date(path: str | os.PathLike) -> Optional[str]:
    """The date a store's dated chat template was rendered with (None: no recording there, or none dated)."""
    recording, _ = existing_recording(Path(path))
    return None if recording is None else recording["settings"].get("chat_template_date")


def _first_difference(old: dict, new: dict) -> Optional[str]:
    """The first key, in ``new``'s order, whose value differs (settings derived from others come last)."""
    for key in [*new, *(key for key in old if key not in new)]:
        if old.get(key) != new.get(key):
            return key
    return None


def _add_stats(total: dict, stats: dict) -> dict:
    """Sum nested dicts of numbers key by key."""
    for key, value in stats.items():
        total[key] = _add_stats(total.get(key, {}), value) if isinstance(value, dict) else total.get(key, 0) + value
    return total


class StoreWriter:
    """Writes shards into a store directory, resuming a recording with the same ``settings``.

    ``settings`` is a JSON-able dict of everything that determines the store's content (provenance,
    k, temperature, layers, shard size); a store started with other settings is an error. The shards of a resumed
    recording, or of a finished store recorded into again, that are missing or damaged (a disk that failed since) are
    recorded again.
    """

    def __init__(self, path: str | os.PathLike, settings: dict):
        check_store_directory(path)
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.shards: dict[str, dict[str, dict]] = {split: {} for split in SPLITS}
        recording, self.finished = existing_recording(self.path)
        if recording is not None:
            self._check_settings(recording["settings"])
            self.shards = recording["shards"]
            if self._forget_damaged_shards() and self.finished:
                self._reopen()

    def _forget_damaged_shards(self) -> bool:
        """Unlist the shards that are missing or differ from their entries (damaged since they were written), so that
        they are recorded again; whether there were any."""
        damaged = False
        for split in SPLITS:
            for index, entry in list(self.shards[split].items()):
                problem = file_problem(self.path / entry["file"], entry)
                if problem is not None:
                    logger.warning(f"teacher store shard {entry['file']!r} {problem}: recording it again")
                    del self.shards[split][index]
                    damaged = True
        return damaged

    def _reopen(self) -> None:
        """A finished store with damaged shards becomes a recording under way again: ``progress.json`` lists the sound
        shards, and the manifest goes until the missing ones are recorded (a store with a manifest is whole)."""
        write_json_atomic(self.path / PROGRESS, {"settings": self.settings, "shards": self.shards})
        (self.path / MANIFEST).unlink()
        self.finished = False

    def _check_settings(self, recorded: dict) -> None:
        key = _first_difference(recorded, self.settings)
        if key is not None:
            raise DistilyConfigError(
                f"teacher_store={str(self.path)!r} holds a recording with {key}={recorded.get(key)!r}; this run has "
                f"{key}={self.settings.get(key)!r}; expected the same settings or another teacher_store"
            )

    def done(self, split: str, index: int) -> bool:
        return str(index) in self.shards[split]

    def rows_done(self) -> int:
        return sum(entry["rows"] for split in SPLITS for entry in self.shards[split].values())

    def save_shard(self, split: str, index: int, tensors: dict[str, torch.Tensor], stats: dict) -> dict:
        """Write one shard atomically and return its entry (file, rows, bytes, sha256, ``stats``), not yet listed; a
        write that fails (a full disk: one line naming the shard) leaves no partial file."""
        name = shard_name(split, index)
        partial = self.path / (name + ".partial")
        try:
            with filesystem_errors(self.path / name, "teacher store shard"):  # diagnosed before the partial goes
                self.path.mkdir(parents=True, exist_ok=True)  # the first write into a new store
                save_file({key: value.contiguous() for key, value in tensors.items()}, str(partial))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        entry = {
            "file": name,
            "rows": int(tensors[INPUT_IDS].shape[0]),
            "bytes": partial.stat().st_size,
            "sha256": file_sha256(partial),
            "stats": stats,
        }
        os.replace(partial, self.path / name)
        return entry

    def list_shard(self, split: str, index: int, entry: dict) -> None:
        """List a saved shard in ``progress.json``: a recording resumed from here keeps it."""
        listed = {**self.shards[split], str(index): entry}
        self.shards[split] = {key: listed[key] for key in sorted(listed, key=int)}  # as an uninterrupted run lists them
        write_json_atomic(self.path / PROGRESS, {"settings": self.settings, "shards": self.shards})

    def totals(self, split: str) -> dict:
        total: dict = {}
        for entry in self.shards[split].values():
            _add_stats(total, entry["stats"])
        return total

    def finish(self, report: dict) -> dict:
        """Write ``manifest.json`` (settings, shards, ``report``, the checksum of all that) and drop the progress
        file."""
        manifest = {"format": FORMAT, "version": VERSION, "settings": self.settings, "shards": self.shards, **report}
        manifest = json.loads(json.dumps(manifest, default=str))  # as it reads back, which the checksum covers
        manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
        write_json_atomic(self.path / MANIFEST, manifest)
        (self.path / PROGRESS).unlink(missing_ok=True)
        self.finished = True
        return manifest


class StoreDataset(torch.utils.data.Dataset):
    """The rows of one split, read lazily from memory-mapped shards; each item is a dict of tensors
    (``input_ids`` [seq] int64, teacher fields as stored, ids widened to int32)."""

    def __init__(self, shard_paths: list[Path], shard_rows: list[int], limit: Optional[int] = None):
        self.shard_paths, self.shard_rows = list(shard_paths), list(shard_rows)
        self.starts = [sum(self.shard_rows[:i]) for i in range(len(self.shard_rows))]
        total = sum(self.shard_rows)
        self.rows: Sequence[int] = range(total if limit is None else min(limit, total))  # the store rows served
        self._handles: dict[int, object] = {}

    def select(self, rows: Sequence[int]) -> "StoreDataset":
        """The dataset of ``rows`` (indices into this one), in their order."""
        selected = copy.copy(self)
        selected.rows = [self.rows[row] for row in rows]
        return selected

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):  # file handles stay in the process that opened them (DataLoader workers)
        return {**self.__dict__, "_handles": {}}

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.shard_paths[shard]), framework="pt")
        return self._handles[shard]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.rows):
            raise IndexError(index)
        index = self.rows[index]
        shard = bisect.bisect_right(self.starts, index) - 1
        row = index - self.starts[shard]
        handle = self._handle(shard)
        item = {key: handle.get_slice(key)[row : row + 1][0] for key in handle.keys()}
        length = int(item.pop(ATTENTION_MASK).sum())  # the row without its shard padding
        item = {key: value if value.dim() == 0 else value[:length] for key, value in item.items()}
        item[INPUT_IDS] = item[INPUT_IDS].long()
        item[TOPK_IDS] = item[TOPK_IDS].to(torch.int32)
        return item

    def longest_row(self) -> int:
        """The most tokens in one of the rows served: the widest shard holding one (each shard is padded to its
        longest row)."""
        shards = {bisect.bisect_right(self.starts, row) - 1 for row in self.rows}
        return max((self._handle(shard).get_slice(INPUT_IDS).get_shape()[1] for shard in shards), default=0)

    def row_values(self, key: str) -> torch.Tensor:
        """``[rows]``: a per-row field (``ROW_NLL``, ``ROW_TARGETS``) of every row, read without the others."""
        values = [self._handle(shard).get_tensor(key) for shard in range(len(self.shard_paths))]
        return torch.cat(values)[list(self.rows)]


def collate_recorded(features: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """``collate`` for store rows: the token batch plus each teacher field stacked along the batch,
    padded like the tokens (padding is masked by ``attention_mask``)."""
    batch = collate(features, pad_token_id)
    for key in features[0]:
        if key not in (INPUT_IDS, POSITION_IDS, LOSS_MASK):  # collate's own
            values = [feature[key] for feature in features]
            batch[key] = torch.stack(values) if values[0].dim() == 0 else pad_sequence(values, batch_first=True)
    return batch


class TeacherStore:
    """A finished store, opened for reading; ``verify`` checks every shard against the manifest."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            if (self.path / PROGRESS).is_file():
                raise DistilyConfigError(
                    f"teacher_store={str(self.path)!r} holds an unfinished recording; expected `distily record` with "
                    "the same config to complete it"
                )
            raise DistilyConfigError(
                f"teacher_store={str(self.path)!r} has no {MANIFEST}; expected a directory written by `distily record`"
            )
        self.manifest = read_manifest(manifest_path)
        self.settings = self.manifest["settings"]

    def _entries(self, split: str) -> list[dict]:
        shards = self.manifest["shards"][split]
        return [shards[key] for key in sorted(shards, key=int)]

    def verify(self) -> None:
        """Every listed shard exists with its recorded size and sha256 (a truncated or corrupted shard is
        an error naming it)."""
        entries = [entry for split in SPLITS for entry in self._entries(split)]
        for entry in tqdm(entries, desc="Verifying teacher store", leave=False):
            path = self.path / entry["file"]
            problem = file_problem(path, entry)
            if problem is not None:
                raise DistilyConfigError(f"teacher store shard {str(path)!r} {problem}; expected the file as recorded "
                                         "(truncated, replaced or corrupted: `distily record` with the store's config "
                                         "records it again)")

    def dataset(self, split: str, limit: Optional[int] = None) -> StoreDataset:
        entries = self._entries(split)
        return StoreDataset([self.path / e["file"] for e in entries], [e["rows"] for e in entries], limit)

    @property
    def tokenizer_path(self) -> str:
        return str(self.path / TOKENIZER_DIR)

    @property
    def teacher_config_path(self) -> str:
        return str(self.path / TEACHER_CONFIG_DIR)
