"""Builder for an emoji-styles folder: ``emoji.csv`` + ``images/<style>/<hexcode>.png``.

One sticker per (emoji, style): ``sticker_id`` ``<hexcode>:<style>``, ``gt_style`` the style,
``gt_topic`` the emoji's subgroup (or group). Images are copied into
``OUT/images/<style>/<hexcode>.png`` so the dataset is self-contained. A missing image file is
counted and, by default, its sticker skipped (``missing_images="keep"`` keeps it with
``image=None``; ``"error"`` raises).

Content and queries (issue 14.5): the emoji's human label and CLDR tags are a retriever-visible
text column (``content``, default ``description``: what a perfect VLM description would say, read
by PerSRV's description field and by bm25/dense-text ``fields=all``). The simulated users' queries
are drawn only from words *not* in that field (``query_words="held-out"``): the emojilib keywords
that are neither the label nor a tag, and, for an emoji without such a keyword, a seeded half of
its tags, taken out of the content field. So a test query is matched through content, never
copied from it. ``query_words="all"`` restores label + tags + keywords as queries.

Languages (issue 15.3): ``labels=CSV`` (columns ``hexcode``, ``label``, ``tags``, optional
``keywords``; tags split on any of ``tag_separators``) replaces the English CLDR label and tags,
in any language. The dataset's ``languages`` come from the label text (``language`` overrides);
the name is ``emoji-styles`` for English and ``emoji-styles-<language>`` otherwise. emojilib's
keywords are English: they are used only for an English label set without its own keywords.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pandas as pd

from bench.data.format import Dataset, write_dataset
from bench.data.source_io import check_out_dir, copy_image, read_csv_rows, unique_queries
from bench.data.simulate import simulate_clicks, simulator_config
from bench.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

CSV_FILE = "emoji.csv"
REQUIRED = ("hexcode", "label", "group", "subgroup", "tags", "keywords")
HEXCODE = re.compile(r"^[0-9A-F]{2,6}(-[0-9A-F]{2,6})*$")
#: per-style licenses, from the emoji-styles README (styles not listed: see the source README)
LICENSES = {
    "noto": "Apache-2.0 (Noto Emoji, Copyright Google LLC)",
    "twemoji": "CC-BY-4.0 (Twemoji graphics, Copyright Twitter, Inc. and other contributors)",
    "openmoji": "CC-BY-SA-4.0 (All emojis designed by OpenMoji - the open-source emoji and "
                "icon project; Groß, Utz & The OpenMoji Contributors)",
    "fluent-3d": "MIT (Fluent Emoji, Copyright (c) Microsoft Corporation; repackaged by LobeHub)",
    "text": "MIT (emojibase-data, Miles Johnson; emojilib, Mu-An Chiou); CLDR annotations "
            "under the Unicode License v3",
}


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split("|")]


def emoji_queries(row: dict[str, str], stats: dict[str, int]) -> list[str]:
    """Label, tags, keywords: stripped, without punctuation-only items, case-insensitively
    de-duplicated (first spelling kept); drops are counted in ``stats``."""
    kept = []
    for q in [row["label"].strip()] + _split(row["tags"]) + _split(row["keywords"]):
        if not q:
            continue
        if not any(ch.isalnum() for ch in q):
            stats["punctuation_only_queries"] += 1
            continue
        kept.append(q)
    return unique_queries(kept, stats)


def read_emoji_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Validated rows of ``emoji.csv`` (DatasetError names file, line and column)."""
    _, rows = read_csv_rows(path, REQUIRED)
    first: dict[str, int] = {}
    for line, row in rows:
        for col in ("hexcode", "label", "group", "subgroup"):
            if not row[col].strip():
                raise DatasetError("empty value", file=str(path), row=line, column=col)
        hx = row["hexcode"].strip().upper()
        if not HEXCODE.match(hx):
            raise DatasetError(f"malformed hexcode {row['hexcode']!r} (expected e.g. 1F600 or "
                               "1F468-200D-1F4BB)", file=str(path), row=line, column="hexcode")
        if hx in first:
            raise DatasetError(f"duplicate hexcode {hx} (first on line {first[hx]})",
                               file=str(path), row=line, column="hexcode")
        first[hx] = line
        row["hexcode"] = hx
    if not rows:
        raise DatasetError("no emoji rows", file=str(path))
    return rows


def build_emoji_styles(source: str | Path, out: str | Path, *, styles: str = "",
                       topic: str = "subgroup", missing_images: str = "skip", seed: int = 0,
                       simulator=None) -> Dataset:
    """Build a dataset from an emoji-styles folder ``source`` into ``out``.

    ``styles``: comma-separated style folders to use (default: every folder under ``images``).
    ``topic``: ``subgroup`` or ``group`` (what users' topic interests are over).
    ``missing_images``: ``skip`` | ``keep`` | ``error``. Users are simulated (``simulator``:
    overrides; style preference over ``gt_style``).
    """
    src, root = Path(source), Path(out)
    if topic not in ("subgroup", "group"):
        raise ConfigError(f"topic = {topic!r}: expected 'subgroup' or 'group'")
    if missing_images not in ("skip", "keep", "error"):
        raise ConfigError(f"missing_images = {missing_images!r}: expected skip, keep or error")
    if not src.is_dir():
        raise DatasetError("not a directory (expected an emoji-styles folder with emoji.csv "
                           "and images/<style>/)", file=str(src))
    check_out_dir(src, root)
    rows = read_emoji_csv(src / CSV_FILE)
    names = ([s.strip() for s in styles.split(",") if s.strip()] if styles else
             sorted(p.name for p in (src / "images").iterdir() if p.is_dir())
             if (src / "images").is_dir() else [])
    if not names:
        raise DatasetError("no style folders found", file=str(src / "images"))
    for name in names:
        if not (src / "images" / name).is_dir():
            raise DatasetError("style folder is missing", file=str(src / "images" / name))
    stats = {"punctuation_only_queries": 0, "duplicate_queries": 0, "missing_images": 0,
             "images_copied": 0, "emoji_without_queries": 0}
    records, queries = [], {}
    for _, row in rows:
        qs = emoji_queries(row, stats)
        stats["emoji_without_queries"] += not qs
        for style in names:
            rel = f"images/{style}/{row['hexcode']}.png"
            image: str | None = rel
            if (src / rel).is_file():
                copy_image(src / rel, root / rel)
                stats["images_copied"] += 1
            else:
                stats["missing_images"] += 1
                if missing_images == "error":
                    raise DatasetError(f"image file is missing for emoji {row['hexcode']} "
                                       f"style {style}", file=str(src / rel))
                if missing_images == "skip":
                    continue
                image = None
            sid = f"{row['hexcode']}:{style}"
            queries[sid] = qs
            records.append({"sticker_id": sid, "image": image, "gt_style": style,
                            "gt_topic": row[topic].strip(), "gt_group": row["group"].strip(),
                            "gt_subgroup": row["subgroup"].strip(),
                            "gt_hexcode": row["hexcode"], "gt_emoji": row.get("emoji", ""),
                            "gt_label": row["label"].strip(), "gt_queries": " | ".join(qs)})
    if stats["missing_images"]:
        log.warning("%s: %d image files missing (%s)", src, stats["missing_images"],
                    "stickers skipped" if missing_images == "skip" else "kept with image=None")
    if not records:
        raise DatasetError("no stickers left (every image file is missing)", file=str(src))
    stickers = pd.DataFrame.from_records(records)
    cfg = simulator_config(simulator, seed=seed, group_col="gt_style", topic_col="gt_topic")
    clicks = simulate_clicks(stickers, queries, cfg)
    if (src / "README.md").is_file():  # keep the attribution notices with the images
        shutil.copyfile(src / "README.md", root / "SOURCE-README.md")
    meta = {
        "name": "emoji-styles",
        "version": "1",
        "source": f"emoji-styles folder {src} (emojibase-data 17.0.0, emojilib 4.0.3; "
                  "see SOURCE-README.md)",
        "license": "; ".join(f"{s}: {LICENSES.get(s, 'see SOURCE-README.md')}"
                             for s in names + ["text"]),
        "licenses": {s: LICENSES.get(s, "see SOURCE-README.md") for s in names + ["text"]},
        "languages": ["en"],
        "simulator": {**cfg.to_dict(), "stats": clicks.attrs.get("simulator_stats", {})},
        "skipped": {"missing_images": stats["missing_images"]} if missing_images == "skip"
        and stats["missing_images"] else {},
        "build_stats": stats,
        "builder_params": dict(styles=",".join(names), topic=topic,
                               missing_images=missing_images, seed=seed),
    }
    return write_dataset(root, stickers, clicks, meta)
