"""The error families: what the user got wrong, what state the server is in, and what we got wrong.

A ``UserError`` carries a message written for the person who supplied the input; the
training entry writes it to ``output/failure`` and exits 1, serving turns it into a 4xx.
Anything else is an internal error: its traceback is kept, because only a developer can act on it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: data, hyperparameters or a request. The message names the problem."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def message(self) -> str:
        return str(self)


class ServerStateError(Exception):
    """The server cannot answer now, whatever the request: not ready (503), or too slow (504).

    Not a ``UserError``: the request may be fine, and a client should retry rather than fix it.
    """

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def message(self) -> str:
        return str(self)


class DataError(UserError):
    """A table that is missing, unreadable, empty or lacks a required column."""


class ConfigError(UserError):
    """An unknown hyperparameter or a value of the wrong type or out of range."""
