"""Batched BM25 scoring: query matrices, one block loop, one top-k.

A block of queries is a sparse ``queries x terms`` matrix (token counts times field boosts); its
scores are one sparse product with the ``terms x documents`` weight matrix, so only documents
matching a query term are ever touched. Blocks are bounded in the postings their product may
touch, run on threads (scipy's product and numpy's partition/sort release the GIL), and each
block's rows are cut to the best ``k`` by :func:`top_k_csr`: an O(m) partition over the scored
entries of a row, then a sort of packed (score, position) keys, so ties break by position.

:mod:`bench.bm25.pruned` computes the same top-k (bit for bit) with MaxScore pruning in numba,
skipping documents whose score bound cannot enter it; the ``bm25`` baseline uses it by default.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import scipy.sparse as sp

#: Upper bound on the postings one block's sparse product may touch (bounds its memory).
MAX_BLOCK_POSTINGS = 1 << 24
#: Most queries per block.
MAX_BLOCK_QUERIES = 1024

_PAD_KEY = np.uint64(np.iinfo(np.uint64).max)
_SIGN = np.uint32(0x80000000)


def n_threads(requested: int | None) -> int:
    """Worker threads: ``requested``, or the CPUs this process may use (at most 4)."""
    if requested is not None:
        return max(1, int(requested))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


# ------------------------------------------------------------------------------------- top-k

def pack_keys(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 keys that sort ascending as (score descending, position ascending)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    mono = np.where(bits & _SIGN, ~bits, bits | _SIGN)  # ascending uint32 <=> ascending float
    return ((~mono).astype(np.uint64) << np.uint64(32)) | positions.astype(np.uint64)


def unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions int32 with -1 for padding, scores float32 with -inf for padding)."""
    pad = keys == _PAD_KEY
    mono = ~(keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(mono & _SIGN, mono & ~_SIGN, ~mono)
    scores = bits.view(np.float32)
    pos = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64).astype(np.int32)
    pos[pad] = -1
    scores[pad] = -np.inf
    return pos, scores


def top_k_csr(block: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` stored entries of each row of a CSR block: (positions int32 (n, k) padded with
    -1, scores float32 (n, k) padded with -inf), best first, ties by position.

    A row longer than ``k`` is cut at its k-th largest score (one O(m) partition of float32
    values); only the entries at or above the cut are packed into keys, sorted per row."""
    n = block.shape[0]
    out = np.full((n, k), _PAD_KEY, dtype=np.uint64)
    if block.nnz == 0 or k == 0:
        return unpack_keys(out)
    data = np.ascontiguousarray(block.data, dtype=np.float32)
    indices, indptr = block.indices, block.indptr
    lengths = np.diff(indptr)
    big = np.flatnonzero(lengths > k)
    if big.size:
        cut = np.full(n, -np.inf, dtype=np.float32)
        for r in big.tolist():
            seg = data[indptr[r]:indptr[r + 1]]
            cut[r] = np.partition(seg, seg.size - k)[seg.size - k]
        sel = np.flatnonzero(data >= np.repeat(cut, lengths))
        row = np.searchsorted(indptr, sel, side="right") - 1
    else:
        sel = None
        row = np.repeat(np.arange(n), lengths)
    kept = np.bincount(row, minlength=n)
    keys = pack_keys(data if sel is None else data[sel], indices if sel is None else indices[sel])
    slot = np.arange(keys.size) - (np.cumsum(kept) - kept)[row]
    fits = kept[row] <= k
    out[row[fits], slot[fits]] = keys[fits]
    starts = np.cumsum(kept) - kept
    for r in np.flatnonzero(kept > k).tolist():  # ties at the cut: keep the k smallest keys
        seg = keys[starts[r]:starts[r] + kept[r]]
        out[r] = np.partition(seg, k - 1)[:k]
    out.sort(axis=1)
    return unpack_keys(out)


# ---------------------------------------------------------------------------- query matrices

def query_matrix(parts: Iterable[tuple[np.ndarray, np.ndarray, float]], n_queries: int,
                 n_terms: int, dtype=np.float32) -> sp.csr_matrix:
    """``n_queries x n_terms`` CSR from ``parts`` of (query of each token (int64), index row of
    each token (int64, -1 = not indexed: dropped), value per token); repeated (query, row)
    pairs are summed, so a token repeated in a query counts once per occurrence."""
    rows, cols, vals = [], [], []
    for query_of, term_row, value in parts:
        hit = term_row >= 0
        rows.append(query_of[hit])
        cols.append(term_row[hit])
        vals.append(np.full(int(hit.sum()), value, dtype=dtype))
    cat = (lambda xs, t: np.concatenate(xs) if xs else np.zeros(0, dtype=t))
    q = sp.csr_matrix((cat(vals, dtype), (cat(rows, np.int64), cat(cols, np.int64))),
                      shape=(n_queries, n_terms))
    q.sum_duplicates()
    return q


# -------------------------------------------------------------------------------- the blocks

def plan_blocks(cost: np.ndarray, max_queries: int = MAX_BLOCK_QUERIES,
                max_postings: int = MAX_BLOCK_POSTINGS) -> list[tuple[int, int]]:
    """Consecutive (start, stop) spans of queries, each at most ``max_queries`` long and, unless
    one query alone exceeds it, at most ``max_postings`` in summed ``cost``."""
    bounds, start, nq = [], 0, len(cost)
    cost = np.asarray(cost, dtype=np.float64).tolist()
    while start < nq:
        stop, used = start + 1, cost[start]
        while stop < nq and stop - start < max_queries and used + cost[stop] <= max_postings:
            used += cost[stop]
            stop += 1
        bounds.append((start, stop))
        start = stop
    return bounds


def search_blocks(q: sp.csr_matrix, weights: sp.csr_matrix, k: int,
                  doc_boost: np.ndarray | None = None, threads: int | None = None,
                  max_queries: int = MAX_BLOCK_QUERIES, max_postings: int = MAX_BLOCK_POSTINGS,
                  positive_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` documents of each query row of ``q`` by ``q @ weights`` (+ ``doc_boost`` of the
    matching documents): (positions int32 (n_q, k) padded with -1, scores float32 padded with
    -inf), best first, ties by position. Only documents matching a query term are candidates;
    ``positive_only`` also drops scores <= 0."""
    nq = q.shape[0]
    ids = np.full((nq, k), -1, dtype=np.int32)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    if nq == 0 or k == 0 or q.nnz == 0:
        return ids, scores
    postings = np.diff(weights.indptr).astype(np.float64)
    row_of = np.repeat(np.arange(nq), np.diff(q.indptr))
    cost = np.bincount(row_of, weights=postings[q.indices], minlength=nq)
    bounds = plan_blocks(cost, max_queries, max_postings)

    def run(span: tuple[int, int]) -> None:
        a, e = span
        block = (q[a:e] @ weights).tocsr()
        if doc_boost is not None and block.nnz:
            block.data += doc_boost[block.indices]
        if positive_only and block.nnz and (block.data <= 0).any():
            block.data[block.data <= 0] = 0
            block.eliminate_zeros()
        ids[a:e], scores[a:e] = top_k_csr(block, k)

    workers = min(len(bounds), n_threads(threads))
    if workers <= 1:
        for span in bounds:
            run(span)
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, bounds))
    return ids, scores
