"""What a retriever's list becomes before it is scored: the same rules for every retriever.

1. **Order** (the documented tie-break rule). A retriever's list is read best first. Its scores
   are quantised to :data:`SCORE_BITS` significant bits (exact binary rounding with
   ``frexp``/``ldexp``, the same on every CPU), so float noise below about 1e-6 relative — thread
   count, SIMD width, summation order — cannot reorder results. A run of consecutive entries
   with the same quantised score is a *tie group*; inside it stickers are put in corpus order
   (their row in the train view's ``stickers``), never in whatever order the retriever's own
   floating point happened to produce. Groups keep the retriever's order. Duplicates keep their
   first occurrence.
2. **Length** (``evaluation.fill``). ``popularity`` (the default) appends the popularity order
   of the fitting clicks (click count, most first; corpus order within a count), skipping
   stickers already listed, until the list holds ``depth`` stickers (or the whole corpus) — the
   same fill for every retriever, floor baselines included. Filled entries form tie groups by
   click count. ``none`` keeps lists as returned. Either way the retriever's *coverage* (the
   share of requests whose own list reached ``min(depth, corpus)``) is reported.

:class:`FinalList` holds, per request, the ordered ids, the tie group of each entry and the
full size of the last fill group (a fill group cut at ``depth`` continues past it; the
tie-aware metrics in :mod:`bench.metrics` use that size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from bench.retrieval import Request, Run

FILL_MODES = ("popularity", "none")
#: Significant bits kept of each score before ranking (2^-20 ≈ 1e-6 relative).
SCORE_BITS = 20


def quantize_scores(scores: Sequence[float] | np.ndarray, bits: int = SCORE_BITS) -> np.ndarray:
    """Scores rounded to ``bits`` significant bits (float64; NaN -> -inf, so it sorts last).
    Exact IEEE operations only: identical on every CPU."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[np.isnan(s)] = -np.inf
    finite = np.isfinite(s)
    mant, exp = np.frexp(s[finite])
    s[finite] = np.ldexp(np.round(np.ldexp(mant, bits)), exp - bits)
    return s


@dataclass
class FillOrder:
    """The popularity order of the fitting clicks over the corpus (the ``popularity`` fill)."""

    ids: list[str]                 #: every corpus sticker, most clicked first, corpus order within
    counts: np.ndarray             #: click count of ``ids[i]`` (int64)
    position: dict[str, int]       #: sticker id -> row in the corpus (the tie-break)

    @cached_property
    def count_list(self) -> list[int]:
        """``counts`` as a Python list, made once: a fill walks it from the front and stops
        (converting the whole array per request made filling O(corpus): 394 s of metrics for
        125,680 requests at 5.4M stickers)."""
        return self.counts.tolist()

    @classmethod
    def from_view(cls, stickers: "pd.DataFrame", clicks: "pd.DataFrame") -> "FillOrder":
        ids = stickers["sticker_id"].astype(str).tolist()
        position = {sid: i for i, sid in enumerate(ids)}
        counts = np.zeros(len(ids), dtype=np.int64)
        if len(clicks):
            rows = np.fromiter((position.get(s, -1) for s in clicks["sticker_id"].astype(str)),
                               dtype=np.int64, count=len(clicks))
            counts = np.bincount(rows[rows >= 0], minlength=len(ids)).astype(np.int64)
        order = np.lexsort((np.arange(len(ids)), -counts))
        return cls(ids=[ids[i] for i in order], counts=counts[order], position=position)

    def count_of(self) -> dict[str, int]:
        return dict(zip(self.ids, self.counts.tolist()))


@dataclass
class FinalList:
    """One request's scored list: ``ids`` best first, ``groups`` the tie group of each entry
    (consecutive integers from 0), ``own`` how many entries the retriever returned itself (the
    rest is fill), ``tail_size``/``tail_ids``: the last group's full membership when it is a fill
    group cut at depth (else None)."""

    ids: list[str]
    groups: list[int]
    own: int
    tail_size: int | None = None
    tail_ids: frozenset[str] | None = field(default=None, repr=False)


def order_own(ranked: Sequence[tuple[str, float]], position: dict[str, int],
              depth: int) -> tuple[list[str], list[int]]:
    """A retriever's own list in the canonical order (module doc, rule 1): (ids, tie groups),
    at most ``depth`` distinct stickers."""
    seen: dict[str, float] = {}
    for sid, score in ranked:
        sid = str(sid)
        if sid not in seen:
            seen[sid] = score
    ids = list(seen)
    if not ids:
        return [], []
    q = quantize_scores(list(seen.values()))
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    bounds = np.r_[starts, len(ids)]
    out_ids: list[str] = []
    groups: list[int] = []
    far = len(position)
    for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        members = sorted(ids[a:b], key=lambda s: (position.get(s, far), s))
        out_ids += members
        groups += [g] * len(members)
        if len(out_ids) >= depth:
            break
    return out_ids[:depth], groups[:depth]


def finalize(ranked: Sequence[tuple[str, float]], depth: int, fill: str,
             fill_order: FillOrder) -> FinalList:
    """One request: the retriever's ``ranked`` list ordered by rule 1, then filled (rule 2)."""
    ids, groups = order_own(ranked, fill_order.position, depth)
    own = len(ids)
    want = min(depth, len(fill_order.ids))
    if fill == "none" or own >= want:
        return FinalList(ids, groups, own)
    listed = set(ids)
    next_group = (groups[-1] + 1) if groups else 0
    last_count = None
    tail_members: list[str] = []
    for sid, count in zip(fill_order.ids, fill_order.count_list):
        if sid in listed:
            continue
        if len(ids) >= want:
            if count == last_count:  # the last fill group continues past depth
                tail_members.append(sid)
                continue
            break
        if last_count is not None and count != last_count:
            next_group += 1
            tail_members = []
        last_count = count
        ids.append(sid)
        groups.append(next_group)
        tail_members.append(sid)
    listed_tail = sum(1 for g in groups if g == next_group)
    if len(tail_members) > listed_tail:
        return FinalList(ids, groups, own, tail_size=len(tail_members),
                         tail_ids=frozenset(tail_members))
    return FinalList(ids, groups, own)


def finalize_run(run: "Run", requests: Sequence["Request"], depth: int, fill: str,
                 fill_order: FillOrder) -> dict["Request", FinalList]:
    """:func:`finalize` for every request (a request missing from ``run`` has an empty list)."""
    if fill not in FILL_MODES:
        raise ValueError(f"evaluation.fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    return {r: finalize(run.results.get(r, []), depth, fill, fill_order) for r in requests}


def coverage(lists: dict["Request", FinalList], depth: int, n_corpus: int) -> float:
    """Share of requests whose own list reached ``min(depth, corpus)`` entries (1.0 when there
    are no requests)."""
    want = min(depth, n_corpus)
    if not lists:
        return 1.0
    return float(np.mean([fl.own >= want for fl in lists.values()]))
