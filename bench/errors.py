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


def validate_mapping(model, raw, source: str = "config"):
    """``model.model_validate(raw)`` (a pydantic model of a YAML config file), or one
    :class:`ConfigError` naming every offending key (``unknown key 'trainer.lr'``, ``'mode':
    Input should be ... (got 'x')``)."""
    from pydantic import ValidationError
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, "
                          f"got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key {loc!r}")
            else:
                lines.append(f"{loc!r}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None
