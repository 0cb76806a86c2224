"""How often does a real query share a word with a sticker's own text? (issue 23.2)

Prints the share of queries that share a normalised token (casefold, English stopwords out,
Snowball stems: :func:`bench.data.content_overlap.overlap_tokenizer`) with their own item's text
(``own``) and the mean share of other items' texts they overlap (``other``):

- StickerQueries (``../shared/data/sticker-queries``): each human query against the same
  sticker's *other* human queries (a stand-in for a human description of the sticker), English
  rows and the rows holding Chinese characters separately.
- emoji-styles (``../shared/data/emoji-styles``): each emojilib keyword against the emoji's CLDR
  label + tags (all keywords; and only keywords that are not themselves a label or tag, the
  words the ``adversarial`` bed draws queries from).

The simulated beds' ``content_overlap: calibrated`` default is the StickerQueries English ``own``
rate (:data:`bench.data.content_overlap.REAL_CONTENT_OVERLAP`). Skips a dataset that is absent.

    python benchmarks/content_overlap.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.data.content_overlap import overlap_rates, overlap_tokenizer  # noqa: E402
from bench.data.format import text_languages  # noqa: E402


def sticker_queries(path: Path) -> dict[str, dict]:
    from bench.data.sticker_queries import SEPARATORS, split_queries
    from collections import Counter
    en, zh = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            qs = split_queries(row["labeled_queries"], SEPARATORS, Counter())
            if len(qs) < 2:
                continue
            (zh if "zh" in text_languages(" ".join(qs)) else en).append(qs)
    tok = overlap_tokenizer()
    return {"sticker-queries en (vs the sticker's other queries)": overlap_rates(en, None, tok),
            "sticker-queries zh rows (vs the sticker's other queries)":
                overlap_rates(zh, None, tok)}


def emoji_words(path: Path) -> dict[str, dict]:
    texts, all_kw, held_kw = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            tags = [t.strip() for t in row["tags"].split("|") if t.strip()]
            kws = [k.strip() for k in row["keywords"].split("|") if k.strip()]
            content = {row["label"].strip().casefold(), *(t.casefold() for t in tags)}
            texts.append(row["label"].strip() + "; " + ", ".join(tags))
            all_kw.append(kws)
            held_kw.append([k for k in kws if k.casefold() not in content])
    tok = overlap_tokenizer()
    return {"emoji-styles emojilib keywords (vs label + tags)": overlap_rates(all_kw, texts, tok),
            "emoji-styles keywords not in label/tags (vs label + tags)":
                overlap_rates(held_kw, texts, tok)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args(argv)
    shared = Path(args.shared)
    rows: dict[str, dict] = {}
    sq = shared / "sticker-queries" / "sticker_queries_en_release.csv"
    em = shared / "emoji-styles" / "emoji.csv"
    for name, path, fn in (("sticker-queries", sq, sticker_queries),
                           ("emoji-styles", em, emoji_words)):
        if path.is_file():
            rows.update(fn(path))
        else:
            print(f"skipped {name}: {path} not found")
    if not rows:
        return 0
    print(f"{'text':<62} {'queries':>8} {'own':>6} {'other':>6}")
    for name, r in rows.items():
        print(f"{name:<62} {r['n']:>8} {r['own']:>6.3f} {r['other']:>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
