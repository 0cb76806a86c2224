"""Where a study lives: the Optuna storage behind ``--storage`` and the lock that serialises the
trial-budget check and ask (DESIGN §3).

Default: an Optuna journal file (``JournalStorage(JournalFileBackend(...))``)
``optuna-journal.log`` beside the MLflow SQLite store (``./optuna-journal.log`` for a server).
Several local processes can share it safely: writes are appends under a file lock. A *fresh*
SQLite file is not safe that way: concurrent workers race in the schema migration (alembic) and
crash, and Optuna advises against SQLite for parallel work. ``--storage`` takes an RDB URL
(``postgresql://user:pw@host/db`` for many machines, ``sqlite:///file.db``) or a journal file
path. Credentials in URLs are masked in every print, param and tag; a database that cannot be
reached is a one-line :class:`StorageError` naming the masked URL.

Locks: ``flock`` on the journal or SQLite file itself, a PostgreSQL advisory lock, or MySQL's
``GET_LOCK``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bench.errors import BenchError, ConfigError
from bench.tracking import mask_credentials

JOURNAL_NAME = "optuna-journal.log"
#: Seconds a PostgreSQL / MySQL connection attempt may take before the storage is unreachable.
CONNECT_TIMEOUT_S = 10


class StorageError(BenchError):
    """The Optuna storage cannot be opened (unreachable server, refused login, missing driver)."""


def default_storage(tracking_uri: str | None) -> str:
    """``optuna-journal.log`` beside a SQLite MLflow store, else in the working directory."""
    if tracking_uri and tracking_uri.startswith("sqlite:///") and len(tracking_uri) > 10:
        return str(Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent
                   / JOURNAL_NAME)
    return str(Path.cwd() / JOURNAL_NAME)


class NullLock:
    """No lock (a storage without one: the budget may overshoot by one trial per worker)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FileLock:
    """An exclusive ``flock`` on a file, created if absent (processes on one machine)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self):
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        try:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None
        return False


class DbLock:
    """A named lock held by the database: PostgreSQL advisory lock or MySQL ``GET_LOCK``."""

    def __init__(self, engine, name: str):
        self.engine = engine
        self.name = name
        self.key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(),
                                  "big", signed=True)
        self._conn = None

    def __enter__(self):
        from sqlalchemy import text
        self._conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        else:
            self._conn.execute(text("SELECT GET_LOCK(:n, -1)"), {"n": self.name[:64]})
        self._conn.commit()
        return self

    def __exit__(self, *exc):
        from sqlalchemy import text
        try:
            if self.engine.dialect.name == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name[:64]})
            self._conn.commit()
        finally:
            self._conn.close()
            self._conn = None
        return False


class StorageHandle:
    """An Optuna storage plus the lock that serialises the trial-budget check and ask."""

    def __init__(self, spec: str):
        self.spec = spec
        self.display = mask_credentials(str(spec))
        self.kind, self._lock_base, self._engine = self._classify(spec)
        self.storage = None

    def _classify(self, spec: str):
        if "://" not in spec:
            p = Path(spec).expanduser()
            if p.suffix in (".db", ".sqlite", ".sqlite3"):
                raise ConfigError(f"--storage {spec}: looks like an SQLite file; pass "
                                  f"sqlite:///{spec} for an RDB store, or a .log path for a "
                                  "journal file")
            return "journal", p.resolve(), None
        scheme = spec.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme == "sqlite":
            path = spec[len("sqlite:///"):] if spec.startswith("sqlite:///") else ""
            return "rdb", (Path(path).expanduser().resolve() if path and path != ":memory:"
                           else None), None
        if scheme in ("postgresql", "postgres", "mysql"):
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool
            try:
                return "rdb", None, create_engine(driver_url(spec), poolclass=NullPool,
                                                  **_engine_kwargs(spec))
            except Exception as exc:  # unknown driver, malformed URL
                raise self._error(exc) from None
        return "rdb", None, None

    def _error(self, exc: BaseException) -> StorageError:
        """One line naming the masked URL and the first line of the driver's reason."""
        reason = getattr(exc, "orig", None) or exc
        first = (str(reason).strip().splitlines() or [type(reason).__name__])[0]
        return StorageError(f"--storage {self.display}: cannot open the Optuna storage "
                            f"({type(reason).__name__}: {mask_credentials(first)[:300]})")

    def lock(self, purpose: str, study_name: str = "") -> Any:
        """``flock`` on the journal / SQLite file itself (no side files; independent of the
        journal's own lock and of SQLite's byte-range locks), or a database-held lock."""
        if self._engine is not None:
            return DbLock(self._engine, f"persrv-bench:{purpose}:{study_name}")
        if self._lock_base is not None:
            return FileLock(self._lock_base)
        return NullLock()

    @property
    def exact_budget(self) -> bool:
        return self._engine is not None or self._lock_base is not None

    def open(self):
        """The Optuna storage (created under the init lock: a fresh RDB's schema once).
        Raises :class:`StorageError` when the database cannot be reached."""
        if self.storage is not None:
            return self.storage
        try:
            with self.lock("init"):
                self.storage = self._make()
        except BenchError:
            raise
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError
            if isinstance(exc, (SQLAlchemyError, ImportError, OSError)):
                raise self._error(exc) from None
            raise
        return self.storage

    def _make(self):
        import optuna
        if self.kind == "journal":
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend
            self._lock_base.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(self._lock_base)))
        if self._lock_base is not None:
            self._lock_base.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(driver_url(self.spec),
                                          engine_kwargs=_engine_kwargs(self.spec) or None)

    def hash(self) -> str:
        """Identifies the storage in MLflow tags without its credentials."""
        base = str(self._lock_base) if self._lock_base is not None else self.display
        return hashlib.sha256(base.encode()).hexdigest()[:12]


def _engine_kwargs(url: str) -> dict[str, Any]:
    """A connect timeout for PostgreSQL / MySQL unless the URL sets one (an unreachable host
    fails in seconds, not after the OS's TCP timeout)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "mysql") and "connect_timeout" not in url:
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {}


def driver_url(url: str) -> str:
    """``postgres://`` and a driver-less ``postgresql://`` get a driver that is installed:
    SQLAlchemy 2.1 defaults to psycopg 3, while psycopg2(-binary) is what we depend on."""
    import importlib.util
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url
