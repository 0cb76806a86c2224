"""Popularity baseline: every request gets the same list, stickers by train click count."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.retrieval import Request, Run, TrainView

from bench.params import Configurable, RetrieverParams
from bench.registry import register


@register("popularity")
class PopularityRetriever(Configurable):
    """Most-clicked stickers in train first, the same list for every request (ties by sticker order).

    The score is the sticker's train click count; stickers never clicked follow with score 0,
    so the list always holds ``min(k, number of stickers)`` entries. No parameters.
    """

    name = "popularity"

    class Params(RetrieverParams):
        """No parameters."""

    def fit(self, train: TrainView) -> "PopularityRetriever":
        ids = train.stickers["sticker_id"].astype(str).to_numpy(dtype=object)
        clicks = train.clicks["sticker_id"].astype(str) if len(train.clicks) else None
        counts = np.zeros(len(ids), dtype=np.int64)
        if clicks is not None and len(ids):
            per_sticker = clicks.value_counts()
            counts = per_sticker.reindex(ids).fillna(0).to_numpy(dtype=np.int64)
        order = np.argsort(-counts, kind="stable")
        self.ranking_ = list(zip(ids[order].tolist(), counts[order].astype(float).tolist()))
        return self

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """The top-``k`` of the click-count ranking for each request."""
        if not hasattr(self, "ranking_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        top = self.ranking_[:max(0, int(k))]
        run = Run(name=self.name)
        for r in requests:
            run[r] = list(top)
        return run
