"""Builder for a StickerQueries release CSV (``sticker_id,labeled_queries``), any language.

Queries are split on ``separators`` (default: ASCII and full-width commas, and the Chinese list
marks ``、`` and ``；``), stripped, emptied items dropped and
case-insensitive duplicates removed per sticker (both counted). ``gt_pack`` is a heuristic pack:
the numeric id without its last ``pack_digits`` digits (file extension ignored; a non-numeric id
is its own pack). ``gt_topic`` is another heuristic: the sticker's query shared by the most
stickers (case-insensitive; ties: the sticker's first), so stickers sharing e.g. "thumbs up" form
a topic. The labeled queries are kept only as ``gt_queries``: retrievers learn them from
simulated clicks (style preference over ``gt_pack``), never directly. Cite: Chee et al.,
arXiv:2506.01668 (MIT).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from bench.data.format import Dataset, languages_of, text_languages, write_dataset
from bench.data.source_io import check_out_dir, copy_image, read_csv_rows, unique_queries
from bench.data.simulate import simulate_clicks, simulator_config
from bench.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

CITATION = ("Heng Er Metilda Chee, Jiayin Wang, Zhiqiang Guo, Weizhi Ma, Min Zhang. Small "
            "Stickers, Big Meanings: A Multilingual Sticker Semantic Understanding Dataset with "
            "a Gamified Approach. arXiv:2506.01668, 2025.")


def pack_of(sticker_id: str, digits: int = 3) -> str:
    """Heuristic pack id: the id without extension, minus its last ``digits`` digits."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,5}$", "", sticker_id)
    if digits > 0 and stem.isdigit() and len(stem) > digits:
        return stem[:-digits]
    return stem


def split_queries(text: str, separators: str, stats: Counter) -> list[str]:
    """Queries of one sticker: split, strip, drop empties, case-insensitive de-duplication."""
    kept = []
    for q in re.split("[" + re.escape(separators) + "]", text) if separators else [text]:
        q = q.strip()
        if not q:
            stats["empty_queries"] += 1
            continue
        kept.append(q)
    out = unique_queries(kept, stats)
    stats["queries"] += len(out)
    return out


def _csv_path(source: Path) -> Path:
    if source.is_dir():
        found = sorted(source.glob("*.csv"))
        if len(found) != 1:
            raise DatasetError(f"expected exactly one .csv file in the folder, found "
                               f"{len(found)}; pass the CSV file itself", file=str(source))
        return found[0]
    return source


#: Default query separators: ASCII/full-width commas, the Chinese enumeration comma and semicolon.
SEPARATORS = ",，、；"


def _is_cjk(text: str) -> bool:
    return "zh" in text_languages(text)


def build_sticker_queries(source: str | Path, out: str | Path, *, images: str = "",
                          pack_digits: int = 3, separators: str = SEPARATORS, seed: int = 0,
                          simulator=None) -> Dataset:
    """Build a dataset from a StickerQueries release CSV (or a folder holding one) into ``out``.

    ``images``: optional folder of sticker files named by ``sticker_id``; found files are
    linked or copied to ``out/images/``, missing ones counted (``image`` None).
    """
    path = _csv_path(Path(source))
    root = Path(out)
    check_out_dir(path.parent, root)
    if pack_digits < 0:
        raise ConfigError(f"pack_digits = {pack_digits}: expected >= 0")
    _, rows = read_csv_rows(path, ("sticker_id", "labeled_queries"))
    if not rows:
        raise DatasetError("no sticker rows (the file has only a header): an empty corpus",
                           file=str(path))
    image_dir = Path(images) if images else None
    if image_dir is not None and not image_dir.is_dir():
        raise DatasetError("image folder does not exist", file=str(image_dir))
    stats: Counter = Counter({k: 0 for k in ("queries", "empty_queries", "duplicate_queries",
                                             "stickers_without_queries", "missing_images")})
    first: dict[str, int] = {}
    records, queries = [], {}
    for line, row in rows:
        sid = row["sticker_id"].strip()
        if not sid:
            raise DatasetError("empty sticker id", file=str(path), row=line, column="sticker_id")
        if sid in first:
            raise DatasetError(f"duplicate sticker id {sid!r} (first on line {first[sid]})",
                               file=str(path), row=line, column="sticker_id")
        first[sid] = line
        qs = split_queries(row["labeled_queries"], separators, stats)
        stats["stickers_without_queries"] += not qs
        image = None
        if image_dir is not None:
            if (image_dir / sid).is_file():
                copy_image(image_dir / sid, root / "images" / sid, source=image_dir, out=root)
                stats["images_copied"] += 1
                image = f"images/{sid}"
            else:
                stats["missing_images"] += 1
        queries[sid] = qs
        records.append({"sticker_id": sid, "image": image,
                        "gt_pack": pack_of(sid, pack_digits), "gt_queries": ", ".join(qs)})
    df_count = Counter(q.casefold() for qs in queries.values() for q in qs)
    stickers = pd.DataFrame.from_records(records)
    stickers["gt_topic"] = [
        max(qs, key=lambda q: (df_count[q.casefold()], -qs.index(q))).casefold() if qs else sid
        for sid, qs in queries.items()]
    if stats["missing_images"]:
        log.warning("%s: %d sticker files not found in %s (image = None)", path,
                    stats["missing_images"], image_dir)
    all_queries = pd.Series([q for qs in queries.values() for q in qs], dtype=object)
    cjk_share = sum(_is_cjk(" ".join(qs)) for qs in queries.values()) / max(1, len(queries))
    primary = "zh" if cjk_share > 0.5 else "en"
    langs = [primary] + [x for x in languages_of(all_queries) if x != primary]
    cfg = simulator_config(simulator, seed=seed, group_col="gt_pack", topic_col="gt_topic")
    clicks = simulate_clicks(stickers, queries, cfg)
    meta = {
        "name": f"sticker-queries-{primary}",
        "version": "1",
        "source": f"StickerQueries release CSV {path} (metildachee/sticker-queries)",
        "license": "MIT (dataset card); cite the paper",
        "citation": CITATION,
        "language": primary,
        "languages": langs,
        "simulator": {**cfg.to_dict(), "stats": clicks.attrs.get("simulator_stats", {})},
        "build_stats": dict(stats, stickers_with_cjk_share=round(cjk_share, 4),
                            packs=int(stickers["gt_pack"].nunique())),
        "builder_params": dict(images=str(images), pack_digits=pack_digits,
                               separators=separators, seed=seed),
    }
    return write_dataset(root, stickers, clicks, meta)
