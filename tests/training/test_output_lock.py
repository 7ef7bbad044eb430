"""output_dir's lock: a held lock is touched by a heartbeat; a lock of another host untouched for long is taken
over, a dead process's of this host at once."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from distily.errors import DistilyConfigError
from distily.training.output_lock import STALE_AFTER_SECONDS, output_dir_lock
from distily.training.run_dir import RunDir

ANOTHER_HOST = {"pid": 12345, "host": "another-machine", "since": "2026-01-01 00:00:00"}


def _lock(directory, holder: dict, age: float = 0.0):
    directory.mkdir(exist_ok=True)
    lock = directory / RunDir.LOCK
    lock.write_text(json.dumps(holder))
    touched = time.time() - age
    os.utime(lock, (touched, touched))
    return lock


def _heartbeats() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "distily-lock-heartbeat"]


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_lock_of_another_host_touched_lately_is_refused(tmp_path, monkeypatch):
    lock = _lock(tmp_path / "out", ANOTHER_HOST, age=60)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # this host's clock is an hour ahead: not read
    with pytest.raises(DistilyConfigError, match="in use by another run .process 12345 on another-machine since "
                                                 "2026-01-01 00:00:00.*untouched for 10 minutes is taken over"):
        with output_dir_lock(str(tmp_path / "out")):
            pass
    assert json.loads(lock.read_text()) == ANOTHER_HOST


@pytest.mark.parametrize("holder", [ANOTHER_HOST, None], ids=["another host", "unreadable"])
def test_a_lock_of_another_host_untouched_for_long_is_taken_over(tmp_path, caplog, holder):
    lock = _lock(tmp_path / "out", holder, age=STALE_AFTER_SECONDS + 120)
    with caplog.at_level(logging.WARNING), output_dir_lock(str(tmp_path / "out")):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()
    who = "process 12345 on another-machine" if holder else "a run whose lock file is unreadable"
    assert [record.getMessage() for record in caplog.records] == [
        f"took over {lock}: it was last touched 12 minutes ago, by {who}"
    ]
    assert not lock.exists() and not list((tmp_path / "out").iterdir())  # nor the probe of the filesystem's clock


def test_a_dead_process_lock_of_this_host_is_taken_over_at_once(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = _lock(tmp_path / "out", {**ANOTHER_HOST, "pid": int(dead.stdout), "host": socket.gethostname()})
    with caplog.at_level(logging.WARNING), output_dir_lock(str(tmp_path / "out")):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert [record.getMessage() for record in caplog.records] == [f"took over {lock}: its run (process "
                                                                  f"{int(dead.stdout)}) is gone"]


def test_the_heartbeat_touches_the_lock_until_it_is_released(tmp_path):
    lock = tmp_path / "out" / RunDir.LOCK
    with output_dir_lock(str(tmp_path / "out"), heartbeat=0.01):
        [beat] = _heartbeats()
        assert beat.daemon  # does not keep the process alive
        os.utime(lock, (0, 0))
        assert _wait_for(lambda: lock.stat().st_mtime > 0)
        assert time.time() - lock.stat().st_mtime < 60
    assert not beat.is_alive() and not _heartbeats()


def test_a_failed_touch_is_logged_once_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    touches = []

    def failing_utime(path, *args, **kwargs):
        touches.append(path)
        raise OSError(116, "Stale file handle")

    with caplog.at_level(logging.WARNING), output_dir_lock(str(tmp_path / "out"), heartbeat=0.01):
        monkeypatch.setattr(os, "utime", failing_utime)
        assert _wait_for(lambda: len(touches) >= 3)
    monkeypatch.undo()
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"could not refresh {tmp_path / 'out' / RunDir.LOCK} ([Errno 116] Stale file handle)")
    assert not (tmp_path / "out").exists()
