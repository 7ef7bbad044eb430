"""What Distily prints besides its results: libraries' log messages that would say nothing to a Distily user,
silenced for the call that prompts them, and progress bars that a Ctrl-C left open, closed."""

import logging
from contextlib import contextmanager
from typing import Iterator

from tqdm.std import tqdm


@contextmanager
def quieted(logger_name: str, level: int) -> Iterator[None]:
    """Only messages of ``level`` and above from the logger ``logger_name`` while the block runs; its own level
    again after."""
    log = logging.getLogger(logger_name)
    previous = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


def close_progress_bars() -> None:
    """Close every open tqdm bar (each ends its line, or clears it), so that what is printed next starts on a line of
    its own: a Ctrl-C stops the loops that drew them without closing them."""
    for bar in list(tqdm._instances):  # every open bar, tqdm.auto's and transformers' included
        bar.close()
