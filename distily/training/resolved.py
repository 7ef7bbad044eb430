"""What a run settles before it trains, kept apart from the user's configuration (which a run never changes)."""

import dataclasses
from dataclasses import dataclass

from distily.config import DistillConfig
from distily.objectives.arguments import ObjectiveArguments


@dataclass(frozen=True)
class ResolvedRun:
    """``config`` as given; ``objective`` as the run uses it (values computed before training filled in, e.g.
    CAKLD's calibrated beta); the sequence length and the vocabulary the models share."""

    config: DistillConfig
    objective: ObjectiveArguments
    max_seq_length: int
    vocab_size: int

    @property
    def reported_config(self) -> DistillConfig:
        """The configuration the run trained with, to report and reproduce it: the given one with ``objective``."""
        return dataclasses.replace(self.config, objective=self.objective)
