"""PerSRV's recall pools and their caches, owned by a fitted retriever.

A :class:`RecallPool` holds the top ``pool`` stickers of distinct queries; a :class:`RecallCache`
the pools computed so far for one recall configuration (fields, boosts, BM25 parameters, pool
width, utility vector). :class:`RecallCaches` keeps the last few configurations of one fitted
PerSRV and every copy ``with_params`` derives from it (a sweep over re-rank or cluster
parameters recalls each query once). Nothing is shared between separately fitted retrievers,
so the search time of one never depends on another having run first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bench.retrieval import Request
from bench.run_context import LRUCache

#: Recall configurations kept per fitted retriever (each cache holds the pools of every query it
#: has seen: ~0.5 GB at paper scale).
RECALL_CACHE_SIZE = 2


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



class RecallCaches:
    """The recall caches of one fitted PerSRV and its ``with_params`` copies, by recall
    configuration; the least recently used of more than ``RECALL_CACHE_SIZE`` is dropped."""

    def __init__(self, size: int = RECALL_CACHE_SIZE):
        self._caches = LRUCache(size)

    def get(self, key: tuple | None) -> RecallCache:
        """The cache of recall configuration ``key`` (a fresh private one for None)."""
        if key is None:
            return RecallCache()
        cache = self._caches.get(key)
        return cache if cache is not None else self._caches.put(key, RecallCache())
