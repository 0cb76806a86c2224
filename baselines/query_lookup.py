"""Floor baseline ``query-lookup``: stickers clicked under this exact query string, then popularity.

A lookup table, no text matching: it tells how much of a benchmark is answered by remembering
which sticker was clicked under which query in the fitting clicks. A content or personalised
retriever that does not beat it has learnt nothing the click log does not already say.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from bench.params import Configurable, RetrieverParams
from bench.registry import register
from bench.retrieval import Request, Run, TrainView


def lookup_query(query) -> str | None:
    """The key a query is looked up under: the exact string, as the historical-query field of
    PerSRV and ``bm25`` stores it (``str(query)``, no case folding, no whitespace change); None
    for a missing or blank query, which that field drops too."""
    if query is None or (isinstance(query, float) and query != query):
        return None
    text = str(query)
    return text if text.strip() else None


def sticker_rows(train: TrainView) -> tuple[np.ndarray, np.ndarray]:
    """(sticker ids as str objects, the row in ``train.stickers`` of each click's sticker; -1 for
    a click on a sticker outside the corpus)."""
    ids = train.stickers["sticker_id"].astype(str).to_numpy(dtype=object)
    if len(train.clicks) == 0:
        return ids, np.zeros(0, dtype=np.int64)
    rows = pd.Index(ids).get_indexer(train.clicks["sticker_id"].astype(str))
    return ids, rows.astype(np.int64)


def popularity_counts(rows: np.ndarray, n_stickers: int) -> np.ndarray:
    """Fitting clicks per sticker (int64, ``n_stickers``), clicks outside the corpus ignored."""
    return np.bincount(rows[rows >= 0], minlength=n_stickers).astype(np.int64)


@register("query-lookup")
class QueryLookupRetriever(Configurable):
    """Stickers clicked under the exact query in the fitting clicks (most first), then popularity.

    Ranking for a request with query q: the stickers clicked under q, by their clicks under q;
    ties by their total fitting clicks (popularity), then corpus order; then every other sticker
    by popularity (ties by corpus order), so the list always holds ``min(k, stickers)`` entries.
    The query key is the exact string (see :func:`lookup_query`). Score:
    ``clicks under q + popularity / (max popularity + 1)`` (order-preserving: a hit always
    scores >= 1, a fill < 1). The user is ignored. No parameters.
    """

    name = "query-lookup"

    class Params(RetrieverParams):
        """No parameters."""

    def fit(self, train: TrainView) -> "QueryLookupRetriever":
        ids, rows = sticker_rows(train)
        self.sticker_ids_ = ids
        pop = popularity_counts(rows, len(ids))
        self.tiebreak_ = pop / (pop.max(initial=0) + 1.0)               # in [0, 1)
        self.popular_ = np.lexsort((np.arange(len(ids)), -pop))         # popularity order
        self.lookup_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if len(rows):
            keys = [lookup_query(q) for q in train.clicks["query"].tolist()]
            frame = pd.DataFrame({"query": keys, "row": rows})
            frame = frame[frame["query"].notna() & (frame["row"] >= 0)]
            counts = frame.groupby(["query", "row"], sort=False).size()
            for query, part in counts.groupby(level=0, sort=False):
                hit_rows = part.index.get_level_values(1).to_numpy(dtype=np.int64)
                score = part.to_numpy(dtype=np.float64) + self.tiebreak_[hit_rows]
                order = np.lexsort((hit_rows, -score))
                self.lookup_[query] = (hit_rows[order], score[order])
        return self

    def ranked_rows(self, query, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sticker rows, scores) of the top ``k`` for ``query``, best first."""
        k = max(0, min(int(k), len(self.sticker_ids_)))
        hit_rows, hit_scores = self.lookup_.get(lookup_query(query),
                                                (np.zeros(0, np.int64), np.zeros(0)))
        hit_rows, hit_scores = hit_rows[:k], hit_scores[:k]
        need = k - len(hit_rows)
        if need <= 0:
            return hit_rows, hit_scores
        fill = self.popular_[:need + len(hit_rows)]
        fill = fill[~np.isin(fill, hit_rows)][:need]
        return (np.concatenate([hit_rows, fill]),
                np.concatenate([hit_scores, self.tiebreak_[fill]]))

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top ``k`` per request (one lookup per distinct query)."""
        if not hasattr(self, "lookup_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        run = Run(name=self.name)
        done: dict[str, list[tuple[str, float]]] = {}
        for r in requests:
            if r.query not in done:
                rows, scores = self.ranked_rows(r.query, k)
                done[r.query] = list(zip(self.sticker_ids_[rows].tolist(),
                                         scores.astype(float).tolist()))
            run[r] = list(done[r.query])
        return run
