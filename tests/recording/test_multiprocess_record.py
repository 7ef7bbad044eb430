"""``distily record`` launched on 2 processes (``torchrun``, gloo on CPU): each records its share of the shards, and
the store is the one 1 process writes, also when it resumes a recording 1 process began."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distily.config import parse_record_config
from distily.data.store import MANIFEST, PROGRESS
from distily.recording.hf import HFRecorder
from distily.recording.run import run_recording
from launch_each import launch_each
from store_values import store_values

COUNTING = """
import sys
from distily.cli import main
from distily.recording.hf import HFRecorder
record = HFRecorder.record
def counted(self, rows, *args, **kwargs):
    sys.stdout.write(f"recorded {len(rows['input_ids'])} rows\\n")  # one write: the processes share the pipe
    sys.stdout.flush()
    return record(self, rows, *args, **kwargs)
HFRecorder.record = counted
sys.exit(main(["record", sys.argv[1]]))
"""

NAN_ON_RANK_1 = """
import math, os, sys
from distily.cli import main
from distily.recording.hf import HFRecorder
record = HFRecorder.record
def last_row_nan(module, inputs, output):
    output.logits[-1].fill_(math.nan)
def nan_on_rank_1(self, *args, **kwargs):
    if os.environ["RANK"] != "1":
        return record(self, *args, **kwargs)
    hook = self.teacher.register_forward_hook(last_row_nan)
    try:
        return record(self, *args, **kwargs)
    finally:
        hook.remove()
HFRecorder.record = nan_on_rank_1
sys.exit(main(["record", sys.argv[1]]))
"""

FULL_ON_RANK_1 = """
import errno, os, sys
import distily.data.store as store
from distily.cli import main
save_file = store.save_file
def full_on_rank_1(tensors, filename, *args, **kwargs):
    if os.environ["RANK"] == "1":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
    return save_file(tensors, filename, *args, **kwargs)
store.save_file = full_on_rank_1
sys.exit(main(["record", sys.argv[1]]))
"""


def _record_on_two(values: dict, root: Path) -> str:
    """Run ``distily record`` on 2 processes; their stdout, which counts the shards each recorded."""
    config, script = root / "record.yaml", root / "counting_record.py"
    config.write_text(yaml.safe_dump({key: value for key, value in values.items() if key != "output_dir"}))
    script.write_text(COUNTING)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _store(values: dict) -> dict:
    """The store's shard files (bytes) and its manifest."""
    store = Path(values["teacher_store"])
    return {"shards": {path.name: path.read_bytes() for path in sorted(store.glob("*.safetensors"))},
            "manifest": json.loads((store / MANIFEST).read_text())}


@pytest.mark.slow
def test_two_processes_record_the_store_one_process_records(teacher_dirs, text_file, tmp_path, monkeypatch):
    """Each process recorded every shard (8 recorded lines, twice the work: on GPUs, all on the first one), and both
    wrote the same files at once. Now each records 2 of the 4 shards, the main process lists them and reports once;
    the store is byte for byte the 1-process one, and a recording 1 process stopped after 2 shards is finished by 2
    processes (one shard each) into the same store."""
    one = store_values(teacher_dirs["llama"], text_file, tmp_path / "one", record_hidden_states_layers=[2])
    run_recording(parse_record_config(**one))
    two = {**one, "teacher_store": str(tmp_path / "two" / "store")}
    output = _record_on_two(two, tmp_path)
    assert output.count("recorded 8 rows") == 4
    assert output.count("The teacher store (24 train and 8 held-out sequences) is in") == 1
    assert _store(two) == _store(one)

    resumed = {**one, "teacher_store": str(tmp_path / "resumed" / "store")}
    record, calls = HFRecorder.record, []

    def stops_at_the_third_shard(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped")
        return record(self, *args, **kwargs)

    monkeypatch.setattr(HFRecorder, "record", stops_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run_recording(parse_record_config(**resumed))
    assert _record_on_two(resumed, tmp_path).count("recorded 8 rows") == 2
    assert _store(resumed) == _store(one)


@pytest.mark.slow
@pytest.mark.parametrize("script, line", [
    (NAN_ON_RANK_1, "shard 'train-00001.safetensors': the teacher's logits of row 7 hold NaN or +inf (the teacher ran "
                    "with float32 weights); expected finite teacher outputs: a teacher whose weights are finite"),
    (FULL_ON_RANK_1, "cannot write teacher store shard '{store}/train-00001.safetensors.partial': No space left on "
                     "device; expected free space on its filesystem"),
], ids=["nan-logits", "full-disk"])
def test_a_shard_refused_on_one_process_stops_every_process_with_its_line(script, line, teacher_dirs, text_file,
                                                                          tmp_path):
    """The second process's first shard refused there alone (the teacher's logits NaN; its write failing on a full
    disk): it exited while the first waited for it in the round's gather, which ended in gloo's "Connection closed by
    peer" traceback (exit 1; NCCL, blind to a peer's exit, waits for its timeout), the first process's shard written
    but not listed. Now the refusal is gathered with the round's shards: both processes exit with its line, the
    first's shard listed, nothing of the refused one written, and the same command resumes to the store an
    uninterrupted recording writes."""
    one = store_values(teacher_dirs["llama"], text_file, tmp_path / "one")
    run_recording(parse_record_config(**one))
    two = {**one, "teacher_store": str(tmp_path / "two" / "store")}
    config, refusing = tmp_path / "record.yaml", tmp_path / "refused_on_rank_1.py"
    config.write_text(yaml.safe_dump({key: value for key, value in two.items() if key != "output_dir"}))
    refusing.write_text(script)
    store = Path(two["teacher_store"])
    for done in launch_each(refusing, str(config)):
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.splitlines()[-1] == "distily record: error: " + line.format(store=store)
    assert sorted(path.name for path in store.glob("*.safetensors*")) == ["train-00000.safetensors"]
    assert list(json.loads((store / PROGRESS).read_text())["shards"]["train"]) == ["0"]
    run_recording(parse_record_config(**two))
    assert _store(two) == _store(one)
