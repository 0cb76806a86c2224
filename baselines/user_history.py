"""Floor baseline ``user-history``: the user's own clicked stickers first, then ``query-lookup``.

It ignores the query for the stickers the user already clicked: on a benchmark where people
mostly re-send stickers they used before, this alone is strong. A personalised retriever should
beat it; how far it is behind tells how much of "personalisation" is re-finding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from baselines.query_lookup import QueryLookupRetriever, popularity_counts, sticker_rows
from bench.params import Configurable, RetrieverParams
from bench.registry import register
from bench.retrieval import Request, Run, TrainView


@register("user-history")
class UserHistoryRetriever(Configurable):
    """The user's own clicked stickers by the user's click count, then ``query-lookup``.

    Ranking for a request of user u with query q: the stickers u clicked in the fitting clicks,
    most clicks by u first, ties by the most recent click (``ts``, else row order) first, then by
    popularity (all fitting clicks), then corpus order; then the ``query-lookup`` ranking of q
    without those stickers (which ends in popularity), cut at k. A user without fitting clicks
    gets the ``query-lookup`` list. Score: rank-derived, ``k - position`` (order only). No
    parameters.
    """

    name = "user-history"

    class Params(RetrieverParams):
        """No parameters."""

    def fit(self, train: TrainView) -> "UserHistoryRetriever":
        self.lookup_ = QueryLookupRetriever().fit(train)
        ids, rows = sticker_rows(train)
        self.sticker_ids_ = ids
        self.history_: dict[str, np.ndarray] = {}
        if len(rows) == 0:
            return self
        clicks = train.clicks
        ts = clicks["ts"].to_numpy() if "ts" in clicks else np.arange(len(clicks))
        frame = pd.DataFrame({"user": clicks["user_id"].astype(str).to_numpy(), "row": rows,
                              "ts": ts, "order": np.arange(len(clicks))})
        frame = frame[frame["row"] >= 0]
        per = frame.groupby(["user", "row"], sort=False).agg(
            n=("row", "size"), last_ts=("ts", "max"), last_order=("order", "max")).reset_index()
        pop = popularity_counts(rows, len(ids))
        per["pop"] = pop[per["row"].to_numpy()]
        per = per.sort_values(["user", "n", "last_ts", "last_order", "pop", "row"],
                              ascending=[True, False, False, False, False, True], kind="stable")
        for user, part in per.groupby("user", sort=False):
            self.history_[user] = part["row"].to_numpy(dtype=np.int64)
        return self

    def ranked_rows(self, request: Request, k: int) -> np.ndarray:
        """Sticker rows of the top ``k`` for ``request``, best first."""
        k = max(0, min(int(k), len(self.sticker_ids_)))
        own = self.history_.get(str(request.user_id), np.zeros(0, np.int64))[:k]
        need = k - len(own)
        if need <= 0:
            return own
        rest, _ = self.lookup_.ranked_rows(request.query, need + len(own))
        rest = rest[~np.isin(rest, own)][:need]
        return np.concatenate([own, rest])

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top ``k`` per request."""
        if not hasattr(self, "history_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        run = Run(name=self.name)
        for r in requests:
            rows = self.ranked_rows(r, k)
            run[r] = list(zip(self.sticker_ids_[rows].tolist(),
                              (float(len(rows) - i) for i in range(len(rows)))))
        return run
