"""What a user configures about generation: the back ends a run can name, and how completions are sampled."""

from dataclasses import dataclass
from typing import Optional

GENERATION_BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled: temperature (0: greedy), nucleus top-p, at most ``max_new_tokens`` each.
    ``final_temperature`` moves the temperature linearly along the completion (Hugging Face back end only)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    final_temperature: Optional[float] = None
