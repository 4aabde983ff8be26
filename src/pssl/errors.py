"""The one error type for input a user can correct: a config value, a flag, a file named on the command line,
a dataset tree, an artifact of the wrong kind. `pssl` reports it in one line; every other exception is a bug
(or the machine's) and keeps its traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, said in words that name it and what to do."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder the input names does not exist."""
