"""``distily record`` sent a stop signal (a scheduler's preemption) finishes the shard under way, lists it, and stops;
the same command records the rest, to the uninterrupted recording's store."""

import json
import os
import signal
from pathlib import Path

import pytest

from distily.config import parse_record_config
from distily.data.store import MANIFEST, PROGRESS
from distily.errors import RunInterrupted
from distily.recording.hf import HFRecorder
from distily.recording.run import run_recording
from store_values import store_values


def _shard_hashes(manifest: dict) -> dict:
    return {split: [entry["sha256"] for entry in shards.values()] for split, shards in manifest["shards"].items()}


def test_a_recording_sent_sigterm_stops_after_its_shard_and_resumes_to_the_uninterrupted_store(
        teacher_dirs, text_file, tmp_path, monkeypatch):
    uninterrupted = run_recording(parse_record_config(**store_values(teacher_dirs["llama"], text_file,
                                                                     tmp_path / "a")))
    values = store_values(teacher_dirs["llama"], text_file, tmp_path / "b")
    original, recorded = HFRecorder.record, []

    def signalled_in_the_second_shard(self, rows, *args, **kwargs):
        recorded.append(len(rows["input_ids"]))
        if len(recorded) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, rows, *args, **kwargs)

    monkeypatch.setattr(HFRecorder, "record", signalled_in_the_second_shard)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as stop:
        run_recording(parse_record_config(**values))
    store = Path(values["teacher_store"])
    assert str(stop.value) == (f"stopped on SIGTERM between shards; those recorded are kept in {str(store)!r}, the "
                               "same command records the rest")
    assert stop.value.exit_status == 143 and signal.getsignal(signal.SIGTERM) is handler
    assert recorded == [8, 8] and not (store / MANIFEST).exists()
    assert sorted(json.loads((store / PROGRESS).read_text())["shards"]["train"]) == ["0", "1"]

    resumed = run_recording(parse_record_config(**values))
    assert recorded == [8, 8, 8, 8]  # the third train shard and the eval shard
    assert _shard_hashes(resumed) == _shard_hashes(uninterrupted)
    assert resumed["fidelity"] == uninterrupted["fidelity"]
