"""The canonical dataset directory (DESIGN §2): write it, fingerprint it, load and validate it.

A dataset is a directory with ``stickers.parquet``, ``interactions.parquet`` and ``dataset.json``.
``load_dataset`` is the one validated loader: structural problems (missing file or column, duplicate
sticker ids, wrong types, unreadable parquet) always raise :class:`DatasetError` naming file, row and
column. Row problems (clicks on unknown stickers, empty queries) raise too, unless
``on_invalid="skip"``: then the rows are dropped, counted in ``Dataset.skipped`` and reported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.data import ids, integrity
from bench.errors import DatasetError

log = logging.getLogger(__name__)

from bench.data.integrity import (INTERACTIONS_FILE, META_FILE, STICKERS_FILE,  # noqa: F401
                                  _atomic_write_bytes, write_json_atomic)

STICKER_COLUMNS = ("sticker_id", "image")
INTERACTION_COLUMNS = ("user_id", "query", "sticker_id", "ts")
#: Sticker columns a retriever may read as text (any other non-``gt_`` string column is text too).
KNOWN_TEXT_COLUMNS = ("ocr_text", "description", "keywords", "title", "text")
#: Optional precomputed image/style embedding column: list of floats, one vector per sticker.
EMBEDDING_COLUMN = "embedding"


@dataclass
class Dataset:
    """A loaded, validated dataset. ``stickers`` and ``interactions`` follow DESIGN §2."""

    stickers: pd.DataFrame
    interactions: pd.DataFrame
    meta: dict[str, Any]
    root: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "unnamed"))

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    @property
    def text_columns(self) -> list[str]:
        """Sticker columns holding text a retriever may use (never ``gt_*``)."""
        return text_columns(self.stickers)

    def image_path(self, relative: str | None) -> Path | None:
        if relative is None or (isinstance(relative, float) and np.isnan(relative)):
            return None
        if self.root is None:
            return Path(relative)
        return self.root / relative


def text_columns(stickers: pd.DataFrame) -> list[str]:
    """Names of the string columns of ``stickers`` other than id, image and ``gt_*``."""
    out = []
    for col in stickers.columns:
        if col in STICKER_COLUMNS or col.startswith("gt_") or col == EMBEDDING_COLUMN:
            continue
        if pd.api.types.is_string_dtype(stickers[col]) or stickers[col].dtype == object:
            out.append(col)
    return out


# ----------------------------------------------------------------------------------------- writing

def _normalise_stickers(stickers: pd.DataFrame) -> pd.DataFrame:
    df = stickers.copy()
    if "image" not in df.columns:
        df["image"] = None
    df["sticker_id"] = df["sticker_id"].astype(str)
    df["image"] = df["image"].astype(object).where(df["image"].notna(), None)
    return df.reset_index(drop=True)


def _normalise_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    df = interactions.copy()
    for col in ("user_id", "query", "sticker_id"):
        df[col] = df[col].astype(str)
    df["ts"] = ids.check_ts(df["ts"], "interactions")  # no silent int64 wrap
    return df[list(INTERACTION_COLUMNS) + [c for c in df.columns if c not in INTERACTION_COLUMNS]] \
        .reset_index(drop=True)


def fingerprint_dir(root: Path, stickers: pd.DataFrame) -> str:
    """Content fingerprint: sha256 of both parquet files and every referenced image file."""
    return integrity.fingerprint_dir(root, stickers["image"] if "image" in stickers else [])


def languages_of(texts: pd.Series, sample: int = 5000) -> list[str]:
    """Rough language tags of a text column: 'zh' if CJK characters occur, 'en' if Latin letters."""
    s = texts.dropna().astype(str)
    if len(s) > sample:
        s = s.sample(sample, random_state=0)
    return text_languages("".join(s.tolist()))


def text_languages(text: str) -> list[str]:
    """Rough language tags of one text: 'en' if it has Latin letters, 'zh' if CJK characters."""
    langs = []
    if any("a" <= ch.lower() <= "z" for ch in text):
        langs.append("en")
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        langs.append("zh")
    return langs


def write_dataset(out_dir: str | Path, stickers: pd.DataFrame, interactions: pd.DataFrame,
                  meta: dict[str, Any]) -> Dataset:
    """Write a canonical dataset directory and return it loaded (validated).

    ``meta`` should hold name, version, source, license; languages, counts and the content
    fingerprint are filled in here. Image files must already be under ``out_dir``.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    st = _normalise_stickers(stickers)
    it = _normalise_interactions(interactions)
    _atomic_write_bytes(root / STICKERS_FILE, lambda tmp: st.to_parquet(tmp, index=False))
    _atomic_write_bytes(root / INTERACTIONS_FILE, lambda tmp: it.to_parquet(tmp, index=False))
    full = dict(meta)
    full.setdefault("name", root.name)
    full.setdefault("version", "1")
    full.setdefault("source", "unknown")
    full.setdefault("license", "unknown")
    if "languages" not in full:
        full["languages"] = languages_of(it["query"]) or ["en"]
    full["counts"] = {
        "stickers": int(len(st)),
        "interactions": int(len(it)),
        "users": int(it["user_id"].nunique()),
        "queries": int(it["query"].nunique()),
        "images": int(st["image"].notna().sum()),
    }
    full["fingerprint"] = fingerprint_dir(root, st)
    full["files_digest"] = integrity.files_digest(root, integrity.scan_images(st["image"], root)[1])
    write_json_atomic(root / META_FILE, full)
    return load_dataset(root)


# ----------------------------------------------------------------------------------------- loading

def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DatasetError("file is missing (is this a dataset directory? build one with "
                           "`persrv-bench datasets build`)", file=str(path))
    if path.stat().st_size == 0:
        raise DatasetError("file is empty (0 bytes)", file=str(path))
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetError(f"unreadable parquet ({type(exc).__name__}: "
                           f"{_short(str(exc).splitlines()[0] if str(exc) else '', 200)})",
                           file=str(path)) from None
    _check_utf8(frame, str(path))
    return frame


def _check_utf8(frame: pd.DataFrame, file: str) -> None:
    """Arrow-backed string columns are not decoded on read: invalid UTF-8 would surface later as
    an ArrowInvalid traceback. Validate each one now and name the first bad row."""
    import re

    import pyarrow as pa
    for col in frame.columns:
        values = frame[col].array
        if not (pd.api.types.is_string_dtype(frame[col].dtype) and
                hasattr(values, "__arrow_array__")):
            continue
        arr = pa.array(values)
        try:
            arr.validate(full=True)
        except pa.ArrowInvalid as exc:
            found = re.search(r"index (\d+)", str(exc))
            row = int(found.group(1)) if found else _first_bad_utf8(arr)
            raise DatasetError("not valid UTF-8 text (re-write the column as UTF-8 strings)",
                               file=file, row=row, column=str(col)) from None


def _first_bad_utf8(arr) -> int | None:
    import pyarrow as pa
    binary = arr.view(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    for i, value in enumerate(binary.to_pylist()):
        try:
            value is None or value.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return None


def _require_columns(df: pd.DataFrame, columns, file: str) -> None:
    for col in columns:
        if col not in df.columns:
            raise DatasetError(f"required column is missing (columns present: "
                               f"{', '.join(map(str, df.columns))})", file=file, column=col)


def _check_string_column(df: pd.DataFrame, col: str, file: str, nullable: bool = False) -> None:
    values = df[col]
    if pd.api.types.is_string_dtype(values.dtype) and not values.dtype == object:
        mask = None  # a pyarrow/pandas string column holds only strings and missing values
    else:
        mask = values.map(lambda v: isinstance(v, str) or (nullable and v is None)
                          or (nullable and isinstance(v, float) and np.isnan(v)))
    if mask is not None and not bool(mask.all()):
        row = int(np.flatnonzero(~mask.to_numpy())[0])
        raise DatasetError(f"expected a string, got {type(values.iloc[row]).__name__} "
                           f"{values.iloc[row]!r}", file=file, row=row, column=col)
    if not nullable:
        missing = values.isna().to_numpy()
        if missing.any():
            raise DatasetError("missing value", file=file, row=int(np.flatnonzero(missing)[0]),
                               column=col)


def _check_ids(values: pd.Series, file: str, col: str) -> pd.Series:
    """An id column as strings, validated by :mod:`bench.data.ids` (no empty, padded or
    control-character ids; no whitespace in sticker ids; whole finite numbers in float columns)."""
    if pd.api.types.is_float_dtype(values):
        out = ids.check_float_ids(values, file, col)
    elif pd.api.types.is_integer_dtype(values):
        out = values.astype(str)
    else:
        _check_string_column(values.to_frame(), col, file)
        out = values.astype(str)
    ids.check_id_text(out, file, col, trec=col == "sticker_id")
    return out


def load_dataset(path: str | Path, on_invalid: Literal["error", "skip"] = "error") -> Dataset:
    """Load and validate a canonical dataset directory.

    ``on_invalid="skip"`` drops clicks on unknown stickers and clicks with empty queries, and
    clears ``image`` paths that leave the directory, counting them in ``Dataset.skipped`` (and in
    the warning it logs); anything structural always raises. The files are checked against
    ``dataset.json`` (:func:`bench.data.integrity.verify_files`): a stale fingerprint is
    replaced by the content's.
    """
    root = Path(path)
    try:  # is_dir() would say False ("not a directory"), pyarrow fail on the surrogates
        os.fsencode(root)
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = os.fsencode(root).decode("utf-8", "replace")  # undo surrogateescape
        except UnicodeEncodeError:
            shown = str(root)
        raise DatasetError(f"the path does not fit the file-system encoding "
                           f"{sys.getfilesystemencoding()} (from the locale): use a UTF-8 locale "
                           "(LC_ALL=C.UTF-8) or PYTHONUTF8=1", file=shown) from None
    if not root.is_dir():
        raise DatasetError("not a directory (expected a dataset directory with "
                           f"{STICKERS_FILE}, {INTERACTIONS_FILE}, {META_FILE})", file=str(root))
    meta = read_meta(root / META_FILE)
    sfile = str(root / STICKERS_FILE)
    stickers = _load_stickers(root / STICKERS_FILE)
    ifile = str(root / INTERACTIONS_FILE)
    inter = _load_interactions(root / INTERACTIONS_FILE)
    skipped: dict[str, int] = {}
    inter = _drop_invalid_clicks(inter, stickers, ifile, on_invalid, skipped)
    inter, tied = ids.order_tied_clicks(inter, ifile)  # row order never decides a split
    inter, _ = ids.cap_text(inter, ["query"], ifile)
    stickers, _ = ids.cap_text(stickers, text_columns(stickers), sfile)
    images = stickers["image"]
    stickers, image_stats = integrity.apply_path_policy(stickers, root, sfile, on_invalid,
                                                        skipped)
    meta = integrity.verify_files(root, meta, images, image_stats)
    if tied:
        meta = {**meta, "tied_clicks": tied}
    return Dataset(stickers=stickers, interactions=inter, meta=meta, root=root, skipped=skipped)


def read_meta(meta_path: Path) -> dict[str, Any]:
    """``dataset.json`` as a dict; a missing, non-UTF-8 or non-object file is a DatasetError."""
    if not meta_path.exists():
        raise DatasetError("file is missing", file=str(meta_path))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"invalid JSON ({str(exc)[:200]})", file=str(meta_path)) from None
    except OSError as exc:
        raise DatasetError(f"cannot read ({exc.strerror})", file=str(meta_path)) from None
    if not isinstance(meta, dict):
        raise DatasetError("expected a JSON object", file=str(meta_path))
    return meta


def _load_stickers(path: Path) -> pd.DataFrame:
    sfile = str(path)
    stickers = _read_parquet(path)
    _require_columns(stickers, STICKER_COLUMNS, sfile)
    stickers = stickers.reset_index(drop=True)
    stickers["sticker_id"] = _check_ids(stickers["sticker_id"], sfile, "sticker_id")
    _check_string_column(stickers, "image", sfile, nullable=True)
    dup = stickers["sticker_id"].duplicated(keep="first").to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        sid = stickers["sticker_id"].iloc[row]
        first = int(np.flatnonzero((stickers["sticker_id"] == sid).to_numpy())[0])
        raise DatasetError(f"duplicate sticker id {sid!r} (first seen at row {first}); "
                           f"{int(dup.sum())} duplicates in total", file=sfile, row=row,
                           column="sticker_id")
    for col in text_columns(stickers):
        _check_string_column(stickers, col, sfile, nullable=True)
    return stickers


def _load_interactions(path: Path) -> pd.DataFrame:
    ifile = str(path)
    inter = _read_parquet(path)
    _require_columns(inter, INTERACTION_COLUMNS, ifile)
    inter = inter.reset_index(drop=True)
    inter["user_id"] = _check_ids(inter["user_id"], ifile, "user_id")
    inter["sticker_id"] = _check_ids(inter["sticker_id"], ifile, "sticker_id")
    _check_string_column(inter, "query", ifile)
    inter["ts"] = ids.check_ts(inter["ts"], ifile)
    return inter


def _drop_invalid_clicks(inter: pd.DataFrame, stickers: pd.DataFrame, ifile: str,
                         on_invalid: str, skipped: dict[str, int]) -> pd.DataFrame:
    problems = [
        ("empty_query", inter["query"].str.strip().eq("").to_numpy(), "query",
         "empty query"),
        ("unknown_sticker",
         pd.Index(stickers["sticker_id"].to_numpy(object))
         .get_indexer(inter["sticker_id"].to_numpy(object)) < 0,
         "sticker_id", "click on a sticker id that is not in stickers.parquet"),
    ]
    drop = np.zeros(len(inter), dtype=bool)
    for key, mask, col, what in problems:
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            if on_invalid == "error":
                raise DatasetError(
                    f"{what} ({_short(inter[col].iloc[row], 80)!r}); {int(mask.sum())} such rows "
                    "in total. Fix the data or load with on_invalid='skip' (CLI: --skip-invalid) "
                    "to drop and count them", file=ifile, row=row, column=col)
            skipped[key] = int(mask.sum())
            drop |= mask
    if drop.any():
        log.warning("%s: skipped %d invalid interaction rows (%s)", ifile, int(drop.sum()),
                    ", ".join(f"{k}={v}" for k, v in skipped.items()))
        inter = inter.loc[~drop].reset_index(drop=True)
    return inter


def describe(ds: Dataset) -> dict[str, Any]:
    """Statistics of a dataset: counts, styles, history lengths, languages."""
    it = ds.interactions
    per_user = it.groupby("user_id").size()
    q = per_user.quantile([0.0, 0.25, 0.5, 0.75, 0.9, 1.0]) if len(per_user) else pd.Series(dtype=float)
    out: dict[str, Any] = {
        "name": ds.name,
        "fingerprint": ds.fingerprint,
        "stickers": int(len(ds.stickers)),
        "stickers_with_image": int(ds.stickers["image"].notna().sum()),
        "users": int(it["user_id"].nunique()),
        "clicks": int(len(it)),
        "distinct_queries": int(it["query"].nunique()),
        "text_columns": ds.text_columns,
        "languages": ds.meta.get("languages") or languages_of(it["query"]),
        "history_length": {f"p{int(k * 100)}": float(v) for k, v in q.items()},
        "simulated_users": bool(ds.meta.get("simulator")),
    }
    for col in ds.stickers.columns:
        if col.startswith("gt_"):
            vc = ds.stickers[col].value_counts()
            out[col] = {"distinct": int(len(vc)),
                        "top": {_short(k): int(v) for k, v in vc.head(10).items()}}
    if ds.skipped:
        out["skipped"] = dict(ds.skipped)
    return out


def _short(value: Any, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width - 1] + "…"
