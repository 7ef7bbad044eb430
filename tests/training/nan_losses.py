"""``distily`` with the logit loss NaN in every training forward from the second on, for tests (in a launched
process, where a test cannot patch):

    python -m torch.distributed.run --nproc_per_node 2 tests/training/nan_losses.py distill CONFIG.yaml
"""

import sys

import torch

from distily.cli import main
from distily.objectives.objective import LogitsComponent

forward = LogitsComponent.forward
training_forwards = 0


def nan_from_the_second(self, *args):
    global training_forwards
    value = forward(self, *args)
    if torch.is_grad_enabled():
        training_forwards += 1
        if training_forwards >= 2:
            return value * float("nan")
    return value


LogitsComponent.forward = nan_from_the_second

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
