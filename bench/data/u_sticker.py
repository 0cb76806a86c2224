"""Builder for the U-Sticker dataset (Chee et al. 2025, arXiv:2502.19108): real users' sticker uses.

Published layout (``source`` = the folder): conversation files ``1.json`` ... ``67.json``, each a
JSON array or JSON lines of messages ``{message_id, from_id, reply_id, sticker, text}``
(``sticker`` a file path or empty); ``idx_to_domain.txt`` with lines ``<file_id>,<domain>``;
the sticker images (.png/.gif/.webm) in a separate folder (``images=DIR``).

Mapping: ``from_id`` is the user; every message with a sticker is a click, ordered by
``message_id`` within its file (``ts`` = file id x 10^9 + position in the file, so clicks are
globally orderable). The query is the text of the message it replies to (``reply_id``) or else
the same user's latest preceding text message in the file: ``query_from`` = ``reply`` |
``previous`` | ``reply-then-previous`` (default). Sticker uses without a query are counted and
dropped as clicks, but every sticker used in the corpus stays a sticker of the dataset (a
candidate), with or without a click. ``sticker_id`` is the sticker's file name;
``gt_domain`` the domain of the conversations it is used in most (ground truth, never seen by
retrievers). ``queries=CSV``: a StickerQueries release CSV joined on the file name (or, failing
that, the name without extension) adds its human queries as the text column
``labeled_queries``. A malformed message raises a one-line DatasetError naming file and message
index (``on_invalid="skip"`` drops and counts it instead).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from bench.data.format import Dataset, languages_of, write_dataset
from bench.data.source_io import check_out_dir, copy_image, decode_utf8, read_csv_rows
from bench.data.sticker_queries import SEPARATORS, split_queries
from bench.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

CONVERSATION = re.compile(r"^(\d+)\.json$")
DOMAINS_FILE = "idx_to_domain.txt"
QUERY_FROM = ("reply", "previous", "reply-then-previous")
#: ``ts`` = file id * FILE_TS_STRIDE + position of the message in its file
FILE_TS_STRIDE = 1_000_000_000
CITATION = ("Heng Er Metilda Chee, Jiayin Wang, Zhiqiang Guo, Weizhi Ma, Qinglang Guo, Min Zhang. "
            "U-Sticker: A Large-Scale Multi-Domain User Sticker Dataset for Retrieval and "
            "Personalization. arXiv:2502.19108, 2025 (huggingface.co/datasets/metchee/u-sticker).")


class _Bad(Exception):
    """A malformed message: (message, field or None)."""


def read_messages(path: Path) -> list[tuple[str, Any]]:
    """``(where, message)`` pairs of one conversation file, a JSON array or JSON lines.

    ``where`` is ``"message <i>"`` (0-based position in the array) or ``"line <n>"`` (JSON
    lines); broken JSON raises DatasetError naming the file and line."""
    text = decode_utf8(path.read_bytes(), path)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed JSON ({exc.msg}, column {exc.colno})", file=str(path),
                               row=exc.lineno) from None
        if not isinstance(data, list):
            raise DatasetError(f"expected a JSON array of messages, got {type(data).__name__}",
                               file=str(path))
        return [(f"message {i}", m) for i, m in enumerate(data)]
    out = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            out.append((f"line {line}", json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"malformed JSON line ({exc.msg}, column {exc.colno})",
                               file=str(path), row=line) from None
    return out


def _as_id(value: Any, field: str, optional: bool = False) -> int | str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise _Bad(f"missing {field}", field)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad(f"{field} must be an integer or string, got {type(value).__name__}", field)
    return value.strip() if isinstance(value, str) else value


def _as_text(value: Any, field: str) -> str:
    """A text field: a string, null, or a Telegram-export list of strings / {"text": ...}."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) or (isinstance(v, dict) and
                                       isinstance(v.get("text"), str)) for v in value):
        return "".join(v if isinstance(v, str) else v["text"] for v in value)
    raise _Bad(f"{field} must be a string or null, got {type(value).__name__}", field)


def check_message(msg: Any) -> tuple[int, str, int | None, str, str]:
    """``(message_id, user, reply_id, sticker path, text)`` of a valid message; raises _Bad."""
    if not isinstance(msg, dict):
        raise _Bad(f"expected a JSON object, got {type(msg).__name__}", None)
    if "message_id" not in msg or "from_id" not in msg:
        missing = "message_id" if "message_id" not in msg else "from_id"
        raise _Bad(f"missing field {missing}", missing)
    mid = _as_id(msg["message_id"], "message_id")
    reply = _as_id(msg.get("reply_id"), "reply_id", optional=True)
    try:
        mid = int(mid)
        reply = None if reply is None else int(reply)
    except ValueError:
        bad = "message_id" if not str(mid).lstrip("-").isdigit() else "reply_id"
        raise _Bad(f"{bad} must be an integer", bad) from None
    user = str(_as_id(msg["from_id"], "from_id"))
    sticker = _as_text(msg.get("sticker"), "sticker").strip()
    return mid, user, reply, sticker, _as_text(msg.get("text"), "text").strip()


def read_domains(path: Path) -> dict[int, str]:
    """``idx_to_domain.txt``: file id -> domain (DatasetError names a malformed line)."""
    out: dict[int, str] = {}
    for line, raw in enumerate(decode_utf8(path.read_bytes(), path).splitlines(), start=1):
        if not raw.strip():
            continue
        idx, sep, domain = raw.partition(",")
        if not sep or not idx.strip().isdigit() or not domain.strip():
            raise DatasetError(f"expected '<file_id>,<domain>', got {raw.strip()!r}",
                               file=str(path), row=line)
        out[int(idx)] = domain.strip()
    return out


def conversation_clicks(path: Path, file_id: int, query_from: str, on_invalid: str,
                        stats: Counter, used: list[str] | None = None
                        ) -> list[tuple[str, str, str, int]]:
    """``(user, query, sticker path, ts)`` of every sticker use with a query in one file;
    ``used`` (when given) receives the path of every sticker used, with a query or not."""
    messages, seen = [], {}
    for where, raw in read_messages(path):
        try:
            msg = check_message(raw)
            if msg[0] in seen:
                raise _Bad(f"duplicate message_id {msg[0]} (first at {seen[msg[0]]})",
                           "message_id")
        except _Bad as exc:
            if on_invalid == "skip":
                stats["malformed_messages"] += 1
                continue
            what, field = exc.args
            raise DatasetError(f"{where}: {what}", file=str(path), column=field) from None
        seen[msg[0]] = where
        messages.append(msg)
    messages.sort(key=lambda m: m[0])
    text_of = {m[0]: m[4] for m in messages if m[4]}
    last_text: dict[str, str] = {}
    out = []
    for pos, (mid, user, reply, sticker, text) in enumerate(messages):
        stats["messages"] += 1
        if sticker:
            stats["sticker_messages"] += 1
            if used is not None:
                used.append(sticker)
            query = text_of.get(reply, "") if reply is not None and query_from != "previous" \
                else ""
            if query:
                stats["queries_from_reply"] += 1
            elif query_from != "reply" and last_text.get(user):
                query = last_text[user]
                stats["queries_from_previous"] += 1
            if query:
                out.append((user, query, sticker, file_id * FILE_TS_STRIDE + pos))
            else:
                stats["sticker_messages_without_query"] += 1
        elif text:
            last_text[user] = text
    return out


def _conversation_files(src: Path) -> list[tuple[int, Path]]:
    files = sorted((int(m.group(1)), p) for p in src.iterdir()
                   if (m := CONVERSATION.match(p.name)) and p.is_file())
    if not files:
        raise DatasetError("no conversation files <n>.json (expected 1.json ... 67.json)",
                           file=str(src))
    if files[-1][0] >= (1 << 63) // FILE_TS_STRIDE:
        raise DatasetError("file id too large for a timestamp", file=str(files[-1][1]))
    return files


def _human_queries(path: str, names: list[str], stats: Counter) -> dict[str, str]:
    """sticker file name -> ", "-joined StickerQueries queries (joined on name, then stem)."""
    _, rows = read_csv_rows(path, ("sticker_id", "labeled_queries"))
    by_name, by_stem = {}, {}
    for _, row in rows:
        qs = split_queries(row["labeled_queries"], SEPARATORS, Counter())
        if qs:
            by_name[row["sticker_id"].strip()] = ", ".join(qs)
            by_stem.setdefault(Path(row["sticker_id"].strip()).stem, ", ".join(qs))
    out = {}
    for name in names:
        found = by_name.get(name) or by_stem.get(Path(name).stem)
        if found:
            out[name] = found
    stats["stickers_with_human_queries"] = len(out)
    stats["human_query_rows_unmatched"] = len(by_name) - len(set(out) & set(by_name)) \
        if out else len(by_name)
    return out


def build_u_sticker(source: str | Path, out: str | Path, *, images: str = "",
                    query_from: str = "reply-then-previous", queries: str = "",
                    on_invalid: str = "error") -> Dataset:
    """Build a dataset from a U-Sticker folder ``source`` into ``out`` (module docstring)."""
    src, root = Path(source), Path(out)
    if query_from not in QUERY_FROM:
        raise ConfigError(f"query_from = {query_from!r}: expected one of {', '.join(QUERY_FROM)}")
    if on_invalid not in ("error", "skip"):
        raise ConfigError(f"on_invalid = {on_invalid!r}: expected 'error' or 'skip'")
    if not src.is_dir():
        raise DatasetError("not a directory (expected the U-Sticker folder with 1.json ... "
                           "67.json and idx_to_domain.txt)", file=str(src))
    check_out_dir(src, root)
    image_dir = Path(images) if images else None
    if image_dir is not None and not image_dir.is_dir():
        raise DatasetError("image folder does not exist", file=str(image_dir))
    domains = read_domains(src / DOMAINS_FILE) if (src / DOMAINS_FILE).is_file() else {}
    stats: Counter = Counter({k: 0 for k in (
        "messages", "sticker_messages", "queries_from_reply", "queries_from_previous",
        "sticker_messages_without_query", "malformed_messages", "missing_images")})
    files = _conversation_files(src)
    rows, domain_uses, path_of = [], defaultdict(Counter), {}
    for file_id, path in files:
        domain = domains.get(file_id, "unknown")
        stats["files_without_domain"] += file_id not in domains
        used: list[str] = []
        for user, query, sticker, ts in conversation_clicks(path, file_id, query_from,
                                                            on_invalid, stats, used):
            rows.append((user, query, Path(sticker.replace("\\", "/")).name, ts))
        for sticker in used:  # every sticker used is in the corpus, with a query or not
            name = Path(sticker.replace("\\", "/")).name
            stats["sticker_name_collisions"] += path_of.setdefault(name, sticker) != sticker
            domain_uses[name][domain] += 1
    if not rows:
        raise DatasetError("no sticker use has a query (query_from="
                           f"{query_from}); nothing to build", file=str(src))
    clicks = pd.DataFrame(rows, columns=["user_id", "query", "sticker_id", "ts"])
    names = sorted(domain_uses)
    records = []
    for name in names:
        uses = domain_uses[name]
        records.append({"sticker_id": name,
                        "image": _copy_sticker(image_dir, root, path_of[name], name, stats),
                        "gt_domain": min(uses, key=lambda d: (-uses[d], d)),
                        "gt_path": path_of[name]})
    stickers = pd.DataFrame.from_records(records)
    if queries:
        human = _human_queries(queries, names, stats)
        stickers["labeled_queries"] = [human.get(n) for n in names]
    if stats["missing_images"]:
        log.warning("%s: %d sticker files not found in %s (image = None)", src,
                    stats["missing_images"], image_dir)
    langs = languages_of(clicks["query"]) or ["und"]
    meta = {
        "name": "u-sticker",
        "version": "1",
        "source": f"U-Sticker folder {src} ({len(files)} conversation files)",
        "license": "see the U-Sticker release (research use); cite the paper",
        "citation": CITATION,
        "language": langs[0],
        "languages": langs,
        "users": "real (from_id)",
        "ts_unit": f"file id x {FILE_TS_STRIDE} + message position in the file",
        "ts_meaning": "message order: within a conversation file, the position of the message "
                      "when the file's messages are sorted by message_id (the order they were "
                      "sent); across files, the file id (conversations carry no dates, so the "
                      "order across files is not real time)",
        "build_stats": dict(stats, files=len(files), domains=len(set(domains.values()))),
        "builder_params": dict(images=images, query_from=query_from, queries=queries,
                               on_invalid=on_invalid),
    }
    return write_dataset(root, stickers, clicks, meta)


def _copy_sticker(image_dir: Path | None, root: Path, path: str, name: str,
                  stats: Counter) -> str | None:
    """Copy the sticker file (``DIR/<path>`` or ``DIR/<name>``) to ``OUT/images/<name>``."""
    if image_dir is None:
        return None
    for candidate in (image_dir / path.lstrip("/"), image_dir / name):
        if candidate.is_file():
            copy_image(candidate, root / "images" / name, source=image_dir, out=root)
            stats["images_copied"] += 1
            return f"images/{name}"
    stats["missing_images"] += 1
    return None
