"""``distily record`` estimates the store's bytes before the teacher runs: the estimate against the bytes written,
a recording the disk cannot hold refused with nothing written, a resumed recording counting only what is left."""

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distily.config import parse_record_config
from distily.data import store
from distily.data.store import MANIFEST, shard_layout
from distily.errors import DistilyConfigError
from distily.recording import disk_space
from distily.recording.hf import HFRecorder
from distily.recording.run import run_recording
from store_values import store_values
from tiny import make_chat_tokenizer, make_conversations, save_tiny_model, write_chat_jsonl


def _written(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


@pytest.fixture
def estimates(monkeypatch) -> list[int]:
    """Each store estimate the recordings of a test make, in order."""
    found, estimate = [], disk_space.store_bytes
    monkeypatch.setattr(disk_space, "store_bytes", lambda *args: found.append(estimate(*args)) or found[-1])
    return found


@pytest.fixture
def peak(monkeypatch) -> dict:
    """The most bytes the store held, measured after each write of its progress file or manifest (the last: the
    manifest written beside the progress file, which goes next): ``peak["bytes"]`` after a recording, and before it
    (``peak["before"]``, set by the test) to count what a resumed recording adds."""
    found, write = {"bytes": 0, "before": 0}, store.write_json_atomic

    def measured(path, data):
        write(path, data)
        found["bytes"] = max(found["bytes"], _written(Path(path).parent) - found["before"])

    monkeypatch.setattr(store, "write_json_atomic", measured)
    return found


def _chat_teacher(root: Path) -> tuple[str, str]:
    tokenizer = make_chat_tokenizer("llama3")
    teacher = save_tiny_model(root / "chat-teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    return teacher, write_chat_jsonl(root / "chat.jsonl", make_conversations(60))


@pytest.mark.parametrize("case", ["top_k", "hidden_states", "documents", "chat"])
def test_the_store_estimate_is_within_a_few_percent_of_the_store_written(case, teacher_dirs, text_file, tmp_path,
                                                                         estimates, peak):
    teacher, data, overrides = teacher_dirs["llama"], text_file, {}
    if case == "hidden_states":
        overrides = {"record_hidden_states_layers": [0, 3]}
    elif case == "documents":  # position_ids in every shard
        overrides = {"packing": "documents"}
    elif case == "chat":  # a loss_mask, and rows padded to each shard's longest
        (teacher, data), overrides = _chat_teacher(tmp_path), {"max_seq_length": 128}
    values = store_values(teacher, data, tmp_path, **overrides)
    manifest = run_recording(parse_record_config(**values))
    assert peak["bytes"] <= estimates[0] <= 1.06 * peak["bytes"], (estimates, peak)
    settings = manifest["settings"]
    for entry in [entry for shards in manifest["shards"].values() for entry in shards.values()]:
        tensors = load_file(Path(values["teacher_store"]) / entry["file"])
        rows, seq = tensors["input_ids"].shape
        expected = shard_layout(rows, seq, settings["record_top_k"], settings["teacher_vocab_size"],
                                {layer: 64 for layer in settings["record_hidden_states_layers"]}, torch.float16,
                                "position_ids" in tensors, "loss_mask" in tensors)
        assert {key: (tuple(value.shape), value.dtype) for key, value in tensors.items()} == \
            {key: (tuple(value.shape), value.dtype) for key, value in expected.items()}
    assert ("position_ids" in tensors) == (case == "documents") and ("loss_mask" in tensors) == (case == "chat")


def test_a_store_the_disk_cannot_hold_is_refused_before_anything_is_written(teacher_dirs, text_file, tmp_path,
                                                                            monkeypatch, caplog):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path)
    monkeypatch.setattr("distily.outputs.free_bytes", lambda path: 50_000)  # the filesystem's free space, faked
    recorded = []
    with monkeypatch.context() as recorder:
        recorder.setattr(HFRecorder, "record", lambda *args, **kwargs: recorded.append(1))
        with pytest.raises(DistilyConfigError) as refused:
            run_recording(parse_record_config(**values))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("teacher store of ~9")  # 95 KiB: 4 shards of 19 KiB and more
    assert f"48.83 KiB free for '{values['teacher_store']}': it cannot fit; expected fewer rows" in message
    assert "record_top_k" in message and "disk_check=false" in message
    assert not Path(values["teacher_store"]).exists() and not recorded

    with caplog.at_level(logging.INFO, logger="distily.recording.disk_space"):
        run_recording(parse_record_config(**values, disk_check=False))  # told to try anyway: recorded, and logged
    assert (Path(values["teacher_store"]) / MANIFEST).is_file()
    assert any(record.getMessage().startswith("teacher store of ~9") for record in caplog.records)


def test_a_resumed_recording_counts_only_the_shards_left(teacher_dirs, text_file, tmp_path, monkeypatch, estimates,
                                                        peak):
    values = store_values(teacher_dirs["llama"], text_file, tmp_path)
    original, calls = HFRecorder.record, []

    def dies_on_the_third_shard(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFRecorder, "record", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run_recording(parse_record_config(**values))
    peak.update(bytes=0, before=_written(Path(values["teacher_store"])))  # two shards, tokenizer, config, progress
    run_recording(parse_record_config(**values))  # resumed: the third train shard and the eval shard
    # 1.06 measured: the manifest's allowance (a few KiB) weighs more in the half of a tiny store
    assert peak["bytes"] <= estimates[1] <= 1.1 * peak["bytes"], (estimates, peak)
    assert estimates[1] < 0.6 * estimates[0]
