"""Stop signals: a scheduler's notice that it is about to kill the job (SLURM's SIGTERM before its SIGKILL, or the
signal ``--signal`` names; Kubernetes' and spot instances' SIGTERM).

``StopSignals`` handles SIGTERM and SIGUSR1 while a command runs (a context manager; in the main thread only, where
Python runs signal handlers). Outside ``deferred()`` a signal stops the command at once, as Ctrl-C does
(``RunInterrupted``, exit status 128 + the signal's number): nothing has been done there that a resume would need.
Inside it the signal is recorded in ``received``, and the code that deferred it stops at its next safe point
(training: once the optimizer step under way is checkpointed; recording: between shards); a signal it did not act
on stops the command as ``deferred()`` ends. Further signals while it stops are ignored (SIGKILL ends it at once).
A process forked meanwhile inherits the handlers: a data loader's worker ignores the signal (SLURM's ``--signal`` goes
to every process of a job step; the worker's main process stops it with the run; PyTorch's own SIGTERM handler in a
worker kills it on a SIGTERM from another process all the same), any other process dies of it as by default.

SIGINT (Ctrl-C) keeps Python's KeyboardInterrupt: a person at a terminal wants the prompt back now, not after the
minutes a checkpoint of a large model may take; ``kill -TERM`` asks for the checkpoint.
"""

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from distily.errors import RunInterrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def stopped_on(signal_number: int) -> str:
    """How a command stopped, to start the line it prints: ``interrupted`` (Ctrl-C) or ``stopped on SIGTERM``."""
    return "interrupted" if signal_number == signal.SIGINT else f"stopped on {signal.Signals(signal_number).name}"


def _in_data_loader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")  # imported where a data loader forked this process
    return data is not None and data.get_worker_info() is not None


class StopSignals:
    """SIGTERM and SIGUSR1 handled while the context is open (see the module's docstring)."""

    def __init__(self):
        self.received: Optional[int] = None  # the first stop signal's number
        self._deferring = False
        self._previous: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signal_number: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked process inherited the handler
            if _in_data_loader_worker():
                return
            signal.signal(signal_number, signal.SIG_DFL)
            os.kill(os.getpid(), signal_number)
            return
        if self.received is not None:  # already stopping
            return
        self.received = signal_number
        if not self._deferring:
            raise RunInterrupted(stopped_on(signal_number), signal_number)

    @contextmanager
    def deferred(self) -> Iterator["StopSignals"]:
        """A signal within is recorded, for the code within to stop at its next safe point."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False
        if self.received is not None:  # received where nothing acted on it (after the last safe point)
            raise RunInterrupted(stopped_on(self.received), self.received)
