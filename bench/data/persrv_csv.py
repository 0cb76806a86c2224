"""The PerSRV reference input format: interactions CSV ``uid,query,docid`` + sticker JSON lines.

Real users, no simulation. The interactions CSV may carry a ``timestamp``/``ts``/``time`` column
(integers are used as they are, fractional numbers and dates become milliseconds); without one,
row order is time. The metadata file holds one JSON object per line with ``docid`` (or ``id``)
and fields mapped as ``paddleocr -> ocr_text``, ``llava34b_image_desc -> description``,
``clip_cn_embedding -> embedding`` (float32 list), ``filepath -> image`` (linked or copied into
the dataset when the file exists, relative to the JSON-lines file), ``raw_queries ->
gt_raw_queries`` (it may hold queries of every split, so retrievers must not see it). Other
fields are kept: numbers as numeric columns (``clicks_per_doc`` ...), strings as text, lists and
objects as JSON text; the text ones are listed in the meta's ``metadata_text_columns`` (metadata,
not searched by PerSRV unless asked: the reference queries only OCR, queries and description).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from bench.data.format import Dataset, languages_of, text_columns, write_dataset
from bench.data.source_io import check_out_dir, copy_image, read_csv_rows
from bench.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

FIELD_MAP = {"paddleocr": "ocr_text", "llava34b_image_desc": "description",
             "clip_cn_embedding": "embedding", "filepath": "image",
             "raw_queries": "gt_raw_queries"}
ID_FIELDS = ("docid", "id", "sticker_id")
TIME_COLUMNS = ("timestamp", "ts", "time")
#: Columns the reference code searches (``paddleocr``, ``llava34b_image_desc``); every other text
#: column is listed in the dataset meta under METADATA_TEXT_COLUMNS, which PerSRV's ``text``
#: field skips unless its ``text_columns`` parameter names them.
SEARCHED_COLUMNS = ("ocr_text", "description")
METADATA_TEXT_COLUMNS = "metadata_text_columns"


# ------------------------------------------------------------------------------------ JSON lines

def _embedding(value: Any, file: str, line: int, field: str, dim: int | None) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    ok = isinstance(value, list) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise DatasetError(f"expected a non-empty list of numbers, got {str(value)[:60]!r}",
                           file=file, row=line, column=field)
    if dim is not None and len(value) != dim:
        raise DatasetError(f"embedding has {len(value)} dimensions, earlier lines have {dim}",
                           file=file, row=line, column=field)
    return np.asarray(value, dtype=np.float32)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v is not None)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def read_sticker_jsonl(path: str | Path, out: Path, images: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Sticker table from a PerSRV metadata JSON-lines file (errors name file, line, field)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("sticker metadata file is missing", file=str(path))
    image_root = Path(images) if images else path.parent
    file, records, first_line = str(path), [], {}
    counts = {"missing_images": 0, "images_copied": 0}
    dim = None
    for line, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                               f"{exc.start} of the line); re-save the file as UTF-8",
                               file=file, row=line) from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed JSON ({exc.msg} at character {exc.pos})", file=file,
                               row=line) from None
        if not isinstance(obj, dict):
            raise DatasetError(f"expected a JSON object, got {type(obj).__name__}", file=file,
                               row=line)
        key = next((k for k in ID_FIELDS if obj.get(k) not in (None, "")), None)
        if key is None:
            raise DatasetError("sticker has no id (expected one of: " + ", ".join(ID_FIELDS) + ")",
                               file=file, row=line, column=ID_FIELDS[0])
        sid = str(obj[key])
        if sid in first_line:
            raise DatasetError(f"duplicate sticker id {sid!r} (first on line {first_line[sid]})",
                               file=file, row=line, column=key)
        first_line[sid] = line
        rec: dict[str, Any] = {"sticker_id": sid, "image": None}
        for name, value in obj.items():
            if name in ID_FIELDS:
                continue
            target = FIELD_MAP.get(name, name)
            if target == "embedding":
                if value is not None:
                    rec[target] = _embedding(value, file, line, name, dim)
                    dim = len(rec[target])
            elif target == "image":
                rel = _text(value)
                src = image_root / rel if rel else None
                if src is not None and src.is_file():
                    dest = Path("images", *[p for p in PurePosixPath(rel.replace("\\", "/")).parts
                                             if p not in ("/", ".", "..")])
                    copy_image(src, out / dest, source=image_root, out=out)
                    counts["images_copied"] += 1
                    rec["image"] = dest.as_posix()
                else:
                    counts["missing_images"] += 1
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                rec[target] = value
            else:
                rec[target] = value if isinstance(value, bool) else _text(value)
        records.append(rec)
    if not records:
        raise DatasetError("no sticker records", file=file)
    df = pd.DataFrame.from_records(records)
    for col in df.columns:
        if col in ("sticker_id", "image", "embedding"):
            continue
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and np.isnan(v))}
        if str in kinds and len(kinds) > 1:  # mixed: keep everything as text
            df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                                  else str(v)).astype(object)
    if counts["missing_images"]:
        log.warning("%s: %d stickers have no image file (image = None)", file,
                    counts["missing_images"])
    return df, counts


# ------------------------------------------------------------------------------------ interactions

def _timestamps(values: list[str], lines: list[int], file: str, col: str) -> tuple[np.ndarray, str]:
    s = pd.Series(values, dtype=object)
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().all():
        if (num == np.floor(num)).all():
            from bench.data.ids import check_ts
            try:  # refuses values int64 cannot hold (no silent wrap to negative)
                return check_ts(num, file).to_numpy(), "as given"
            except DatasetError as exc:
                raise DatasetError(str(exc).split(": ", 1)[-1], file=file,
                                   row=lines[exc.row or 0], column=col) from None
        return np.round(num.to_numpy() * 1000).astype("int64"), "milliseconds (from seconds)"
    dt = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
    bad = dt.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"unreadable timestamp {values[i]!r} (expected a number or a date)",
                           file=file, row=lines[i], column=col)
    ms = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return ms.astype("int64").to_numpy(), "milliseconds since epoch"


def build_persrv_csv(source: str | Path, out: str | Path, *, stickers: str = "", images: str = "",
                     timestamp_col: str = "", on_invalid: str = "error") -> Dataset:
    """Build a dataset from PerSRV reference files: ``source`` = interactions CSV.

    ``stickers``: the metadata JSON-lines file (without it, the corpus is the clicked docids,
    without images or text). ``images``: folder that ``filepath`` is relative to (default: the
    JSON-lines file's folder). ``on_invalid="skip"`` drops (and counts) clicks with an empty
    field or an unknown docid instead of raising.
    """
    if on_invalid not in ("error", "skip"):
        raise ConfigError(f"on_invalid = {on_invalid!r}: expected 'error' or 'skip'")
    src, root = Path(source), Path(out)
    check_out_dir(src.parent, root)
    header, rows = read_csv_rows(src, ("uid", "query", "docid"))
    tcol = timestamp_col or next((c for c in TIME_COLUMNS if c in header), "")
    if tcol and tcol not in header:
        raise DatasetError(f"timestamp column is missing (header: {', '.join(header)})",
                           file=str(src), row=1, column=tcol)
    st, counts = (read_sticker_jsonl(stickers, root, images or None) if stickers
                  else (None, {}))
    known = set(st["sticker_id"]) if st is not None else None
    skipped = {"empty_field": 0, "unknown_docid": 0}
    keep = []
    for line, row in rows:
        problem = next(((c, "empty value", "empty_field") for c in ("uid", "query", "docid")
                        + ((tcol,) if tcol else ()) if not row[c].strip()), None)
        if problem is None and known is not None and row["docid"].strip() not in known:
            problem = ("docid", f"docid {row['docid']!r} is not in {stickers}", "unknown_docid")
        if problem:
            if on_invalid == "error":
                raise DatasetError(f"{problem[1]}; use on_invalid=skip to drop and count such "
                                   "rows", file=str(src), row=line, column=problem[0])
            skipped[problem[2]] += 1
            continue
        keep.append((line, row))
    if not keep:
        raise DatasetError("no valid interaction rows", file=str(src))
    lines = [ln for ln, _ in keep]
    inter = pd.DataFrame({
        "user_id": [r["uid"].strip() for _, r in keep],
        "query": [r["query"].strip() for _, r in keep],
        "sticker_id": [r["docid"].strip() for _, r in keep],
    })
    unit = "row order"
    if tcol:
        inter["ts"], unit = _timestamps([r[tcol].strip() for _, r in keep], lines, str(src), tcol)
    else:
        inter["ts"] = np.arange(len(inter), dtype=np.int64)
    if st is None:
        st = pd.DataFrame({"sticker_id": pd.unique(inter["sticker_id"]), "image": None})
    if any(skipped.values()):
        log.warning("%s: skipped %s", src, ", ".join(f"{k}={v}" for k, v in skipped.items() if v))
    meta = {
        "name": src.stem,
        "version": "1",
        "source": f"PerSRV reference format: {src}" + (f" + {stickers}" if stickers else ""),
        "license": "unknown (see the source data)",
        "languages": languages_of(inter["query"]) or ["en"],
        "users": "real",
        "ts_unit": unit,
        "skipped": {k: v for k, v in skipped.items() if v},
        "images": counts,
        METADATA_TEXT_COLUMNS: [c for c in text_columns(st) if c not in SEARCHED_COLUMNS],
        "builder_params": dict(stickers=str(stickers), images=str(images),
                               timestamp_col=tcol, on_invalid=on_invalid),
    }
    return write_dataset(root, st, inter, meta)
