"""dataset_streaming: the rows of a split's row range read from a stream equal those of the same slice read without
one (local JSON-lines, parquet and .txt data; text and chat columns), are kept so that a second read opens no stream,
and a split a stream cannot be read for is refused in one line before any model loads."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from distily.config import parse_config, parse_generate_config
from distily.data.arguments import DataArguments, RowRange, row_ranges
from distily.data.sources import load_documents
from distily.errors import DistilyConfigError
from distily.recording.responses import load_prompts
from small_filesystem import remount, small_filesystem
from tiny import make_conversations, make_documents

ROWS = [{"text": text, "messages": turns} for text, turns in zip(make_documents(60), make_conversations(60))]
EXPECTED = "expected a range of row numbers such as train[:100000] or train[1000:5000]"


@pytest.fixture(autouse=True)
def hf_home(tmp_path, monkeypatch):
    """The streamed rows kept under a fresh HF_HOME."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home"


def _write(directory: Path, suffix: str, rows: list[dict]) -> str:
    path = directory / f"train{suffix}"
    if suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif suffix == ".txt":
        path.write_text("\n\n".join(row["text"] for row in rows) + "\n")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _streamed_and_whole(name: str, split: str, **settings) -> tuple[datasets.Dataset, datasets.Dataset]:
    whole = load_documents(DataArguments(dataset_name=name, dataset_split=split, **settings))
    return load_documents(DataArguments(dataset_name=name, dataset_split=split, dataset_streaming=True,
                                        **settings)), whole


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt"])
@pytest.mark.parametrize("split", ["train[:25]", "train[10:40]", "train[50:70]", "train[30:35]+train[:3]"])
def test_streamed_rows_equal_the_slice_read_whole(suffix, split, tmp_path):
    """Text and chat columns alike, types included; a range past the split's end ends with it (as a slice does)."""
    streamed, whole = _streamed_and_whole(_write(tmp_path, suffix, ROWS), split)
    assert len(streamed) == len(whole) > 0
    assert streamed.features == whole.features
    assert streamed.to_list() == whole.to_list()


def test_a_data_directory_streams_the_split_its_file_names_give(tmp_path):
    _write(tmp_path, ".jsonl", ROWS[:40])
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS[40:]))
    streamed, whole = _streamed_and_whole(str(tmp_path), "test[2:12]")
    assert streamed.to_list() == whole.to_list() == ROWS[42:52]
    with pytest.raises(DistilyConfigError, match=re.escape("has no split 'validation'; expected one of train, test")):
        load_documents(DataArguments(dataset_name=str(tmp_path), dataset_split="validation[:5]",
                                     dataset_streaming=True))


def test_rows_read_once_are_read_again_from_the_cache_not_the_stream(tmp_path, monkeypatch):
    name = _write(tmp_path, ".jsonl", ROWS)
    args = DataArguments(dataset_name=name, dataset_split="train[5:15]", dataset_streaming=True)
    first = load_documents(args)
    monkeypatch.setattr(datasets, "load_dataset", _refuse)
    assert load_documents(args).to_list() == first.to_list() == ROWS[5:15]
    Path(name).write_text("".join(json.dumps(row) + "\n" for row in ROWS[::-1]))  # other bytes: read again
    with pytest.raises(AssertionError, match="opened a stream"):
        load_documents(args)


def test_a_range_the_split_ends_in_warns_also_when_read_from_the_cache(tmp_path, monkeypatch, caplog):
    """A re-run read the shorter rows from the cache without a word: the warning came only with the stream."""
    args = DataArguments(dataset_name=_write(tmp_path, ".jsonl", ROWS), dataset_split="train[50:70]",
                         dataset_streaming=True)
    expected = "split 'train' ends at row 60: 10 rows read of the 20 of train[50:70]"
    for read in ("stream", "cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distily"):
            assert len(load_documents(args)) == 10
        assert [record.getMessage().endswith(expected) for record in caplog.records] == [True], read
        monkeypatch.setattr(datasets, "load_dataset", _refuse)


def test_processes_asking_for_the_same_rows_at_once_read_the_stream_once(tmp_path, hf_home):
    """A run's processes on one machine each load the documents: one streams the rows, the other waits for them
    (``stream_worker.py``, whose streams take 2 seconds to open, started together)."""
    go, opened = tmp_path / "go", tmp_path / "opened"
    environment = {**os.environ, "HF_HOME": str(hf_home), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(Path(__file__).with_name("stream_worker.py")),
               _write(tmp_path, ".jsonl", ROWS), str(go), str(opened)]
    workers = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and all(worker.poll() is None for worker in workers):
        time.sleep(0.1)
    go.touch()
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    assert [json.loads(output) for output in outputs] == [[row["text"] for row in ROWS[5:15]]] * 2
    assert opened.read_text() == "opened\n"


def test_a_read_killed_midway_leaves_no_scratch_once_the_rows_are_read_again(tmp_path, hf_home):
    """A read SIGKILLed (a scheduler's kill after its grace period) leaves its scratch directory, as large as the rows
    it had read; reading the same rows again removed none, so each kill left one more."""
    go, opened = tmp_path / "go", tmp_path / "opened"
    go.touch()
    environment = {**os.environ, "HF_HOME": str(hf_home), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                os.environ.get("PYTHONPATH")]))}
    name = _write(tmp_path, ".jsonl", ROWS)
    worker = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stream_worker.py")), name, str(go),
                               str(opened)], env=environment, stdout=subprocess.DEVNULL)
    while not opened.exists() and worker.poll() is None:  # its stream opening, inside the read
        time.sleep(0.05)
    worker.kill()
    worker.wait()
    cache = hf_home / "distily" / "streamed"
    assert len(list(cache.glob(".reading-*"))) == 1
    rows = load_documents(DataArguments(dataset_name=name, dataset_split="train[5:15]", dataset_streaming=True))
    assert rows.to_list() == ROWS[5:15] and not list(cache.glob(".reading-*"))


@pytest.mark.parametrize("filesystem", ["read-only", "full"])
def test_a_streamed_rows_cache_that_cannot_be_written_is_one_line(filesystem, tmp_path, hf_home):
    """A read-only cache (a shared HF_HOME) failed on its lock file, a full one as the rows were written: both were
    tracebacks (OSError, DatasetGenerationError)."""
    name = tmp_path / "long.jsonl"
    name.write_text("".join(json.dumps({"text": f"{'word ' * 200}{row}"}) + "\n" for row in range(300)))
    cache = hf_home / "distily" / "streamed"
    with small_filesystem(hf_home, "64k"):
        cache.mkdir(parents=True)
        if filesystem == "read-only":
            remount(hf_home, "ro")
        where, why = ((re.escape(f"{cache}/.") + r"\w+\.lock", "Read-only file system; expected a writable filesystem")
                      if filesystem == "read-only" else
                      (re.escape(str(cache)), "No space left on device; expected free space on its filesystem"))
        with pytest.raises(DistilyConfigError, match=f"^cannot write the streamed rows cache '{where}': {why}$"):
            load_documents(DataArguments(dataset_name=str(name), dataset_split="train[:300]", dataset_streaming=True))


def _refuse(*args, **kwargs):
    raise AssertionError(f"opened a stream: load_dataset{args}")


def test_a_range_from_past_the_end_of_the_split_is_refused(tmp_path):
    with pytest.raises(DistilyConfigError, match=r"split 'train' holds no row from row 60 on; expected a row range"):
        load_documents(DataArguments(dataset_name=_write(tmp_path, ".jsonl", ROWS), dataset_split="train[60:80]",
                                     dataset_streaming=True))


def test_a_malformed_json_line_is_named_when_streamed(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n{"text": \n')
    with pytest.raises(DistilyConfigError, match=r"bad.jsonl' line 2 is not valid JSON"):
        load_documents(DataArguments(dataset_name=str(path), dataset_split="train[:2]", dataset_streaming=True))


def test_row_ranges_read_as_datasets_writes_them():
    assert row_ranges(" train[:200_000] + test [ 5 : 10 ]", "dataset_split") == [
        RowRange("train", 0, 200000), RowRange("test", 5, 10)]


@pytest.mark.parametrize("split, why", [
    ("train[:1%]", "'train[:1%]' counts in percent of the split's length, which a stream does not know"),
    ("train[-100:]", "'train[-100:]' counts rows from the split's end, which a stream does not know"),
    ("train[:-5]", "'train[:-5]' counts rows from the split's end, which a stream does not know"),
    ("train", "'train' names a whole split, which a stream would read to its end"),
    ("train[1000:]", "'train[1000:]' has no end row, so a stream would be read to its end"),
    ("train[:10]+test", "'test' names a whole split, which a stream would read to its end"),
    ("train[10:10]", "'train[10:10]' holds no rows"),
    ("train[a:b]", "'train[a:b]' is not a range of row numbers"),
    ("train[:1__0]", "'train[:1__0]' is not a range of row numbers"),
])
def test_a_split_a_stream_cannot_be_read_for_is_refused_before_any_model_loads(split, why, text_file, tmp_path):
    """The teacher named does not exist: the refusal comes first. A bare split is refused even with max_samples,
    which counts packed blocks, not rows: how many rows fill them is known only once they are tokenized."""
    message = f"dataset_split={split!r} cannot be read as a stream (dataset_streaming=true): {why}; {EXPECTED}"
    with pytest.raises(DistilyConfigError, match=f"^{re.escape(message)}$"):
        parse_config(teacher_model_name_or_path="/nowhere/teacher", dataset_name=text_file, dataset_split=split,
                     dataset_streaming=True, max_samples=100, output_dir=str(tmp_path / "run"))


def test_generate_streams_its_prompts_and_checks_their_split(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {index}?"}) + "\n" for index in range(30)))
    values = {"teacher_model_name_or_path": "/nowhere/teacher", "generate_prompts": str(prompts),
              "generate_output": str(tmp_path / "out.jsonl"), "teacher_store": str(tmp_path / "store"),
              "dataset_streaming": True}
    with pytest.raises(DistilyConfigError, match=re.escape("generate_prompts_split='train[:50%]' cannot be read")):
        parse_generate_config(**values, generate_prompts_split="train[:50%]")
    config = parse_generate_config(**values, generate_prompts_split="train[3:6]")
    assert load_prompts(config)["prompt"] == ["Question 3?", "Question 4?", "Question 5?"]
    assert not config.recording().data.dataset_streaming  # the samples it writes are read whole


class FakeHub:
    """A Hub dataset ``org/corpus`` this machine has seen: its dataset card in a Hub cache under ``tmp_path``, where
    the real ``hf_hub_download`` finds it offline (the tests run offline), and a stand-in for ``datasets.load_dataset``
    that streams ``ROWS`` as its split ``train`` and records what it was asked for. It checks what Distily does with
    the Hub's answers, not that the Hub streams as ``datasets`` says it does."""

    def __init__(self, monkeypatch, tmp_path):
        self.cache, self.streams = tmp_path / "hub", []
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(self.cache))
        monkeypatch.setattr(datasets, "load_dataset", self.load_dataset)
        self.seen("a" * 40)

    def seen(self, commit: str) -> None:
        """The dataset card of ``commit`` in the Hub cache, as the newest of main this machine saw."""
        repo = self.cache / "datasets--org--corpus"
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "README.md").write_text("---\n---\n")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    def load_dataset(self, path, name=None, split=None, streaming=False, revision=None):
        self.streams.append((path, name, split, streaming, revision))
        if split != "train":
            raise ValueError(f"Bad split: {split}. Available splits: ['train']")
        return datasets.Dataset.from_list(ROWS).to_iterable_dataset()


def test_a_hub_dataset_is_streamed_at_its_commit_and_kept_under_it(monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch, tmp_path)
    args = DataArguments(dataset_name="org/corpus", dataset_config_name="en", dataset_split="train[20:30]",
                         dataset_streaming=True)
    assert load_documents(args).to_list() == ROWS[20:30]
    assert hub.streams == [("org/corpus", "en", "train", True, "a" * 40)]
    assert load_documents(args).to_list() == ROWS[20:30] and len(hub.streams) == 1  # kept: no stream opened
    hub.seen("b" * 40)  # the dataset moved on: its rows are read again
    load_documents(args)
    assert hub.streams[-1] == ("org/corpus", "en", "train", True, "b" * 40)


def test_hub_streaming_errors_are_one_line(monkeypatch, tmp_path):
    FakeHub(monkeypatch, tmp_path)
    args = DataArguments(dataset_name="org/corpus", dataset_split="validation[:10]", dataset_streaming=True)
    with pytest.raises(DistilyConfigError, match=re.escape("dataset 'org/corpus': Bad split: validation. Available "
                                                           "splits: ['train']")):
        load_documents(args)
    unseen = DataArguments(dataset_name="org/unseen", dataset_split="train[:10]", dataset_streaming=True)
    with pytest.raises(DistilyConfigError, match=r"^cannot load dataset 'org/unseen': An error happened while trying "
                                                 r"to locate the file on the Hub[^\n]*$"):
        load_documents(unseen)  # offline, and never seen on this machine
