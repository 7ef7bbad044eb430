"""The store format: exact round trips, checksums, resumable writing, clear errors."""

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from distily.data.framing import INPUT_IDS
from distily.data.store import (
    ATTENTION_MASK,
    MANIFEST,
    MANIFEST_CHECKSUM,
    PROGRESS,
    ROW_NLL,
    TAIL_LOGPROB,
    TOPK_IDS,
    TOPK_LOGPROBS,
    StoreWriter,
    TeacherStore,
    bytes_per_entry,
    collate_recorded,
    hidden_states_key,
    id_dtype,
)
from distily.errors import DistilyConfigError

SETTINGS = {"record_top_k": 4, "max_seq_length": 6}


def _shard(rows, seed, vocab=70000, k=4, seq=6, width=5):
    generator = torch.Generator().manual_seed(seed)
    return {
        INPUT_IDS: torch.randint(0, vocab, (rows, seq), generator=generator, dtype=torch.int32),
        ATTENTION_MASK: torch.ones(rows, seq, dtype=torch.int8),
        TOPK_LOGPROBS: (-torch.rand(rows, seq, k, generator=generator) * 10).half(),
        TOPK_IDS: torch.randint(0, vocab, (rows, seq, k), generator=generator).to(id_dtype(vocab)),
        TAIL_LOGPROB: torch.cat([torch.full((rows, 1), float("-inf")),
                                 -torch.rand(rows, seq - 1, generator=generator)], 1),
        ROW_NLL: torch.rand(rows, generator=generator, dtype=torch.float64),
        hidden_states_key(2): torch.randn(rows, seq, width, generator=generator).to(torch.bfloat16),
    }


def _write(writer: StoreWriter, split: str, index: int, shard: dict, stats: dict) -> None:
    """Save a shard and list it, as a recording does."""
    writer.list_shard(split, index, writer.save_shard(split, index, shard, stats))


def _write_store(path, shards=(3, 2), eval_rows=2):
    writer = StoreWriter(path, SETTINGS)
    written = {"train": [_shard(rows, seed) for seed, rows in enumerate(shards)], "eval": [_shard(eval_rows, 99)]}
    for split, tensors in written.items():
        for index, shard in enumerate(tensors):
            _write(writer, split, index, shard, {"positions": shard[INPUT_IDS].numel()})
    writer.finish({})
    return written


@pytest.mark.parametrize("vocab, expected", [(320, 4), (65536, 4), (65537, 6), (151936, 6)])
def test_a_top_k_entry_takes_at_most_six_bytes(vocab, expected):
    assert bytes_per_entry(vocab) == expected


def test_stored_values_round_trip_exactly(tmp_path):
    written = _write_store(tmp_path / "store")
    store = TeacherStore(tmp_path / "store")
    store.verify()
    dataset = store.dataset("train")
    assert len(dataset) == 5
    rows = [(shard, row) for shard in written["train"] for row in range(shard[INPUT_IDS].shape[0])]
    for index, (shard, row) in enumerate(rows):
        item = dataset[index]
        assert torch.equal(item[INPUT_IDS], shard[INPUT_IDS][row].long())
        assert torch.equal(item[TOPK_IDS], shard[TOPK_IDS][row].to(torch.int32))  # ids above 65535 survive
        for key in (TOPK_LOGPROBS, TAIL_LOGPROB, ROW_NLL, hidden_states_key(2)):
            assert item[key].dtype == shard[key].dtype
            assert torch.equal(item[key], shard[key][row]), key
    assert torch.equal(dataset.row_values(ROW_NLL), torch.cat([shard[ROW_NLL] for shard in written["train"]]))
    assert len(store.dataset("train", limit=4)) == 4 and len(store.dataset("eval")) == 2


def test_a_padded_row_reads_back_without_its_padding(tmp_path):
    shard = _shard(2, seed=3)
    shard[ATTENTION_MASK][1, 4:] = 0  # the second row has 4 real tokens
    writer = StoreWriter(tmp_path / "store", SETTINGS)
    _write(writer, "train", 0, shard, {"positions": 10})
    _write(writer, "eval", 0, _shard(1, seed=4), {"positions": 6})
    writer.finish({})
    item = TeacherStore(tmp_path / "store").dataset("train")[1]
    assert ATTENTION_MASK not in item
    assert torch.equal(item[INPUT_IDS], shard[INPUT_IDS][1, :4].long())
    assert torch.equal(item[TOPK_LOGPROBS], shard[TOPK_LOGPROBS][1, :4])
    assert torch.equal(item[ROW_NLL], shard[ROW_NLL][1])  # per-row values stay whole


def test_collate_stacks_the_teacher_fields(tmp_path):
    _write_store(tmp_path / "store")
    dataset = TeacherStore(tmp_path / "store").dataset("train")
    batch = collate_recorded([dataset[0], dataset[3]], pad_token_id=0)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"].all()
    assert batch[TOPK_LOGPROBS].shape == (2, 6, 4) and batch[TOPK_IDS].dtype == torch.int32
    assert batch[ROW_NLL].shape == (2,) and batch[hidden_states_key(2)].shape == (2, 6, 5)


def test_a_truncated_shard_is_detected(tmp_path):
    _write_store(tmp_path / "store")
    shard = tmp_path / "store" / "train-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DistilyConfigError,
                       match=r"train-00001.safetensors' has \d+ bytes, expected \d+; expected the file as recorded "
                             r"\(truncated"):
        TeacherStore(tmp_path / "store").verify()


def test_a_corrupted_shard_is_detected(tmp_path):
    _write_store(tmp_path / "store")
    shard = tmp_path / "store" / "eval-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DistilyConfigError, match=r"eval-00000.safetensors' fails its sha256 check"):
        TeacherStore(tmp_path / "store").verify()


def test_a_missing_shard_is_detected(tmp_path):
    _write_store(tmp_path / "store")
    (tmp_path / "store" / "train-00000.safetensors").unlink()
    with pytest.raises(DistilyConfigError, match=r"train-00000.safetensors' is missing"):
        TeacherStore(tmp_path / "store").verify()


def test_writer_resumes_listed_shards_and_rejects_other_settings(tmp_path):
    writer = StoreWriter(tmp_path / "store", SETTINGS)
    _write(writer, "train", 0, _shard(3, 0), {"positions": 18})
    (tmp_path / "store" / "train-00001.safetensors.partial").write_bytes(b"killed mid-write")
    resumed = StoreWriter(tmp_path / "store", SETTINGS)
    assert resumed.done("train", 0) and not resumed.done("train", 1) and resumed.rows_done() == 3
    with pytest.raises(DistilyConfigError, match=r"holds a recording with record_top_k=4; this run has record_top_k=8"):
        StoreWriter(tmp_path / "store", {**SETTINGS, "record_top_k": 8})
    _write(resumed, "train", 1, _shard(2, 1), {"positions": 12})
    _write(resumed, "eval", 0, _shard(2, 2), {"positions": 12})
    manifest = resumed.finish({})
    assert not (tmp_path / "store" / PROGRESS).exists()
    assert [entry["rows"] for entry in manifest["shards"]["train"].values()] == [3, 2]
    assert resumed.totals("train") == {"positions": 30}
    TeacherStore(tmp_path / "store").verify()


def test_an_unfinished_or_foreign_directory_is_a_clear_error(tmp_path):
    writer = StoreWriter(tmp_path / "store", SETTINGS)
    _write(writer, "train", 0, _shard(3, 0), {})
    with pytest.raises(DistilyConfigError, match=r"holds an unfinished recording; expected `distily record`"):
        TeacherStore(tmp_path / "store")
    with pytest.raises(DistilyConfigError, match=r"has no manifest.json; expected a directory written by"):
        TeacherStore(tmp_path / "elsewhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "something", "version": 3}))
    with pytest.raises(DistilyConfigError, match=r"is format 'something' version 3; expected 'distily-teacher-store'"):
        TeacherStore(tmp_path / "other")


def test_the_manifest_carries_the_checksum_of_its_content(tmp_path):
    _write_store(tmp_path / "store")
    path = tmp_path / "store" / MANIFEST
    manifest = json.loads(path.read_text())
    content = {key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    assert manifest[MANIFEST_CHECKSUM] == hashlib.sha256(canonical).hexdigest()
    path.write_text(json.dumps(manifest, indent=4))  # laid out otherwise, same content: still the same manifest
    assert TeacherStore(tmp_path / "store").settings == SETTINGS


@pytest.mark.parametrize("edit", [
    lambda manifest: manifest["settings"].update(record_top_k=8),
    lambda manifest: manifest["shards"]["train"]["0"].update(rows=2),
    lambda manifest: manifest.update(manifest_sha256="0" * 64),
], ids=["top_k", "rows", "checksum"])
def test_an_edited_manifest_is_refused_in_one_line(edit, tmp_path):
    _write_store(tmp_path / "store")
    path = tmp_path / "store" / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    for open_store in (TeacherStore, lambda store: StoreWriter(store, SETTINGS)):  # reading it, or recording on
        with pytest.raises(DistilyConfigError) as refused:
            open_store(tmp_path / "store")
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"teacher store manifest '{path}' was changed after recording: its content hashes")
        assert f"expected its manifest_sha256 {manifest['manifest_sha256'][:16]}..." in message


def test_a_manifest_that_is_not_json_is_refused_and_one_without_a_checksum_is_read_with_a_warning(tmp_path, caplog):
    _write_store(tmp_path / "store")
    path = tmp_path / "store" / MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest)[:-20])
    with pytest.raises(DistilyConfigError, match=r"manifest.json' is not valid JSON \(.*\); expected the manifest"):
        TeacherStore(tmp_path / "store")
    del manifest[MANIFEST_CHECKSUM]  # as written before manifests carried one
    path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="distily.data.store"):
        TeacherStore(tmp_path / "store").verify()
    assert f"manifest '{path}' has no manifest_sha256" in caplog.text


def test_a_full_disk_while_writing_a_shard_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    writer = StoreWriter(tmp_path / "store", SETTINGS)
    _write(writer, "train", 0, _shard(3, 0), {})
    before = {path.name: path.read_bytes() for path in (tmp_path / "store").iterdir()}

    def full_disk(tensors, filename):
        Path(filename).write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("distily.data.store.save_file", full_disk)
    with pytest.raises(DistilyConfigError) as refused:
        _write(writer, "train", 1, _shard(2, 1), {})
    assert str(refused.value) == ("cannot write teacher store shard "
                                  f"'{tmp_path / 'store' / 'train-00001.safetensors'}': "
                                  "No space left on device; expected free space on its filesystem")
    assert {path.name: path.read_bytes() for path in (tmp_path / "store").iterdir()} == before
