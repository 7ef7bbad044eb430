"""``distily`` (its CLI) with a signal sent to one process during training, for ``test_preemption``:

    python signal_worker.py RANK STEP distill CONFIG.yaml    # or under torchrun

Process RANK (``RANK`` in the environment; 0 without a launcher) sends itself SIGTERM as the STEP-th call of
``DistillationTrainer.training_step`` starts, as a scheduler's signal arrives; the exit status is the CLI's.
"""

import os
import signal
import sys

import pytest

from distily.cli import main
from interrupts import signal_at_training_step

if __name__ == "__main__":
    rank, step, *args = sys.argv[1:]
    if int(os.environ.get("RANK", "0")) == int(rank):
        signal_at_training_step(pytest.MonkeyPatch(), int(step), signal.SIGTERM)
    sys.exit(main(args))
