"""Libraries' log messages that would say nothing to a Distily user, silenced for the call that prompts them."""

import logging
from contextlib import contextmanager
from typing import Iterator


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
