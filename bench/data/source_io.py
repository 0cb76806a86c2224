"""Reading and copying source files shared by the dataset builders: strict UTF-8 CSV, image
copies, output-folder checks, query de-duplication."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Iterable, MutableMapping, Sequence

from bench.errors import ConfigError, DatasetError


def decode_utf8(data: bytes, file: str | Path) -> str:
    """``data`` as text (a UTF-8 BOM is dropped); non-UTF-8 raises naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
                           "re-save the file as UTF-8", file=str(file), row=line) from None


def read_csv_rows(path: str | Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row dict)`` pairs of a UTF-8 RFC 4180 CSV, validated.

    Row numbers in errors are line numbers of the file (the header is line 1). Raises
    :class:`DatasetError` for a missing file, non-UTF-8 bytes, broken quoting, a missing
    required column or a row with the wrong number of fields. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError("file is missing", file=str(path))
    reader = csv.reader(io.StringIO(decode_utf8(path.read_bytes(), path), newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetError("file is empty (expected a header line)", file=str(path)) from None
    except csv.Error as exc:
        raise DatasetError(f"malformed CSV ({exc})", file=str(path), row=1) from None
    for col in required:
        if col not in header:
            raise DatasetError(f"required column is missing (header: {', '.join(header)})",
                               file=str(path), row=1, column=col)
    rows = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DatasetError(f"malformed CSV ({exc})", file=str(path),
                               row=reader.line_num) from None
        if not fields:
            continue
        if len(fields) != len(header):
            col = header[len(fields)] if len(fields) < len(header) else None
            raise DatasetError(f"expected {len(header)} fields ({', '.join(header)}), got "
                               f"{len(fields)} (row = line number in the file)", file=str(path),
                               row=reader.line_num, column=col)
        rows.append((reader.line_num, dict(zip(header, fields))))
    return header, rows


def copy_image(src: Path, dst: Path, *, source: Path, out: Path) -> None:
    """Copy ``src`` to ``dst``, replacing what is there.

    ``src`` must resolve (symlinks followed) inside the folder ``source`` and ``dst`` inside
    ``out``: a symlink or a ``..`` leading elsewhere is a DatasetError, so a build never reads
    nor deletes outside its folders. Never a hard link: the copy must not share an inode with the
    (read-only) source data, which an in-place write to the built dataset would otherwise change
    (an existing ``dst`` that is a link to ``src``, from an older build, is replaced by a copy).
    """
    inside(src, source, "source file", follow=True)
    inside(dst, out, "output file", follow=False)
    inside(dst.parent, out, "output folder", follow=True)  # no symlinked folder out of ``out``
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    shutil.copyfile(src, dst)


def inside(path: Path, folder: Path, what: str, *, follow: bool) -> None:
    """Raise a DatasetError unless ``path`` lies inside ``folder`` (``follow``: after resolving
    symlinks; else lexically, ``..`` collapsed)."""
    import os
    base = os.path.realpath(folder)
    target = os.path.realpath(path) if follow else \
        os.path.join(base, os.path.relpath(os.path.abspath(path), os.path.abspath(folder)))
    target = os.path.normpath(target)
    if target != base and not target.startswith(base.rstrip(os.sep) + os.sep):
        raise DatasetError(f"{what} leads outside {folder} (to {target}); refusing to "
                           f"{'read' if what == 'source file' else 'write'} it", file=str(path))


def check_out_dir(source: Path, out: Path) -> None:
    """Refuse to build into the source folder (or a folder holding it)."""
    s, o = source.resolve(), out.resolve()
    if o == s or o in s.parents:
        raise ConfigError(f"output directory {out} would overwrite the source {source}; "
                          "choose another --out")


def unique_queries(queries: Iterable[str], stats: MutableMapping[str, int]) -> list[str]:
    """Case-insensitively de-duplicated queries (first spelling kept), counting the drops in
    ``stats["duplicate_queries"]``."""
    out, seen = [], set()
    for q in queries:
        if q.casefold() in seen:
            stats["duplicate_queries"] += 1
            continue
        seen.add(q.casefold())
        out.append(q)
    return out
