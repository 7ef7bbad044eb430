"""``StopSignals``: a stop signal raises at once outside ``deferred()``, is recorded (the first one) inside it, is
ignored by a data loader's worker and kills another process forked meanwhile as it would without the handlers; the
handlers before are put back."""

import multiprocessing
import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader

from distily.errors import RunInterrupted
from distily.preemption import StopSignals


def test_a_stop_signal_raises_at_once_outside_deferred():
    handler = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(RunInterrupted, match="^stopped on SIGUSR1$") as stop:
        with StopSignals():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(5)  # interrupted by the handler's exception
    assert stop.value.exit_status == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is handler


def test_within_deferred_the_first_signal_is_recorded_and_stops_the_command_as_it_ends():
    with StopSignals() as signals:
        with pytest.raises(RunInterrupted, match="^stopped on SIGTERM$"):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGUSR1)  # while stopping: ignored
                assert signals.received == signal.SIGTERM
                finished = True
    assert finished


def _wait() -> None:
    time.sleep(30)


def test_a_process_forked_while_deferring_dies_on_the_signal():
    """A data loader's worker inherits the handler: recording the signal there would leave it running."""
    with StopSignals() as signals, signals.deferred():
        child = multiprocessing.get_context("fork").Process(target=_wait)
        child.start()
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGTERM)
        child.join(10)
        alive = child.is_alive()
        if alive:
            child.kill()
    assert not alive and child.exitcode == -signal.SIGTERM and signals.received is None


def test_a_data_loader_worker_sent_sigusr1_goes_on_serving_batches():
    """SLURM's --signal reaches every process of a job step: a worker dying of it would fail the run before its
    checkpoint. (SIGTERM from another process than its main one kills a worker whatever Python's handlers: PyTorch
    sets its own.)"""
    with StopSignals() as signals, signals.deferred():
        batches = iter(DataLoader(torch.arange(8), batch_size=2, num_workers=1))
        first = next(batches)
        os.kill(batches._workers[0].pid, signal.SIGUSR1)
        time.sleep(0.5)
        rest = list(batches)
    assert torch.equal(torch.cat([first, *rest]), torch.arange(8)) and signals.received is None
