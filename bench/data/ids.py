"""Load-time rules for ids, timestamps and tied clicks (used by :func:`bench.data.format.load_dataset`).

- **Ids** (``sticker_id``, ``user_id``) are written to TREC run/qrels files and the requests TSV,
  which split on whitespace / tabs and strip lines. So an id must not be empty or whitespace-only,
  must not start or end with whitespace (``"u1 "`` would be read back as ``"u1"``: one user in
  ``evaluate``, two in the run), and must not hold control characters; a ``sticker_id`` may not
  hold any whitespace (a TREC line cannot carry it). Float id columns must hold finite whole
  numbers within int64 (``inf`` and ``1e300`` are refused). No escaping: refused ids name the
  file, row and column.
- **Timestamps** must fit int64: an unsigned column over 2**63 - 1 or a float column outside
  [-2**63, 2**63) is refused instead of wrapping negative.
- **Long text**: every text cell (queries and sticker text columns) is cut at
  :data:`MAX_TEXT_CHARS` characters, with a warning counting the cells per column; a 10 MB cell
  would otherwise cost gigabytes once tokenized and indexed.
- **Ties**: clicks of one user with the same ``ts`` are ordered by ``(query, sticker_id)``, so
  the split (a stable sort by user and ts) does not depend on the file's row order; their number
  is logged as a warning and kept in ``meta["tied_clicks"]``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bench.errors import DatasetError

log = logging.getLogger(__name__)

_INT64_LIMIT = 2.0 ** 63
#: Longest text cell kept (characters); longer ones are cut, counted and warned about.
MAX_TEXT_CHARS = 10_000
#: Canonical order of clicks that share (user_id, ts).
TIE_ORDER = ("user_id", "ts", "query", "sticker_id")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_float_ids(values: pd.Series, file: str, col: str) -> pd.Series:
    """A float id column as strings of whole numbers; NaN, infinities, fractions and values
    outside int64 are a :class:`DatasetError` naming the row."""
    arr = values.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (arr != np.floor(arr)) | (np.abs(arr) >= _INT64_LIMIT)
    if bad.any():
        row = _first(bad)
        raise DatasetError(f"expected a string id (or a whole number), got {values.iloc[row]!r}",
                           file=file, row=row, column=col)
    return values.astype("int64").astype(str)


def check_id_text(values: pd.Series, file: str, col: str, *, trec: bool) -> None:
    """Refuse ids that the TREC / TSV files cannot carry (see the module doc). ``trec``: the
    column goes into TREC lines (no whitespace at all)."""
    s = values.astype(str)
    rules = [
        (s.str.strip().eq(""), "empty or whitespace-only id"),
        (s.ne(s.str.strip()), "id starts or ends with whitespace (the TREC/TSV files would read "
                              "it back without it, merging it with another id)"),
        (s.str.contains(r"[\x00-\x1f\x7f-\x9f]", regex=True), "id holds a control character"),
    ]
    if trec:
        rules.append((s.str.contains(r"\s", regex=True),
                      "id holds whitespace, which a TREC run/qrels line cannot carry"))
    for mask, what in rules:
        bad = mask.to_numpy(dtype=bool)
        if bad.any():
            row = _first(bad)
            raise DatasetError(f"{what}: {s.iloc[row][:80]!r}; {int(bad.sum())} such rows. "
                               "Clean the ids (e.g. strip them, replace spaces with '_')",
                               file=file, row=row, column=col)


def check_ts(ts: pd.Series, file: str) -> pd.Series:
    """``ts`` as int64; values int64 cannot hold (unsigned over 2**63 - 1, floats out of range,
    NaN, fractions, non-numbers) are a :class:`DatasetError` naming the row."""
    if pd.api.types.is_unsigned_integer_dtype(ts):
        bad = ts.to_numpy() > np.iinfo(np.int64).max
        if bad.any():
            row = _first(bad)
            raise DatasetError(f"timestamp {ts.iloc[row]} does not fit int64 (max 2**63 - 1); "
                               "it would wrap negative", file=file, row=row, column="ts")
        return ts.astype("int64")
    if pd.api.types.is_integer_dtype(ts):
        return ts.astype("int64")
    if pd.api.types.is_float_dtype(ts):
        arr = ts.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(arr) | (arr != np.floor(arr)) | (arr >= _INT64_LIMIT) | \
                (arr < -_INT64_LIMIT)
        if not bad.any():
            return ts.astype("int64")
        row = _first(bad)
        raise DatasetError(f"expected an integer timestamp within int64, got {ts.iloc[row]!r}",
                           file=file, row=row, column="ts")
    raise DatasetError(f"expected an integer timestamp (int64), column has dtype {ts.dtype}; "
                       f"first value {ts.iloc[0] if len(ts) else None!r}", file=file, row=0,
                       column="ts")


def order_tied_clicks(inter: pd.DataFrame, file: str) -> tuple[pd.DataFrame, int]:
    """``inter`` with the clicks that share (user_id, ts) put in :data:`TIE_ORDER` (the other
    rows keep their order), and how many clicks are tied (0: the frame is returned as is)."""
    tied = inter.duplicated(["user_id", "ts"], keep=False).to_numpy()
    n = int(tied.sum())
    if not n:
        return inter, 0
    ordered = inter.sort_values(list(TIE_ORDER), kind="mergesort").reset_index(drop=True)
    log.warning("%s: %d clicks share a timestamp with another click of the same user; they are "
                "ordered by (ts, query, sticker_id), not by row order", file, n)
    return ordered, n


def cap_text(frame: pd.DataFrame, columns: list[str], file: str) -> tuple[pd.DataFrame, int]:
    """``frame`` with every cell of ``columns`` longer than :data:`MAX_TEXT_CHARS` cut there, and
    the number of cells cut (0: the frame is returned as is)."""
    total = 0
    for col in columns:
        values = frame[col]
        lengths = values.str.len()
        long = (lengths > MAX_TEXT_CHARS).fillna(False).to_numpy(dtype=bool)
        if not long.any():
            continue
        if not total:
            frame = frame.copy()
        frame.loc[long, col] = values[long].str.slice(0, MAX_TEXT_CHARS)
        total += int(long.sum())
        log.warning("%s: %d cells of column %r are longer than %d characters (the longest: %d, "
                    "row %d); cut to %d", file, int(long.sum()), col, MAX_TEXT_CHARS,
                    int(lengths.max()), int(np.argmax(lengths.fillna(0).to_numpy())),
                    MAX_TEXT_CHARS)
    return frame, total
