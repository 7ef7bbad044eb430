"""A run on rows read from a stream (dataset_streaming) trains on the blocks a run on the same slice read whole
trains on, to the same losses; interrupted, it resumes on the rows kept from the stream, without opening it again;
distily record streams them too."""

from pathlib import Path

import datasets
import huggingface_hub
import pytest

from distily.config import parse_config, parse_record_config
from distily.errors import RunInterrupted
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from distily.training.run_dir import TRAIN_ROWS, RunDir
from interrupts import ctrl_c_at_training_step
from store_values import store_values

SLICE = "train[40:340]"


@pytest.fixture(autouse=True)
def hf_home(tmp_path, monkeypatch):
    """The streamed rows kept under a fresh HF_HOME."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(tmp_path / "hf_home"))


def _values(run_values, teacher_dirs, name: str, **overrides) -> dict:
    return run_values(teacher_dirs["llama"], student_config_overrides={"num_hidden_layers": 2}, dataset_split=SLICE,
                      output_dir=str(Path(run_values(None)["output_dir"]).parent / name), **overrides)


def _train_rows(values: dict) -> str:
    return RunDir(Path(values["output_dir"])).recorded_settings()[TRAIN_ROWS]


def test_a_streamed_run_trains_on_the_blocks_and_to_the_losses_of_the_slice_read_whole(run_values, teacher_dirs):
    whole = _values(run_values, teacher_dirs, "whole")
    streamed = _values(run_values, teacher_dirs, "streamed", dataset_streaming=True)
    expected, found = (run_distillation(parse_config(**values)) for values in (whole, streamed))
    assert _train_rows(streamed) == _train_rows(whole)
    assert found["train"]["train_loss"] == expected["train"]["train_loss"]
    assert found["student"]["after_loss"] == expected["student"]["after_loss"]


def test_an_interrupted_streamed_run_resumes_on_the_rows_it_read(run_values, teacher_dirs, monkeypatch):
    """The resume's training rows' digest equals the one recorded at the start (else it is refused), and the rows
    come from the cache: a stream opened on the resume fails the test."""
    values = _values(run_values, teacher_dirs, "run", dataset_streaming=True, save_strategy="steps", save_steps=2)
    with monkeypatch.context() as patch:
        ctrl_c_at_training_step(patch, 3)
        with pytest.raises(RunInterrupted):
            run_distillation(parse_config(**values))
    started = _train_rows(values)
    load_dataset = datasets.load_dataset

    def no_stream(*args, **kwargs):
        assert not kwargs.get("streaming"), "the resume opened a stream"
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", no_stream)
    metrics = run_distillation(parse_config(**values, resume_from_checkpoint="true"))
    assert metrics["train"]["resumed_from_step"] == 2 and metrics["train"]["global_step"] == 4
    assert _train_rows(values) == started


def test_a_store_recorded_on_streamed_rows_trains_a_run_that_streams_them(teacher_dirs, text_file, tmp_path):
    """The store's dataset_fingerprint is that of the streamed rows, which the run names again: the provenance
    check passes."""
    values = store_values(teacher_dirs["llama"], text_file, tmp_path, dataset_split=SLICE, dataset_streaming=True)
    run_recording(parse_record_config(**values))
    metrics = run_distillation(parse_config(**{**values, "teacher_source": "recorded", "max_steps": 1}))
    assert metrics["train"]["global_step"] == 1 and metrics["train_sequences"] == 24
