"""A dataset's files: the path policy for the ``image`` paths it names, its content fingerprint,
and the cheap check that the files are still the ones ``dataset.json`` describes.

- Path policy: every ``image`` path is relative and resolves (symlinks included) inside the
  dataset directory; :func:`scan_images` lists the rows that break it.
- ``fingerprint`` (sha256 of both parquet files and every referenced image, 16 hex digits) is the
  content key the feature cache uses. ``files_digest`` is a digest of the same files' names,
  sizes and modification times: recomputing it costs one ``stat`` per file, so a load compares
  it and hashes the contents only when it differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as stat_mod
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from bench.errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

STICKERS_FILE = "stickers.parquet"
INTERACTIONS_FILE = "interactions.parquet"
META_FILE = "dataset.json"
PARQUET_FILES = (STICKERS_FILE, INTERACTIONS_FILE)

def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns) if stat_mod.S_ISREG(st.st_mode) else None


def scan_images(images: Iterable, root: Path) -> tuple[list[tuple[int, str, str]],
                                                        dict[str, tuple[int, int] | None]]:
    """Check each image path (``None``/NaN: no image) against the path policy.

    Returns ``(bad, stats)``: ``bad`` = ``(row, path, reason)`` for paths that are absolute or
    resolve outside ``root`` (through ``..`` or a symlink); ``stats`` = path -> (size, mtime_ns)
    or None (missing) for the others. One ``lstat`` per image; symlinked files and folders are
    resolved with ``realpath``.
    """
    root_str = os.path.abspath(root)
    root_real = os.path.realpath(root_str)
    dir_ok: dict[str, bool] = {}
    bad: list[tuple[int, str, str]] = []
    stats: dict[str, tuple[int, int] | None] = {}
    for row, rel in enumerate(images):
        if not isinstance(rel, str) or rel in stats:
            continue
        if "\0" in rel:
            bad.append((row, rel, "contains a NUL byte"))
            continue
        unix = rel.replace("\\", "/")
        if os.path.isabs(rel) or unix.startswith("/") or (len(unix) > 1 and unix[1] == ":"):
            bad.append((row, rel, "is an absolute path"))
            continue
        norm = os.path.normpath(unix)
        if norm == ".." or norm.startswith("../"):
            bad.append((row, rel, "leaves the dataset directory"))
            continue
        parent = os.path.dirname(norm)
        if parent not in dir_ok:
            dir_ok[parent] = _inside(os.path.realpath(os.path.join(root_str, parent)), root_real)
        if not dir_ok[parent]:
            bad.append((row, rel, "is under a symlinked folder that leads outside the dataset "
                                  "directory"))
            continue
        full = os.path.join(root_str, norm)
        try:
            st = os.lstat(full)
        except (OSError, ValueError):
            stats[rel] = None
            continue
        if stat_mod.S_ISLNK(st.st_mode):
            if not _inside(os.path.realpath(full), root_real):
                bad.append((row, rel, "is a symlink to a file outside the dataset directory"))
                continue
            stats[rel] = _stat(full)
        else:
            stats[rel] = (st.st_size, st.st_mtime_ns) if stat_mod.S_ISREG(st.st_mode) else None
    return bad, stats


def files_digest(root: Path, image_stats: dict[str, tuple[int, int] | None]) -> str:
    """Digest of the names, sizes and mtimes of the parquet files and the images."""
    h = hashlib.sha256()
    entries = [(name, _stat(str(Path(root) / name))) for name in PARQUET_FILES]
    entries += sorted(image_stats.items())
    for name, st in entries:
        h.update(f"{name}\0{'missing' if st is None else f'{st[0]}:{st[1]}'}\n".encode())
    return h.hexdigest()[:16]


def fingerprint_dir(root: Path, images: Iterable) -> str:
    """Content fingerprint: sha256 of both parquet files and every referenced image file
    (paths the policy refuses are hashed as missing: their content is never read)."""
    root = Path(root)
    bad, _ = scan_images(images, root)
    refused = {path for _, path, _ in bad}
    h = hashlib.sha256()
    for name in PARQUET_FILES:
        h.update(name.encode())
        with open(root / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    for rel in sorted({str(r) for r in images if isinstance(r, str)}):
        p = root / rel
        h.update(rel.encode())
        if rel not in refused and p.is_file():
            digest = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            h.update(digest.digest())
        else:
            h.update(b"<missing>")
    return h.hexdigest()[:16]


def apply_path_policy(stickers: pd.DataFrame, root: Path, sfile: str, on_invalid: str,
                       skipped: dict[str, int]) -> tuple[pd.DataFrame, dict]:
    """Refuse (or, with ``skip``, clear and count) image paths leaving the dataset directory."""
    bad, image_stats = scan_images(stickers["image"], root)
    if not bad:
        return stickers, image_stats
    row, rel, why = bad[0]
    refused = {path for _, path, _ in bad}
    mask = stickers["image"].isin(list(refused)).to_numpy()
    if on_invalid == "error":
        raise DatasetError(f"image path {_short(rel, 80)!r} {why}; every image must be a "
                           f"relative path inside {root}. {int(mask.sum())} such rows in total; "
                           "load with on_invalid='skip' (CLI: --skip-invalid) to drop those "
                           "images and count them", file=sfile, row=row, column="image")
    stickers = stickers.copy()
    stickers.loc[mask, "image"] = None
    skipped["image_outside_dataset"] = int(mask.sum())
    log.warning("%s: %d image paths leave the dataset directory; those stickers are kept "
                "without an image (first: row %d, %r %s)", sfile, int(mask.sum()), row,
                _short(rel, 80), why)
    return stickers, image_stats


def verify_files(root: Path, meta: dict[str, Any], images: Iterable,
                 image_stats: dict) -> dict[str, Any]:
    """Check the files against ``dataset.json``: equal sizes and mtimes (``files_digest``) are
    trusted; otherwise the contents are hashed. When the content fingerprint differs from the
    recorded one (files changed, ``dataset.json`` kept), the content's fingerprint is used (so
    no feature cached for the old content is reused), ``stale_fingerprint`` holds the old one
    and a warning says so. ``dataset.json`` is refreshed when the folder is writable."""
    digest = files_digest(root, image_stats)
    if meta.get("files_digest") == digest:
        return meta
    actual = fingerprint_dir(root, images)
    recorded = meta.get("fingerprint")
    meta = {**meta, "files_digest": digest}
    if recorded and recorded != actual:
        log.warning("%s: the files changed since %s was written (fingerprint %s recorded, %s "
                    "now); using %s, so features cached for the old files are not reused. "
                    "Rebuild the dataset if the change was not intended.", root, META_FILE,
                    recorded, actual, actual)
        meta["stale_fingerprint"] = recorded
    meta["fingerprint"] = actual
    try:
        write_json_atomic(root / META_FILE, {k: v for k, v in meta.items()
                                             if k != "stale_fingerprint"})
    except OSError:
        pass  # a read-only dataset: the in-memory fingerprint is right; it is checked again
    return meta


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as pretty JSON via a temp file + rename."""
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False, default=str)
            fh.write("\n")
    _atomic_write_bytes(Path(path), _w)
