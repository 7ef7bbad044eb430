"""A chat template that writes the day it is rendered (Llama 3's without date_string) renders one date across the
commands and processes of a run: a store records the date its rows were rendered with, a run on it takes that date
(and refuses another), and every process of a multi-process run takes the main process's."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distily.config import parse_config, parse_record_config
from distily.data import chat
from distily.errors import DistilyConfigError
from distily.recording.run import run_recording
from distily.training.distill import run_distillation
from distily.training.run_dir import RunDir
from store_values import store_values
from tiny import LLAMA3_DATED_TEMPLATE, make_chat_tokenizer, make_conversations, save_tiny_model, write_chat_jsonl


@pytest.fixture(scope="module")
def dated_teacher(tmp_path_factory):
    """A tiny Llama teacher whose tokenizer's template writes the day (Llama 3's, without date_string), and chat
    data."""
    root = tmp_path_factory.mktemp("dated")
    tokenizer = make_chat_tokenizer("llama3", with_template=False)
    tokenizer.chat_template = LLAMA3_DATED_TEMPLATE
    teacher = save_tiny_model(root / "teacher", "llama", tokenizer, vocab_size=len(tokenizer))
    return teacher, write_chat_jsonl(root / "chat.jsonl", make_conversations(40))


def test_a_store_records_its_date_and_a_run_on_it_another_day_renders_with_it(dated_teacher, tmp_path, monkeypatch):
    """Recorded on 26 Jul, the store's rows say so, and its settings record the date; on 27 Jul, the recording
    resumes with it (the same settings), a run on the store renders with it (its run_settings.json says 26 Jul, not
    the day it ran) and a run given another date is refused."""
    values = store_values(*dated_teacher, tmp_path, max_seq_length=128, max_steps=1, student_init="random")
    monkeypatch.setattr(chat, "today", lambda: "2024-07-26")
    manifest = run_recording(parse_record_config(**values))
    assert manifest["settings"]["chat_template_date"] == "2024-07-26"
    monkeypatch.setattr(chat, "today", lambda: "2024-07-27")
    assert run_recording(parse_record_config(**values)) == manifest  # finished: the store's date, not today's
    recorded = {**values, "teacher_source": "recorded"}
    run_distillation(parse_config(**recorded))
    assert RunDir(values["output_dir"]).recorded_settings()["chat_template_date"] == "2024-07-26"
    with pytest.raises(DistilyConfigError, match="chat_template_date='2024-07-27' differs from the '2024-07-26' "
                                                 "teacher_store="):
        run_distillation(parse_config(**{**recorded, "chat_template_date": "2024-07-27",
                                         "output_dir": str(tmp_path / "refused")}))


def test_a_store_of_a_template_given_its_date_string_records_no_date(dated_teacher, tmp_path):
    values = store_values(*dated_teacher, tmp_path, max_seq_length=128, chat_template_kwargs={"date_string": "1 May"})
    assert "chat_template_date" not in run_recording(parse_record_config(**values))["settings"]


def test_the_processes_of_a_run_started_at_midnight_render_one_date():
    """Process 0 reads 26 Jul, process 1 27 Jul (midnight passed between them): each pinning its own day, they
    would render different data; both take the main process's (``date_worker.py``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("date_worker.py"))]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(re.findall(r"rank (\d) (\d{4}-\d\d-\d\d)", done.stdout)) == [("0", "2024-07-26"), ("1", "2024-07-26")]
