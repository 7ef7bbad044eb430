"""output_dir's lock file (``RunDir.LOCK``): one run writes a directory at a time.

The lock holds the writer's pid, host and start time. While it is held, a daemon thread touches it every
``HEARTBEAT_SECONDS`` (its modification time says the run is alive), until the lock is released. A run finds a lock
already there stale, and takes it over with one warning line, when:

- it was written on this host by a process that is gone (a killed run): at once, whatever its age;
- it was written on another host (or cannot be read) and was not touched for ``STALE_AFTER_SECONDS``: a run
  killed outright (SIGKILL, a node lost) and requeued on another machine. The threshold is twenty heartbeats, so
  that a slow or briefly failing shared filesystem does not let a second run into a live one's directory. Its age is
  measured on the filesystem's own clock (the lock's mtime against that of a file just written beside it), not
  this host's: clocks of two machines that differ do not count, unless the filesystem stamps files with each
  client's clock (some do), where the difference adds to or takes from the age.

A stopped process (SIGSTOP, a suspended job) does not touch its lock either: once stopped longer than the threshold,
a run on another host takes its directory over.
"""

import json
import logging
import os
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from distily.errors import DistilyConfigError
from distily.outputs import filesystem_errors
from distily.training.run_dir import RunDir, check_output_dir_path

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0  # how often a held lock is touched
STALE_AFTER_SECONDS = 600.0  # a lock of another host untouched this long is taken over


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _of_this_host(holder: dict) -> bool:
    return isinstance(holder.get("pid"), int) and holder.get("host") == socket.gethostname()


def _age(lock: Path) -> float:
    """Seconds since ``lock`` was last touched, on the filesystem's clock: a file written beside it gives the time."""
    with tempfile.NamedTemporaryFile(dir=lock.parent, prefix=f"{RunDir.LOCK}.clock-") as probe:
        now = os.fstat(probe.fileno()).st_mtime
    return now - lock.stat().st_mtime


def _who(holder: dict) -> str:
    return f"process {holder.get('pid')} on {holder.get('host')}" if holder else "a run whose lock file is unreadable"


def _gone(holder: dict, lock: Path) -> Optional[str]:
    """How the run of ``lock``, which holds ``holder``, is known to be gone (for the takeover's warning), None while
    it may go on: a process of this host that is gone, or a lock of another host not touched for a while."""
    if _of_this_host(holder):
        pid = holder["pid"]
        return f"its run (process {pid}) is gone" if pid != os.getpid() and not _alive(pid) else None
    age = _age(lock)
    if age <= STALE_AFTER_SECONDS:
        return None
    return f"it was last touched {age / 60:.0f} minutes ago, by {_who(holder)}"


def _refuse(holder: dict, lock: Path) -> DistilyConfigError:
    since = f" since {holder['since']}" if holder.get("since") else ""
    return DistilyConfigError(
        f"output_dir={str(lock.parent)!r} is in use by another run ({_who(holder)}{since}); expected one run per "
        f"output_dir at a time: wait for it, use another output_dir, or delete {str(lock)!r} if that run is gone (a "
        f"lock of another host untouched for {STALE_AFTER_SECONDS / 60:.0f} minutes is taken over)"
    )


def _take_over(lock: Path, gone: str) -> None:
    """Remove the stale ``lock``, with a warning saying why (``gone``)."""
    aside = lock.with_name(f"{RunDir.LOCK}.stale-{os.getpid()}")
    try:  # one rename wins when several runs take the stale lock over at once
        os.rename(lock, aside)
        aside.unlink()
        logger.warning(f"took over {lock}: {gone}")
    except FileNotFoundError:
        pass


def _acquire(lock: Path) -> dict:
    """Create ``lock`` (taking a stale one over); return what it holds."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(5):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            try:
                gone = _gone(holder, lock)
            except FileNotFoundError:  # released meanwhile
                continue
            if gone is None:
                raise _refuse(holder, lock)
            _take_over(lock, gone)
            continue
        with os.fdopen(handle, "w") as out:
            json.dump(me, out)
        return me
    raise DistilyConfigError(f"could not take {str(lock)!r}; expected one run per output_dir at a time")


def _heartbeat(lock: Path, me: dict, stop: threading.Event, seconds: float) -> None:
    """Touch ``lock`` every ``seconds`` while it holds ``me``, until ``stop``; a failed touch is logged once."""
    failed = False
    while not stop.wait(seconds):
        try:
            if _holder(lock) == me:
                os.utime(lock)
        except OSError as error:
            if not failed:
                logger.warning(f"could not refresh {lock} ({error}); the run goes on, but a run on another host "
                               f"takes the lock over if it is not refreshed for {STALE_AFTER_SECONDS / 60:.0f} minutes")
            failed = True


@contextmanager
def _heartbeating(lock: Path, me: dict, seconds: float) -> Iterator[None]:
    """Touch ``lock`` from a daemon thread while the block runs."""
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, me, stop, seconds), name="distily-lock-heartbeat",
                            daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


@contextmanager
def output_dir_lock(output_dir: str, enabled: bool = True, heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Hold ``output_dir``'s lock file while the block runs (created with the directory if need be), touched every
    ``heartbeat`` seconds; at exit, remove it, and the directories made for it when they are still empty. A write
    into output_dir that fails because of the filesystem is one line naming the path."""
    if not enabled:
        yield
        return
    check_output_dir_path(output_dir)
    directory = Path(output_dir)
    made = [path for path in (directory, *directory.parents) if not path.exists()]
    lock = RunDir(directory).lock
    with filesystem_errors(directory, "in output_dir"):
        directory.mkdir(parents=True, exist_ok=True)
        me = _acquire(lock)
    try:
        with _heartbeating(lock, me, heartbeat), filesystem_errors(directory, "in output_dir"):
            yield
    finally:
        if _holder(lock) == me:
            lock.unlink(missing_ok=True)
        for path in made:  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty: the run wrote into it
                break
