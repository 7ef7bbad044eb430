"""The one exception type for errors a user can cause."""

import signal


class DistilyConfigError(ValueError):
    """A bad value in configuration, models, data, stores or exports.

    The message is one line that names the bad value and what was expected; the CLI prints it
    and exits with status 2.
    """


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) or by a stop signal (SIGTERM, SIGUSR1: ``distily.preemption``); the message
    says how to go on. The CLI prints it in one line and exits with ``exit_status``: 128 + the signal's number."""

    def __init__(self, message: str = "", signal_number: int = signal.SIGINT):
        super().__init__(message)
        self.signal_number = signal_number

    @classmethod
    def of(cls, interrupt: KeyboardInterrupt) -> "RunInterrupted":
        """``interrupt`` itself, or Ctrl-C's (a plain KeyboardInterrupt: "interrupted", SIGINT)."""
        return interrupt if isinstance(interrupt, cls) else cls("interrupted")

    @property
    def exit_status(self) -> int:
        return 128 + self.signal_number
