"""Random baseline: a seeded random ranking per request (the floor every retriever must beat)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from bench.retrieval import Request, Run, TrainView

from bench.params import Configurable, RetrieverParams, param
from bench.registry import register

#: Corpora up to this size draw a full permutation; larger ones draw with rejection.
_PERMUTE_MAX = 4096


def request_rng(seed: int, request: Request) -> np.random.Generator:
    """A generator that depends only on (seed, user, query): stable across processes and batches."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{request.user_id}\x1f{request.query}"
                             .encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def sample_positions(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``min(k, n)`` distinct positions in ``range(n)``; the list for k is a prefix of the list
    for any larger k (the draws do not depend on k). O(k) for large n."""
    k = max(0, min(int(k), n))
    if k == 0:
        return np.array([], dtype=np.int64)
    if n <= _PERMUTE_MAX:
        return rng.permutation(n)[:k]
    draws = np.empty(0, dtype=np.int64)
    chunk = 64
    while True:
        draws = np.concatenate([draws, rng.integers(0, n, size=chunk)])
        uniq, first = np.unique(draws, return_index=True)
        if len(uniq) >= k:
            return draws[np.sort(first)][:k]
        chunk *= 2


@register("random")
class RandomRetriever(Configurable):
    """Seeded random ranking per request, deterministic given seed, user and query.

    ``seed``: the base seed; each request's ranking comes from a generator seeded by a hash of
    (seed, user_id, query), so the batch a request is searched in never changes its list.
    Scores are 1/rank.
    """

    name = "random"

    class Params(RetrieverParams):
        seed: int = param(0, ge=0, refit="search", description="base seed of every request's order")

    def fit(self, train: TrainView) -> "RandomRetriever":
        self.sticker_ids_ = train.stickers["sticker_id"].astype(str).to_numpy(dtype=object)
        return self

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """``min(k, corpus size)`` distinct random stickers per request."""
        if not hasattr(self, "sticker_ids_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        n = len(self.sticker_ids_)
        run = Run(name=self.name)
        for r in requests:
            pos = sample_positions(request_rng(self.seed, r), n, k)
            run[r] = [(sid, 1.0 / rank) for rank, sid in
                      enumerate(self.sticker_ids_[pos].tolist(), start=1)]
        return run
