"""The offline feature cache (DESIGN §9).

An entry is keyed by (dataset fingerprint, extractor, its parameters, model id/revision). Values are
per-sticker rows stored as parquet *parts* written atomically (temp file + rename), so an
interrupted extraction (even ``kill -9``) leaves only whole parts behind and a re-run computes just
the stickers no part holds yet. A re-run with every item present does no work.

Entries whose rows are texts rather than stickers (dense-text's embeddings, one entry per model)
use :func:`text_digest` as the row id in the ``sticker_id`` column.

Default location: ``$PERSRV_BENCH_CACHE`` or the user's cache dir (``platformdirs``) + ``/features``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

CACHE_ENV = "PERSRV_BENCH_CACHE"

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The feature cache: ``$PERSRV_BENCH_CACHE`` or ``<user cache dir>/persrv-bench/features``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("persrv-bench")) / "features"


def datasets_cache_dir() -> Path:
    """Where datasets built from a config are kept: ``$PERSRV_BENCH_CACHE/datasets`` (inside the
    folder the user named, never beside it) or ``<user cache dir>/persrv-bench/datasets``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / "datasets"
    return default_cache_dir().parent / "datasets"


def text_digest(text: str) -> str:
    """Row id of a per-text entry (e.g. dense-text's embeddings): SHA-256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


class FeatureCache:
    """Per-sticker feature tables on disk, keyed by what produced them."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(self, *, dataset_fingerprint: str, extractor: str, params: dict[str, Any] | None = None,
            model: str | None = None) -> str:
        """A readable, collision-safe key: ``<extractor>-<sha256 of everything>[:16]``."""
        blob = _stable_json({"dataset": dataset_fingerprint, "extractor": extractor,
                             "params": params or {}, "model": model})
        return f"{extractor}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    def _parts(self, key: str) -> list[Path]:
        d = self.entry_dir(key)
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    def load(self, key: str) -> pd.DataFrame | None:
        """Every cached row of an entry (column ``sticker_id`` + values), or None if empty."""
        frames = []
        for p in self._parts(key):
            try:
                frame = pd.read_parquet(p)
                if "sticker_id" not in frame.columns:
                    raise ValueError("no sticker_id column")
            except FileNotFoundError:  # renamed aside by a concurrent reader
                continue
            except Exception as exc:  # parts are written atomically; this one was damaged
                # outside the harness (disk full, a torn copy): set it aside, recompute its rows
                log.warning("feature cache: unreadable part %s (%s: %s); moved aside to "
                            "%s.corrupt, its stickers will be recomputed", p,
                            type(exc).__name__, exc, p.name)
                try:
                    os.replace(p, p.with_name(p.name + ".corrupt"))
                except OSError:
                    pass
                continue
            frames.append(frame)
        if not frames:
            return None
        df = pd.concat(frames, ignore_index=True)
        return df.drop_duplicates("sticker_id", keep="last").reset_index(drop=True)

    def write_part(self, key: str, rows: pd.DataFrame, meta: dict[str, Any] | None = None) -> Path:
        """Atomically add a part (rows with a ``sticker_id`` column) to an entry. A cache that
        cannot be written (read-only, disk full) is a one-line BenchError naming the folder."""
        try:
            return self._write_part(key, rows, meta)
        except OSError as exc:
            from bench.errors import BenchError
            raise BenchError(f"feature cache {self.entry_dir(key)} cannot be written "
                             f"({exc.strerror or exc}) and lacks this feature ({key}): make it "
                             f"writable, free space, or set {CACHE_ENV} to another folder") from None

    def _write_part(self, key: str, rows: pd.DataFrame, meta: dict[str, Any] | None) -> Path:
        d = self.entry_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        if meta is not None and not (d / "meta.json").exists():
            fd, tmp = tempfile.mkstemp(prefix=".meta.", dir=d)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(_stable_json(meta))
            os.replace(tmp, d / "meta.json")
        existing = self._parts(key)
        n = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        fd, tmp = tempfile.mkstemp(prefix=".part.", suffix=".parquet", dir=d)
        os.close(fd)
        try:
            rows.to_parquet(tmp, index=False)
            target = d / f"part-{n:06d}-{os.getpid()}.parquet"
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def compute(self, key: str, sticker_ids: Sequence[str],
                fn: Callable[[list[str]], pd.DataFrame], *, chunk_size: int = 256,
                meta: dict[str, Any] | None = None, progress: str | None = None,
                rate_unit: str | None = None) -> pd.DataFrame:
        """Return rows for ``sticker_ids``, computing (in chunks, each saved) only the missing ones.

        ``fn(ids)`` returns a frame with one row per id (column ``sticker_id`` first). The result
        is in the order of ``sticker_ids``. ``progress``: the stage's label for
        :mod:`bench.progress` (None: silent); ``rate_unit``: its rate's unit (``img`` -> img/s).
        """
        from bench.progress import Progress
        have = self.load(key)
        done = set(have["sticker_id"]) if have is not None else set()
        todo = [s for s in dict.fromkeys(sticker_ids) if s not in done]
        if todo:
            with Progress(len(todo), progress or key, "stickers", rate_unit=rate_unit,
                          enabled=progress is not None) as bar:
                for start in range(0, len(todo), chunk_size):
                    chunk = todo[start:start + chunk_size]
                    rows = fn(chunk)
                    if "sticker_id" not in rows.columns or len(rows) != len(chunk):
                        raise RuntimeError(f"feature extractor for {key} returned {len(rows)} "
                                           f"rows for {len(chunk)} stickers")
                    self.write_part(key, rows, meta=meta)
                    bar.update(len(chunk))
            have = self.load(key)
        assert have is not None or not sticker_ids
        if have is None:
            return pd.DataFrame({"sticker_id": []})
        indexed = have.set_index("sticker_id")
        return indexed.reindex(list(sticker_ids)).reset_index()
