"""Errors that reach the user as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for or gave; the CLI prints it as one line."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and the row."""


class ConfigError(UserError, ValueError):
    """An option or combination of options that cannot work."""
