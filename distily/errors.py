"""The one exception type for errors a user can cause."""


class DistilyConfigError(ValueError):
    """A bad value in configuration, models, data, stores or exports.

    The message is one line that names the bad value and what was expected; the CLI prints it
    and exits with status 2.
    """


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C; the message says how to go on. The CLI prints it in one line and exits with 130."""
