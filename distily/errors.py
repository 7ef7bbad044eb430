"""The one exception type for errors a user can cause."""


class DistilyConfigError(ValueError):
    """A bad value in configuration, models, data, stores or exports.

    The message is one line that names the bad value and what was expected; the CLI prints it
    and exits with status 2.
    """
