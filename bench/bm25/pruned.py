"""Exact BM25 top-k with MaxScore pruning (numba), bit-identical to :func:`search_blocks`.

The exhaustive path (:func:`bench.bm25.scoring.search_blocks`) scores every document matching a
query term with scipy's CSR x CSR product, which for each (query, document) sums the float32
products ``value * weight`` in the order of the query row's terms (ascending term row), in
float32. This kernel sums in that same order, in float32, so every score is bit for bit the
product's; ties break by document position as :func:`bench.bm25.scoring.top_k_csr` does.

Per query (document-at-a-time over the term-major postings, documents ascending):

- each term's upper bound ``u_t = value_t * max weight_t`` (float32); terms sorted by ``u_t``;
  the first ``p`` of them are *non-essential* while a document holding only those cannot
  beat the current k-th score ``theta``: their bound, summed in query order in float32, is
  ``<= theta`` (float rounding is monotone, so a same-order sum of larger terms is larger);
- candidates are the documents of the essential terms' postings (a merge); a candidate's
  bound (its essential contributions + the non-essential ``u_t``, summed in query order) is
  checked first; only if it is ``> theta`` are the non-essential terms looked up by binary
  search in their sorted postings and the full score summed in query order;
- documents come in ascending position, so a document scoring exactly ``theta`` loses the tie
  to every document already kept: it enters only when strictly better, and pruning a bound
  ``<= theta`` is exact (ties included). Scores ``<= 0`` never enter (``positive_only``).

Requires query values > 0 and weights >= 0 (BM25), checked by :func:`usable`. Compiled once per
machine (``cache=True``: numba's on-disk cache next to this module); :func:`warm_up` loads it.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import scipy.sparse as sp


@numba.njit(cache=True, nogil=True, inline="always")
def _worse(sa, pa, sb, pb):
    """Whether entry a ranks after entry b (lower score, or equal score, later position)."""
    return sa < sb or (sa == sb and pa > pb)


@numba.njit(cache=True, nogil=True)
def _sift_down(hs, hp, n, i):
    """Restore the heap (root = the worst kept entry) below slot ``i``."""
    while True:
        a = 2 * i + 1
        if a >= n:
            return
        b = a + 1
        w = a
        if b < n and _worse(hs[b], hp[b], hs[a], hp[a]):
            w = b
        if _worse(hs[w], hp[w], hs[i], hp[i]):
            hs[i], hs[w] = hs[w], hs[i]
            hp[i], hp[w] = hp[w], hp[i]
            i = w
        else:
            return


@numba.njit(cache=True, nogil=True)
def _sift_up(hs, hp, i):
    """Restore the heap above slot ``i`` (a new entry there)."""
    while i > 0:
        parent = (i - 1) // 2
        if _worse(hs[i], hp[i], hs[parent], hp[parent]):
            hs[i], hs[parent] = hs[parent], hs[i]
            hp[i], hp[parent] = hp[parent], hp[i]
            i = parent
        else:
            return


@numba.njit(cache=True, nogil=True)
def _one_query(indptr, indices, data, max_w, terms, values, k, out_pos, out_score):
    """Top-k of one query (``terms`` ascending, ``values`` float32) into the output rows."""
    n = terms.size
    ub = np.empty(n, np.float32)
    cur = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    for i in range(n):
        t = terms[i]
        ub[i] = values[i] * max_w[t]
        cur[i] = indptr[t]
        end[i] = indptr[t + 1]
    order = np.argsort(ub, kind="mergesort")
    rank = np.empty(n, np.int64)
    for j in range(n):
        rank[order[j]] = j
    # bound[p]: float32 sum, in query order, of the u_t of the p smallest-bound terms
    bound = np.zeros(n + 1, np.float32)
    for p in range(1, n + 1):
        s = np.float32(0.0)
        for i in range(n):
            if rank[i] < p:
                s += ub[i]
        bound[p] = s
    hs = np.empty(k, np.float32)
    hp = np.empty(k, np.int64)
    kept = 0
    theta = np.float32(0.0)
    p = 0
    big = np.int64(1) << 62
    while True:
        while p < n and bound[p + 1] <= theta:
            p += 1
        if p == n:
            break
        d = big
        for i in range(n):
            if rank[i] >= p and cur[i] < end[i] and indices[cur[i]] < d:
                d = indices[cur[i]]
        if d == big:
            break
        b = np.float32(0.0)
        for i in range(n):
            if rank[i] < p:
                b += ub[i]
            elif cur[i] < end[i] and indices[cur[i]] == d:
                b += values[i] * data[cur[i]]
        if b > theta:
            s = np.float32(0.0)
            for i in range(n):
                if rank[i] >= p:
                    if cur[i] < end[i] and indices[cur[i]] == d:
                        s += values[i] * data[cur[i]]
                elif cur[i] < end[i]:
                    lo = cur[i] + np.searchsorted(indices[cur[i]:end[i]], d)
                    cur[i] = lo
                    if lo < end[i] and indices[lo] == d:
                        s += values[i] * data[lo]
            if s > theta:
                if kept < k:
                    hs[kept] = s
                    hp[kept] = d
                    _sift_up(hs, hp, kept)
                    kept += 1
                else:  # later position: better only with a strictly higher score
                    hs[0] = s
                    hp[0] = d
                    _sift_down(hs, hp, k, 0)
                if kept == k:
                    theta = hs[0]
        for i in range(n):
            if rank[i] >= p and cur[i] < end[i] and indices[cur[i]] == d:
                cur[i] += 1
    for j in range(kept - 1, -1, -1):  # pop the worst first: fill from the back
        out_score[j] = hs[0]
        out_pos[j] = hp[0]
        hs[0] = hs[j]
        hp[0] = hp[j]
        _sift_down(hs, hp, j, 0)


def _queries(indptr, indices, data, max_w, q_indptr, q_indices, q_data, k, out_pos, out_score):
    """Every query row of ``q`` (serial)."""
    for r in range(q_indptr.size - 1):
        a, e = q_indptr[r], q_indptr[r + 1]
        if e > a:
            _one_query(indptr, indices, data, max_w, q_indices[a:e], q_data[a:e], k,
                       out_pos[r], out_score[r])


def _queries_threaded(indptr, indices, data, max_w, q_indptr, q_indices, q_data, k, out_pos,
                      out_score):
    """Every query row of ``q``, ``prange`` over rows."""
    for r in numba.prange(q_indptr.size - 1):
        a, e = q_indptr[r], q_indptr[r + 1]
        if e > a:
            _one_query(indptr, indices, data, max_w, q_indices[a:e], q_data[a:e], k,
                       out_pos[r], out_score[r])


_KERNELS = {False: numba.njit(cache=True, nogil=True)(_queries),
            True: numba.njit(cache=True, nogil=True, parallel=True)(_queries_threaded)}


def kernel(parallel: bool = False):
    """The kernel (compiled on first use, then loaded from numba's on-disk cache)."""
    return _KERNELS[bool(parallel)]


class PrunedIndex:
    """A term x document weight CSR prepared for :func:`search`: int64 ``indptr``, int32
    ``indices`` (sorted per term), float32 ``data`` and per-term maximum weight ``max_w``."""

    def __init__(self, weights: sp.csr_matrix):
        w = weights if weights.has_sorted_indices else weights.sorted_indices()
        self.source = weights
        self.shape = w.shape
        self.indptr = np.ascontiguousarray(w.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(w.indices, dtype=np.int32)
        self.data = np.ascontiguousarray(w.data, dtype=np.float32)
        self.max_w = np.zeros(w.shape[0], dtype=np.float32)
        live = np.flatnonzero(np.diff(self.indptr) > 0)
        if live.size:
            self.max_w[live] = np.maximum.reduceat(self.data, self.indptr[live])
        self.nonnegative = bool(self.data.size == 0 or self.data.min() >= 0)


def usable(index: PrunedIndex, q: sp.csr_matrix) -> bool:
    """Whether the kernel's bounds hold: weights >= 0 and query values > 0."""
    return index.nonnegative and bool(q.nnz == 0 or q.data.min() > 0)


def warm_up(parallel: bool = False) -> float:
    """Compile (first time on this machine) or load the kernel: seconds taken."""
    start = time.perf_counter()
    idx = PrunedIndex(sp.csr_matrix(np.array([[1.0, 0.5], [0.0, 2.0]], dtype=np.float32)))
    q = sp.csr_matrix(np.array([[1.0, 1.0], [0.0, 1.0]], dtype=np.float32))
    search(idx, q, 2, threads=2 if parallel else 1)
    return time.perf_counter() - start


def search(index: PrunedIndex, q: sp.csr_matrix, k: int, threads: int = 1
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` documents of each query row of ``q`` by ``q @ weights``, scores > 0 only:
    (positions int32 (n_q, k) padded with -1, scores float32 padded with -inf), best first,
    ties by position -- identical to ``search_blocks(q, weights, k, positive_only=True)``."""
    nq = q.shape[0]
    pos = np.full((nq, k), -1, dtype=np.int32)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    if nq == 0 or k == 0 or q.nnz == 0:
        return pos, scores
    if not q.has_sorted_indices:
        q = q.sorted_indices()
    parallel = threads > 1 and nq > 1
    run = kernel(parallel)
    args = (index.indptr, index.indices, index.data, index.max_w,
            np.ascontiguousarray(q.indptr, dtype=np.int64),
            np.ascontiguousarray(q.indices, dtype=np.int64),
            np.ascontiguousarray(q.data, dtype=np.float32), np.int64(k), pos, scores)
    if parallel:
        import numba
        previous = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            run(*args)
        finally:
            numba.set_num_threads(previous)
    else:
        run(*args)
    return pos, scores
