"""Ranking metrics (DESIGN §6): M-MRR@k, MRR@k, Recall@k, NDCG@k, as plain functions.

For a request with relevant set G and ranking P (best first):

- ``m_mrr``: PerSRV's multi-hit MRR, sum of 1/i over every rank i <= k with P_i in G (can exceed 1).
- ``mrr``: 1/rank of the first hit within the top k, 0 if none.
- ``recall``: |P[:k] ∩ G| / |G|.
- ``ndcg``: binary gains, DCG = sum of 1/log2(i+1) over hits; the ideal DCG fills min(|G|, k) ranks.

Conventions: a sticker repeated in a ranking counts once — later duplicates are removed *before*
cutting at k, so the top k holds k distinct stickers when the ranking has that many. An empty or
missing ranking scores 0; a k beyond the ranking's length is fine; a request with an empty relevant
set scores 0 everywhere. Values are computed per request, averaged per user, then over users
(``macro``, the reported figure); ``micro`` is the plain mean over requests.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from bench.data.splits import Requests
    from bench.retrieval import Run

METRICS = ("m_mrr", "mrr", "recall", "ndcg")
DEFAULT_KS = (1, 5, 10, 20)
ID_COLUMNS = ("qid", "user_id", "n_relevant")


def metric_name(metric: str, k: int) -> str:
    """The MLflow / column name of a metric at a cutoff (DESIGN §8): ``metric_name("mrr", 10)``
    -> ``"mrr_at_10"``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    return f"{metric}_at_{int(k)}"


def metric_names(ks: Iterable[int] = DEFAULT_KS) -> list[str]:
    """All metric column names for ``ks``, metric-major: m_mrr_at_1, m_mrr_at_5, ..., ndcg_at_20."""
    ks = _check_ks(ks)
    return [metric_name(m, k) for m in METRICS for k in ks]


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"cutoffs must be positive integers, got {list(ks)!r}")
    return out


def _top_unique(ranking: Sequence[str], k: int) -> list[str]:
    """The first k distinct items of ``ranking`` (first occurrence wins)."""
    head = dict.fromkeys(ranking[:k])
    if len(head) == k or len(ranking) <= k:  # fast path: no duplicates to skip past
        return list(head)
    return list(islice(dict.fromkeys(ranking), k))


def per_request(rankings: Mapping[Hashable, Sequence[str]],
                relevant: Mapping[Hashable, Iterable[str]],
                users: Mapping[Hashable, str] | None = None,
                ks: Iterable[int] = DEFAULT_KS) -> pd.DataFrame:
    """Metric values per request, one row per key of ``relevant`` (in its order).

    ``rankings``: qid -> sticker ids best first; qids missing here are empty rankings, qids not in
    ``relevant`` are ignored. ``users``: qid -> user id (None: each qid is its own user).
    Returns columns qid, user_id, n_relevant and one float column per :func:`metric_names`.
    """
    ks = _check_ks(ks)
    kmax = ks[-1]
    qids = list(relevant)
    n = len(qids)
    if users is not None:
        missing = [q for q in qids if q not in users]
        if missing:
            raise ValueError(f"{len(missing)} requests have no user (first: {missing[0]!r})")
    rel_sets = [r if isinstance(r, (set, frozenset)) else set(r) for r in relevant.values()]
    n_rel = np.fromiter((len(r) for r in rel_sets), dtype=np.int64, count=n)

    rows, cols = [], []
    for i, (qid, rel) in enumerate(zip(qids, rel_sets)):
        ranking = rankings.get(qid)
        if not ranking or not rel:
            continue
        if not isinstance(ranking, (list, tuple)):
            ranking = list(ranking)
        for j, sid in enumerate(_top_unique(ranking, kmax)):
            if sid in rel:
                rows.append(i)
                cols.append(j)
    # columns only as deep as the longest ranking: a k past it (k = 10^9) changes nothing and
    # must not allocate requests x k
    depth = max(1, min(kmax, max(cols, default=-1) + 1))
    hits = np.zeros((n, depth), dtype=np.float64)
    hits[rows, cols] = 1.0

    ranks = np.arange(1, depth + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    cum_rr = np.cumsum(hits / ranks, axis=1)
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * discount, axis=1)
    n_ideal = int(min(kmax, n_rel.max(initial=0)))
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, n_ideal + 2.0)))])
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    safe_rel = np.maximum(n_rel, 1)

    out: dict[str, object] = {
        "qid": qids,
        "user_id": [str(users[q]) for q in qids] if users is not None else [str(q) for q in qids],
        "n_relevant": n_rel,
    }
    values = {}
    for k in ks:
        col = min(k, depth) - 1
        values[("m_mrr", k)] = cum_rr[:, col]
        values[("mrr", k)] = np.where(first <= k, 1.0 / np.minimum(first, kmax), 0.0)
        values[("recall", k)] = np.where(n_rel > 0, cum_hits[:, col] / safe_rel, 0.0)
        idcg = ideal[np.minimum(n_rel, min(k, n_ideal))]
        values[("ndcg", k)] = np.divide(cum_dcg[:, col], idcg, out=np.zeros(n),
                                        where=idcg > 0)
    for m in METRICS:
        for k in ks:
            out[metric_name(m, k)] = values[(m, k)]
    return pd.DataFrame(out)


def _metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if any(c.startswith(f"{m}_at_") for m in METRICS)]


def per_user(per_request_df: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per user: columns user_id, n_requests, metric columns (by user_id)."""
    cols = _metric_columns(per_request_df)
    grouped = per_request_df.groupby("user_id", sort=True)
    out = grouped[cols].mean()
    out.insert(0, "n_requests", grouped.size())
    return out.reset_index()


def aggregate(per_request_df: pd.DataFrame, how: str = "macro") -> dict[str, float]:
    """Mean of every metric column: ``macro`` (mean per user, then over users — the reported
    figure) or ``micro`` (mean over requests). An empty frame gives NaN."""
    cols = _metric_columns(per_request_df)
    if how == "macro":
        means = per_user(per_request_df)[cols].mean() if len(per_request_df) else \
            per_request_df[cols].mean()
    elif how == "micro":
        means = per_request_df[cols].mean()
    else:
        raise ValueError(f"how must be 'macro' or 'micro', got {how!r}")
    return {c: float(means[c]) for c in cols}


def evaluate_run(run: "Run", requests: "Requests", ks: Iterable[int] = DEFAULT_KS
                 ) -> tuple[pd.DataFrame, dict[str, float], dict[str, float]]:
    """Evaluate an in-memory run on a split's requests: (per-request frame, macro, micro).

    Rankings are taken in the run's list order; requests the run lacks score 0. The frame's qids
    are ``requests.qids`` (the ones ``Run.save_trec`` and the qrels writer use), and it has an
    extra ``query`` column after ``user_id``.
    """
    qids = requests.qids
    rankings = {qids[r]: run.ids(r) for r in requests.requests if r in run}
    relevant = {qids[r]: requests.relevant[r] for r in requests.requests}
    users = {qids[r]: r.user_id for r in requests.requests}
    df = per_request(rankings, relevant, users, ks)
    df.insert(2, "query", [r.query for r in requests.requests])
    return df, aggregate(df, "macro"), aggregate(df, "micro")


# ------------------------------------------------------------------------------ tie-aware values

TIE_AWARE = "_tie_aware"
AS_RETURNED = "_as_returned"


def _tie_aware_one(groups: Sequence[tuple[int, int, int]], n_rel: int,
                   ks: tuple[int, ...]) -> dict[tuple[str, int], float]:
    """Expected metric values of one ranking under a uniformly random order inside each tie
    group (McSherry & Najork, ECIR 2008). ``groups``: (first 1-based position, size, relevant
    members) in rank order. Linear metrics (M-MRR, Recall, DCG) take r/n of the positions a group
    spans; MRR the expected reciprocal rank of the first relevant member."""
    out: dict[tuple[str, int], float] = {}
    if n_rel == 0:
        return {(m, k): 0.0 for m in METRICS for k in ks}
    for k in ks:
        mmrr = rec = dcg = 0.0
        for start, size, r in groups:
            if r == 0 or start > k:
                continue
            end = min(start + size - 1, k)
            share = r / size
            pos = np.arange(start, end + 1, dtype=np.float64)
            mmrr += share * float(np.sum(1.0 / pos))
            rec += share * (end - start + 1)
            dcg += share * float(np.sum(1.0 / np.log2(pos + 1.0)))
        ideal = float(np.sum(1.0 / np.log2(np.arange(2, min(n_rel, k) + 2.0))))
        out[("m_mrr", k)] = mmrr
        out[("recall", k)] = rec / n_rel
        out[("ndcg", k)] = dcg / ideal if ideal > 0 else 0.0
        rr = 0.0
        for start, size, r in groups:
            if start > k:
                break
            if r == 0:
                continue
            none_yet = 1.0  # P(no relevant member in the group's first j-1 places)
            for j in range(1, min(size, k - start + 1) + 1):
                rr += none_yet * r / (size - j + 1) / (start + j - 1)
                none_yet *= (size - j + 1 - r) / (size - j + 1)
                if none_yet <= 0:
                    break
            break  # the first group holding a relevant sticker decides MRR
        out[("mrr", k)] = rr
    return out


def tie_groups(ids: Sequence[str], groups: Sequence[int], relevant: set[str],
               tail_size: int | None = None, tail_ids=None) -> list[tuple[int, int, int]]:
    """(first position, size, relevant members) per tie group of a final list
    (:class:`bench.listing.FinalList`); the last group takes its full size when it is a fill
    group cut at depth."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or groups[i] != groups[start]:
            members = ids[start:i]
            out.append((start + 1, len(members), sum(1 for s in members if s in relevant)))
            start = i
    if out and tail_size is not None:
        first, _, _ = out[-1]
        out[-1] = (first, int(tail_size), sum(1 for s in tail_ids if s in relevant))
    return out


def per_request_tie_aware(lists: Mapping[Hashable, object], relevant: Mapping[Hashable, Iterable[str]],
                          ks: Iterable[int] = DEFAULT_KS) -> tuple[pd.DataFrame, np.ndarray]:
    """Tie-aware metric values per request, one row per key of ``relevant`` (in its order):
    columns ``<metric>_at_<k>_tie_aware``; and per request whether a tie straddles a relevant
    sticker (a group within the top max(k) holding relevant and non-relevant members).
    ``lists``: qid -> :class:`bench.listing.FinalList` (missing: empty)."""
    ks = _check_ks(ks)
    kmax = ks[-1]
    cols: dict[str, list[float]] = {metric_name(m, k) + TIE_AWARE: [] for m in METRICS for k in ks}
    straddle = []
    for qid, rel in relevant.items():
        rel = rel if isinstance(rel, (set, frozenset)) else set(rel)
        fl = lists.get(qid)
        groups = tie_groups(fl.ids, fl.groups, rel, fl.tail_size, fl.tail_ids) if fl else []
        values = _tie_aware_one(groups, len(rel), ks)
        for m in METRICS:
            for k in ks:
                cols[metric_name(m, k) + TIE_AWARE].append(values[(m, k)])
        straddle.append(any(0 < r < size and start <= kmax for start, size, r in groups))
    return pd.DataFrame(cols), np.asarray(straddle, dtype=bool)
