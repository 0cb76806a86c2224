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
copied from it (``content_overlap="adversarial"``). By default (``content_overlap="calibrated"``)
query words are then appended to the content until the share of (emoji, query) pairs sharing a
normalised token matches real human text (issue 23.2, :mod:`bench.data.content_overlap`).
``query_words="all"`` restores label + tags + keywords as queries.

Languages (issue 15.3): ``labels=CSV`` (columns ``hexcode``, ``label``, ``tags``, optional
``keywords``; tags split on any of ``tag_separators``) replaces the English CLDR label and tags,
in any language. The dataset's ``languages`` come from the label text (``language`` overrides);
the name is ``emoji-styles`` for English and ``emoji-styles-<language>`` otherwise. emojilib's
keywords are English: they are used only for an English label set without its own keywords.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.content_overlap import plant_overlap, resolve_overlap
from bench.data.format import Dataset, text_languages, write_dataset
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


def _split(value: str, separators: str = "|") -> list[str]:
    return [v.strip() for v in re.split("[" + re.escape(separators) + "]", value)]


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


def content_and_queries(vocab: list[str], label: str, tags: list[str], query_words: str,
                        rng: np.random.Generator, stats: dict[str, int]) -> tuple[str, list[str]]:
    """(content text, simulated query pool) of one emoji.

    ``vocab``: its de-duplicated label, tags and keywords (:func:`emoji_queries`). Content =
    label + tags. ``query_words="held-out"``: queries = vocab entries not in the content
    (case-insensitive); with none, a seeded half of the tags (at least one, never the label)
    leaves the content and becomes the queries. ``"all"``: queries = vocab.
    """
    tags = unique_queries([t for t in tags if t and t.casefold() != label.casefold()],
                          {"duplicate_queries": 0})
    in_content = {label.casefold()} | {t.casefold() for t in tags}
    queries = [q for q in vocab if q.casefold() not in in_content]
    if query_words == "held-out" and not queries and len(tags) >= 2:
        held = set(rng.permutation(len(tags))[:len(tags) // 2].tolist())
        queries = [t for i, t in enumerate(tags) if i in held]
        tags = [t for i, t in enumerate(tags) if i not in held]
        stats["emoji_with_held_out_tags"] += 1
    stats["emoji_without_held_out_words"] += not queries
    content = label + ("; " + ", ".join(tags) if tags else "")
    return content, (vocab if query_words == "all" else queries)


def read_labels_csv(path: Path, separators: str) -> dict[str, tuple[int, dict[str, str]]]:
    """A label set: hexcode -> (line, row) with ``label``, ``tags`` (``keywords`` optional).

    Tags are re-joined with ``|`` after splitting on ``separators``; DatasetError names file,
    line and column for an empty label, a malformed or duplicate hexcode.
    """
    header, rows = read_csv_rows(path, ("hexcode", "label", "tags"))
    out: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in rows:
        hx = row["hexcode"].strip().upper()
        if not HEXCODE.match(hx):
            raise DatasetError(f"malformed hexcode {row['hexcode']!r}", file=str(path), row=line,
                               column="hexcode")
        if hx in out:
            raise DatasetError(f"duplicate hexcode {hx} (first on line {out[hx][0]})",
                               file=str(path), row=line, column="hexcode")
        if not row["label"].strip():
            raise DatasetError("empty value", file=str(path), row=line, column="label")
        fixed = {"label": row["label"].strip(),
                 "tags": "|".join(t for t in _split(row["tags"], separators) if t)}
        if "keywords" in header:
            fixed["keywords"] = "|".join(t for t in _split(row["keywords"], separators) if t)
        out[hx] = (line, fixed)
    if not out:
        raise DatasetError("no label rows", file=str(path))
    return out


def apply_labels(rows: list[tuple[int, dict[str, str]]], labels: str, separators: str,
                 language: str, stats: dict[str, int]) -> tuple[list[tuple[int, dict[str, str]]],
                                                               list[str]]:
    """Rows with ``labels``' label/tags (and keywords) swapped in; emoji without a label are
    dropped and counted. Returns (rows, languages: the primary one first)."""
    if labels:
        table = read_labels_csv(Path(labels), separators)
        known = {row["hexcode"] for _, row in rows}
        stats["labels_unknown_hexcode"] = sum(hx not in known for hx in table)
        stats["emoji_without_label"] = sum(row["hexcode"] not in table for _, row in rows)
        rows = [(line, {**row, **table[row["hexcode"]][1]}) for line, row in rows
                if row["hexcode"] in table]
        if not rows:
            raise DatasetError("no emoji of emoji.csv has a label in this file (hexcodes "
                               "differ?)", file=labels)
    per_emoji = Counter((text_languages(row["label"] + " " + row["tags"]) or ["und"])[-1]
                        for _, row in rows)  # "en+zh" mixes count as zh: Latin tags are common
    primary = language.strip() or per_emoji.most_common(1)[0][0]
    found = text_languages(" ".join(row["label"] + " " + row["tags"] for _, row in rows))
    if labels and primary != "en":  # emojilib's keywords are English: only the file's own
        for _, row in rows:
            row["keywords"] = table[row["hexcode"]][1].get("keywords", "")
    return rows, [primary] + [x for x in found if x != primary]


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


def _style_names(src: Path, styles: str) -> list[str]:
    names = ([s.strip() for s in styles.split(",") if s.strip()] if styles else
             sorted(p.name for p in (src / "images").iterdir() if p.is_dir())
             if (src / "images").is_dir() else [])
    if not names:
        raise DatasetError("no style folders found", file=str(src / "images"))
    for name in names:
        if name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"styles: {name[:80]!r} is not a style folder name (no '/', '\\' "
                              "or '..')")
        if not (src / "images" / name).is_dir():
            raise DatasetError("style folder is missing", file=str(src / "images" / name))
    return names


def _check_options(topic: str, missing_images: str, content: str, query_words: str) -> None:
    if topic not in ("subgroup", "group"):
        raise ConfigError(f"topic = {topic!r}: expected 'subgroup' or 'group'")
    if missing_images not in ("skip", "keep", "error"):
        raise ConfigError(f"missing_images = {missing_images!r}: expected skip, keep or error")
    if query_words not in ("held-out", "all"):
        raise ConfigError(f"query_words = {query_words!r}: expected 'held-out' or 'all'")
    if not content or content.startswith("gt_") or content in ("sticker_id", "image",
                                                               "embedding"):
        raise ConfigError(f"content = {content!r}: expected a text column name such as "
                          "'description', or 'none'")


def build_emoji_styles(source: str | Path, out: str | Path, *, styles: str = "",
                       topic: str = "subgroup", missing_images: str = "skip", labels: str = "",
                       language: str = "", content: str = "description",
                       query_words: str = "held-out", tag_separators: str = "|、，；",
                       content_overlap: str = "calibrated", seed: int = 0,
                       simulator=None) -> Dataset:
    """Build a dataset from an emoji-styles folder ``source`` into ``out``.

    ``styles``: comma-separated style folders to use (default: every folder under ``images``).
    ``topic``: ``subgroup`` or ``group`` (what users' topic interests are over).
    ``missing_images``: ``skip`` | ``keep`` | ``error``. ``labels``: a label-set CSV in any
    language (module docstring); ``language``: its tag, detected from the text when empty.
    ``content``: the text column holding label + tags (``none``: no retriever-visible text).
    ``query_words``: ``held-out`` | ``all``. ``content_overlap``: ``calibrated`` (the real
    query-content overlap), ``adversarial`` (no query word in the content) or a share
    (:mod:`bench.data.content_overlap`). Users are simulated (``simulator``: overrides;
    style preference over ``gt_style``).
    """
    src, root = Path(source), Path(out)
    _check_options(topic, missing_images, content, query_words)
    resolve_overlap(content_overlap)  # a bad value fails before any copying
    if not src.is_dir():
        raise DatasetError("not a directory (expected an emoji-styles folder with emoji.csv "
                           "and images/<style>/)", file=str(src))
    check_out_dir(src, root)
    stats = {"punctuation_only_queries": 0, "duplicate_queries": 0, "missing_images": 0,
             "images_copied": 0, "emoji_without_queries": 0, "emoji_with_held_out_tags": 0,
             "emoji_without_held_out_words": 0}
    rows, langs = apply_labels(read_emoji_csv(src / CSV_FILE), labels, tag_separators,
                               language, stats)
    names = _style_names(src, styles)
    rng = np.random.default_rng([seed, 14])
    records, queries, per_emoji = [], {}, []
    for _, row in rows:
        vocab = emoji_queries(row, stats)
        stats["emoji_without_queries"] += not vocab
        per_emoji.append(content_and_queries(vocab, row["label"].strip(), _split(row["tags"]),
                                             query_words, rng, stats))
    texts, overlap = plant_overlap([t for t, _ in per_emoji], [q for _, q in per_emoji],
                                   resolve_overlap(content_overlap), seed)
    for (_, row), text, (_, qs) in zip(rows, texts, per_emoji):
        for style in names:
            image = _style_image(src, root, row["hexcode"], style, missing_images, stats)
            if image is False:
                continue
            sid = f"{row['hexcode']}:{style}"
            queries[sid] = qs
            records.append({"sticker_id": sid, "image": image,
                            **({} if content == "none" else {content: text}),
                            "gt_style": style, "gt_topic": row[topic].strip(),
                            "gt_group": row["group"].strip(),
                            "gt_subgroup": row["subgroup"].strip(),
                            "gt_hexcode": row["hexcode"], "gt_emoji": row.get("emoji", ""),
                            "gt_label": row["label"].strip(), "gt_content": text,
                            "gt_queries": " | ".join(qs)})
    if stats["missing_images"]:
        log.warning("%s: %d image files missing (%s)", src, stats["missing_images"],
                    "stickers skipped" if missing_images == "skip" else "kept with image=None")
    if not records:
        raise DatasetError("no stickers left (every image file is missing)", file=str(src))
    stickers = pd.DataFrame.from_records(records)
    cfg = simulator_config(simulator, seed=seed, group_col="gt_style", topic_col="gt_topic")
    clicks = simulate_clicks(stickers, queries, cfg)
    if (src / "README.md").is_file():  # keep the attribution notices with the images
        copy_image(src / "README.md", root / "SOURCE-README.md", source=src, out=root)
    meta = {
        "name": "emoji-styles" if langs[0] == "en" else f"emoji-styles-{langs[0]}",
        "version": "2",
        "source": f"emoji-styles folder {src} (emojibase-data 17.0.0, emojilib 4.0.3; "
                  "see SOURCE-README.md)" + (f"; labels {labels}" if labels else ""),
        "license": "; ".join(f"{s}: {LICENSES.get(s, 'see SOURCE-README.md')}"
                             for s in names + ["text"]),
        "licenses": {s: LICENSES.get(s, "see SOURCE-README.md") for s in names + ["text"]},
        "language": langs[0],
        "languages": langs,
        "content_field": None if content == "none" else content,
        "simulator": {**cfg.to_dict(), "stats": clicks.attrs.get("simulator_stats", {})},
        "skipped": {"missing_images": stats["missing_images"]} if missing_images == "skip"
        and stats["missing_images"] else {},
        "build_stats": stats,
        "content_overlap": overlap,
        "builder_params": dict(styles=",".join(names), topic=topic,
                               missing_images=missing_images, labels=labels, language=language,
                               content=content, query_words=query_words,
                               tag_separators=tag_separators,
                               content_overlap=content_overlap, seed=seed),
    }
    return write_dataset(root, stickers, clicks, meta)


def _style_image(src: Path, root: Path, hexcode: str, style: str, missing_images: str,
                 stats: dict[str, int]) -> str | None | bool:
    """The copied image's relative path, None (missing, kept) or False (missing, skipped)."""
    rel = f"images/{style}/{hexcode}.png"
    if (src / rel).is_file():
        copy_image(src / rel, root / rel, source=src, out=root)
        stats["images_copied"] += 1
        return rel
    stats["missing_images"] += 1
    if missing_images == "error":
        raise DatasetError(f"image file is missing for emoji {hexcode} style {style}",
                           file=str(src / rel))
    return False if missing_images == "skip" else None
