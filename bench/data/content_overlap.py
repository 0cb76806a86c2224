"""How often a query shares a word with a sticker's own text: measured on real human text, and
planted in the simulated beds (issue 23.2).

**Measure** (:func:`overlap_rates`): a query *overlaps* a text when they share at least one
normalised token: :class:`bench.text.Tokenizer` with English stopwords removed and Snowball
stemming (``"Sleeping"`` and ``"sleeps"`` match, ``"the"`` never counts). ``own``: the share of
queries overlapping their own item's text; ``other``: the mean share of the *other* items' texts
a query overlaps (what a text field offers to every wrong answer). Measured by
``benchmarks/content_overlap.py`` on StickerQueries (each query against the same sticker's other
human queries) and on emoji-styles' words (emojilib keywords against the CLDR label + tags).

**Plant** (:func:`plant_overlap`): the synthetic and emoji-styles builders take
``content_overlap``: ``"calibrated"`` (default: :data:`REAL_CONTENT_OVERLAP`, the real rate), a
number in [0, 1] (the target share of (item, query) pairs whose query shares a token with the
item's text), or ``"adversarial"`` (no word is added: the builders' older setting, queries
never copied from the text). Each query of an item that does not already overlap gets, with a
seeded probability chosen so the expected share hits the target, one of its content tokens'
source words appended to the item's text.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.errors import ConfigError

#: The default target share: StickerQueries (English), a human query against the same sticker's
#: other human queries: 0.442 of 7,494 queries (benchmarks/content_overlap.py; Chinese rows 0.355
#: of 591; emoji-styles' emojilib keywords against the CLDR label + tags 0.416 of 11,357).
REAL_CONTENT_OVERLAP = 0.44
MODES = ("calibrated", "adversarial")


def overlap_tokenizer():
    """The normalisation used for overlap: casefold, English stopwords out, Snowball stems."""
    from bench.text import Tokenizer
    return Tokenizer(stem="english", stopwords="english", chinese="jieba")


def resolve_overlap(value) -> float | None:
    """``content_overlap`` -> target share (None: adversarial, nothing planted)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "calibrated":
            return REAL_CONTENT_OVERLAP
        if v in ("adversarial", "none"):
            return None
        try:
            value = float(v)
        except ValueError:
            raise ConfigError(f"content_overlap = {value!r}: expected 'calibrated', "
                              "'adversarial' or a share in [0, 1]") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"content_overlap = {value!r}: expected 'calibrated', 'adversarial' "
                          "or a share in [0, 1]")
    return float(value)


def overlap_rates(queries: Sequence[Sequence[str]], texts: Sequence[str] | None = None,
                  tokenizer=None) -> dict[str, float]:
    """``own`` / ``other`` overlap shares (module doc) and the query count ``n``.

    ``queries[i]``: item i's queries. ``texts[i]``: item i's text; None = leave-one-out (each
    query against the item's *other* queries, and other items' texts = all their queries).
    """
    tok = tokenizer or overlap_tokenizer()
    q_tokens = [[set(tok(q)) for q in qs] for qs in queries]
    if texts is None:
        item_tokens = [set().union(*ts) if ts else set() for ts in q_tokens]
    else:
        item_tokens = [set(tok(t)) for t in texts]
    holders: dict[str, set[int]] = {}
    for i, ts in enumerate(item_tokens):
        for t in ts:
            holders.setdefault(t, set()).add(i)
    n_items = len(item_tokens)
    own, other, n = 0, 0.0, 0
    for i, qts in enumerate(q_tokens):
        for j, qt in enumerate(qts):
            if not qt:
                continue
            if texts is None:
                rest = set().union(*(t for k, t in enumerate(qts) if k != j)) if len(qts) > 1 \
                    else None
                if rest is None:
                    continue  # no other query of this item to compare with
                own += bool(qt & rest)
            else:
                own += bool(qt & item_tokens[i])
            hit = set().union(*(holders.get(t, set()) for t in qt)) - {i}
            other += len(hit) / max(n_items - 1, 1)
            n += 1
    return {"own": own / n if n else float("nan"), "other": other / n if n else float("nan"),
            "n": n}


def plant_overlap(texts: list[str], queries: Sequence[Sequence[str]], target: float | None,
                  seed: int, tokenizer=None) -> tuple[list[str], dict[str, float]]:
    """Item texts with query words appended so that about ``target`` of the (item, query)
    pairs overlap (module doc); returns (texts, stats: natural, target, expected and achieved
    shares, planted pairs). ``target`` None or at most the natural share: texts unchanged.
    Tokens are computed once per distinct string (items often share one query list)."""
    tok = tokenizer or overlap_tokenizer()
    cache: dict[str, frozenset[str]] = {}

    def toks(text: str) -> frozenset[str]:
        got = cache.get(text)
        if got is None:
            got = cache[text] = frozenset(tok(text))
        return got

    text_tokens = [toks(t) for t in texts]
    pairs = [(i, q) for i, qs in enumerate(queries) for q in qs if toks(q)]
    natural = np.array([bool(toks(q) & text_tokens[i]) for i, q in pairs], bool)
    r0 = float(natural.mean()) if len(pairs) else 0.0
    stats = {"natural": round(r0, 4), "target": target, "planted_pairs": 0}
    if target is None or target <= r0 or not pairs:
        stats["expected"] = stats["achieved"] = round(r0, 4)
        return list(texts), stats
    p = (target - r0) / (1 - r0)
    rng = np.random.default_rng([seed, 23])
    draw = rng.random(len(pairs))
    pick = rng.random(len(pairs))
    added: dict[int, list[str]] = {}
    for (i, q), nat, r, u in zip(pairs, natural, draw, pick):
        if nat or r >= p:
            continue
        words = [w for w in q.split() if toks(w)] or [q]
        word = words[int(u * len(words))]
        if word not in added.setdefault(i, []):
            added[i].append(word)
        stats["planted_pairs"] += 1
    out = [t + (("; " if t else "") + ", ".join(added[i]) if i in added else "")
           for i, t in enumerate(texts)]
    new_tokens = {i: toks(out[i]) for i in added}
    stats["expected"] = round(r0 + (1 - r0) * p, 4)
    stats["achieved"] = round(float(np.mean([bool(toks(q) & new_tokens.get(i, text_tokens[i]))
                                             for i, q in pairs])), 4)
    return out, stats
