"""The command line's one error boundary: every exception becomes one line on stderr.

:class:`~bench.errors.BenchError` (bad input the harness recognised) prints its message, exit 2.
Anything else — a full disk, an encoding the terminal or file system cannot hold, a damaged file a
library choked on, a bug — prints ``error: <what> (<where>) ...`` naming the file / row / field
when the exception carries one, exit 2 for errors of the environment or the input (``OSError``,
``UnicodeError``, ``RecursionError``, ``MemoryError``, pyarrow / pandas / YAML parse errors) and 1
for anything else. The full traceback is written to ``traceback.log`` in the run folder when the
failure happened inside a run (the exception carries ``run_folder``), else to
``<user log dir>/persrv-bench-<time>-<pid>.log``; ``--debug`` also prints it. Every line is
masked (:mod:`bench.secrets`) and control characters are escaped.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import traceback
from pathlib import Path

#: Exception types that are about the input or the machine, not the harness's code: exit 2.
_INPUT_TYPES = ("ArrowInvalid", "ArrowTypeError", "ArrowNotImplementedError", "ParserError",
                "EmptyDataError", "YAMLError", "ScannerError", "ParserError", "ComposerError",
                "ConstructorError", "JSONDecodeError", "OperationalError", "DatabaseError")


def prepare_streams() -> None:
    """stdout/stderr never raise for a character their encoding lacks (a Latin-1 terminal and a
    Chinese run name): it is written as ``\\uXXXX`` instead."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def register_argument_secrets(args: list[str]) -> None:
    """Register the passwords of every URL given on the command line or in the environment
    (``--storage``, ``--tracking-uri``, ``$MLFLOW_TRACKING_URI``...) before anything prints."""
    from bench.secrets import register_url
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if "://" in value:
            register_url(value)
    for name, value in os.environ.items():
        if "://" in value and any(w in name.upper() for w in ("URI", "URL", "STORAGE", "DSN")):
            register_url(value)


def describe(exc: BaseException) -> str:
    """One line for an exception the harness did not raise itself, naming the file / field."""
    name = type(exc).__name__
    if isinstance(exc, OSError):
        where = exc.filename or ""
        if exc.filename2:
            where = f"{where} -> {exc.filename2}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"cannot write {where or 'output'}: no space left on device (files written "
                    "before it are kept; free space and run again)")
        reason = exc.strerror or str(exc) or name
        return f"{name} on {where}: {reason}" if where else f"{name}: {reason}"
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
        return (f"cannot encode {bad!r} in {exc.object[:80]!r} as {exc.encoding} (the locale's "
                "encoding): use a UTF-8 locale (LC_ALL=C.UTF-8) or PYTHONUTF8=1, or an ASCII name")
    if isinstance(exc, UnicodeDecodeError):
        return (f"input is not {exc.encoding} text (byte {exc.start}): {exc.reason}; save it as "
                "UTF-8")
    if isinstance(exc, RecursionError):
        return ("input nested too deeply (Python's recursion limit was reached while reading "
                "it): flatten the structure")
    if isinstance(exc, MemoryError):
        return "out of memory: use a smaller dataset, fewer k, or a machine with more memory"
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    return f"{name}: {text[:500]}" if text else name


def is_input_error(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, UnicodeError, RecursionError, MemoryError)) or any(
        cls.__name__ in _INPUT_TYPES for cls in type(exc).__mro__)


def log_dir() -> Path:
    """Where tracebacks of failures outside a run folder go (``$PERSRV_BENCH_LOG_DIR``, else the
    user's log directory)."""
    env = os.environ.get("PERSRV_BENCH_LOG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_log_dir
    return Path(user_log_dir("persrv-bench"))


def save_traceback(exc: BaseException, argv: list[str]) -> Path | None:
    """Write the masked traceback (and the command line) to a log file; its path, or None when
    it cannot be written (a full disk)."""
    from bench.secrets import mask_credentials
    folder = getattr(exc, "run_folder", None)
    target = Path(folder) / "traceback.log" if folder else \
        log_dir() / f"persrv-bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = "persrv-bench " + " ".join(argv) + "\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(mask_credentials(text), encoding="utf-8", errors="backslashreplace")
    except (OSError, RecursionError):
        return None
    return target


def report(exc: BaseException, argv: list[str], debug: bool) -> int:
    """Print the one line (and with ``debug`` the traceback); return the exit status."""
    from bench.errors import BenchError
    from bench.secrets import mask_credentials, safe_output
    if isinstance(exc, BenchError):
        line, status = str(exc), 2
    else:
        line, status = describe(exc), 2 if is_input_error(exc) else 1
        if not getattr(exc, "filename", None):  # name what the user gave: config, folder...
            line += f" [while running: persrv-bench {' '.join(argv)[:300]}]"
    saved = save_traceback(exc, argv) if (debug or not isinstance(exc, BenchError)) else None
    if debug:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        _err(mask_credentials(text))
    where = f" (traceback: {saved}; --debug prints it)" if saved else \
        (" (traceback not saved; --debug prints it)" if not isinstance(exc, BenchError) else "")
    _err("error: " + safe_output(line) + (safe_output(where) if not debug else ""))
    return status


def _err(text: str) -> None:
    try:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()
    except (OSError, UnicodeError, ValueError):
        pass
