"""Errors that reach the user as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for or gave; the CLI prints it as one line.

    An error about options names their config fields (``owner`` is the config dataclass that
    declares them, ``names`` the fields the message mentions); the CLI shows each as its flag
    (:func:`rerank_ray.options.flag_of`), a library user sees the field.

    Example:
        >>> from rerank_ray.config import ComputeConfig
        >>> error = ConfigError("num_actors must be at least 1", ComputeConfig, "num_actors")
        >>> str(error), error.shown_to_cli()
        ('num_actors must be at least 1', '--num-actors must be at least 1')
    """

    def __init__(self, message: str, owner: type | None = None, *names: str):
        super().__init__(message)
        self.owner = owner
        self.names = names

    def shown_to_cli(self) -> str:
        """The message with each named field replaced by its command-line flag (a word that is
        part of a path, such as ``runs/corpus``, is left as it is)."""
        import re

        from rerank_ray.options import flag_of

        message = str(self)
        for name in sorted(self.names, key=len, reverse=True):
            message = re.sub(
                rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])", flag_of(self.owner, name), message
            )
        return message


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and the row."""


class ConfigError(UserError, ValueError):
    """An option or combination of options that cannot work."""
