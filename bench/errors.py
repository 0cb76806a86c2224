"""Errors meant for people: each says what was wrong, where, and (when it can) what to do."""

from __future__ import annotations


class BenchError(Exception):
    """Base class of every error the CLI prints as one line (no traceback), exit code 2."""


class DatasetError(BenchError):
    """A dataset file is missing, unreadable or invalid; the message names file, row and column."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None):
        where = ", ".join(
            part for part in (
                f"file {file}" if file is not None else None,
                f"row {row}" if row is not None else None,
                f"column {column!r}" if column is not None else None,
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.row, self.column = file, row, column


class ConfigError(BenchError):
    """An experiment config or search space is invalid; the message names the key."""


def closest(word: object, choices) -> str | None:
    """The choice a misspelt ``word`` most likely meant (difflib, similarity >= 0.6), or None:
    the one matching rule behind every "did you mean" in the harness's messages."""
    import difflib
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return found[0] if found else None
