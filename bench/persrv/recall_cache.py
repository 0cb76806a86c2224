"""PerSRV's recall pools and their per-process cache (shared by retrievers with identical recall).

A :class:`RecallPool` holds the top ``pool`` stickers of distinct queries; a :class:`RecallCache`
the pools computed so far for one recall configuration (fields, boosts, BM25 parameters, pool
width, utility vector: :func:`recall_cache` keys them), so ``persrv`` and
``persrv-no-personalization`` recall each query once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bench.retrieval import Request

#: Recall caches kept for reuse by other retrievers with identical recall (each holds the pools
#: of every query it has seen: ~0.5 GB at paper scale).
RECALL_CACHE_SIZE = 2
_RECALL_CACHES: "OrderedDict[tuple, RecallCache]" = OrderedDict()


@dataclass
class RecallPool:
    """Recall results of distinct queries: ``ids`` (n, pool) int32 sticker rows (-1 padding),
    ``scores`` (n, pool) float32 (-inf padding), best first; ``row_of[query]`` is its row."""

    queries: list[str]
    ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        self.row_of = {q: i for i, q in enumerate(self.queries)}

    def __len__(self) -> int:
        return len(self.queries)

    def rows(self, requests: Sequence[Request]) -> np.ndarray:
        """Pool row of each request's query (KeyError for a query not in the pool)."""
        return np.fromiter((self.row_of[r.query] for r in requests), dtype=np.int64,
                           count=len(requests))


class RecallCache:
    """Pools computed so far for one recall configuration: a list of pools + query index."""

    def __init__(self):
        self.pools: list[RecallPool] = []
        self.where: dict[str, tuple[int, int]] = {}

    def add(self, pool: RecallPool, repoint: bool = False) -> None:
        """Keep ``pool``; with ``repoint`` its queries are looked up there from now on (and
        pools no query points to any more are released)."""
        n = len(self.pools)
        self.pools.append(pool)
        for q, i in pool.row_of.items():
            if repoint:
                self.where[q] = (n, i)
            else:
                self.where.setdefault(q, (n, i))
        if repoint:
            used = {p for p, _ in self.where.values()}
            self.pools = [p if i in used else None for i, p in enumerate(self.pools)]


def digest(array: np.ndarray | None) -> str | None:
    if array is None:
        return None
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()



def recall_cache(key: tuple | None) -> RecallCache:
    """The shared cache of recall configuration ``key`` (a fresh private one for None); the
    least recently used of more than ``RECALL_CACHE_SIZE`` caches is dropped."""
    if key is None:
        return RecallCache()
    cache = _RECALL_CACHES.get(key)
    if cache is None:
        cache = _RECALL_CACHES[key] = RecallCache()
    _RECALL_CACHES.move_to_end(key)
    while len(_RECALL_CACHES) > RECALL_CACHE_SIZE:
        _RECALL_CACHES.popitem(last=False)
    return cache
