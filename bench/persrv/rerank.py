"""PerSRV's personalised re-rank of a recall pool toward the user's style clusters (DESIGN §7).

**Re-rank** (:func:`rerank`). For a request of a user with clusters and a pooled sticker with
unit embedding e, the centroids c whose radius covers it (``1 - cos(e, c) <= radius``) each give
``score * (1 + w cos(e, c))`` (``mode="multiply"``) or ``score + w cos(e, c)`` (``"sum"``); the best
is kept; a sticker no centroid covers keeps its score. The result is exactly the top ``k`` of the
fully re-ranked pool (ties by pool position), but only pooled stickers that can reach it are
scored: a covered sticker has ``cos >= 1 - (user's largest radius)``, which bounds every new score
between a lower and an upper bound. Candidates are the stickers whose upper bound reaches the
k-th largest lower bound; the first ``STAGE_ONE`` of them per request are scored, the k-th best
of those real scores raises the threshold, and only the remaining candidates whose upper bound
reaches it are scored next; the top k is then taken over the scored entries only (left-aligned),
never over the whole pool width. Pools must come best first (rows of users without clusters are
returned as their first k).

``never_lower=True`` (the reference code's rule) keeps ``max(score, best)``: the re-rank only
ever raises a score. The bounds above still hold (they always include the unchanged score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.persrv.clustering import UserClusters, inverse_norms, single_threaded_blas
from bench.persrv.fields import n_threads as resolve_threads
from bench.persrv.fields import pack_keys, unpack_keys

MODES = ("multiply", "sum")
#: Floats in one padded block of pooled embeddings (re-rank): 4 MB, cache-sized (2x faster
#: than 64 MB blocks at paper scale).
BLOCK_FLOATS = 1 << 20
#: Tolerance of the coverage test ``1 - cos <= radius + COVER_EPS`` (float32 round-off).
COVER_EPS = 1e-5
#: Requests whose pools are bounded and thresholded at once in :func:`rerank`.
RERANK_CHUNK = 512
#: Candidates per request scored first, to raise the re-rank threshold (see :func:`rerank`).
STAGE_ONE = 64


def _factors(cos_lo: np.ndarray, w: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the extreme re-rank factors (multiply) or additions (sum) a sticker can get:
    1 / 0 when not covered, else 1 + w cos (w cos) with cos in [cos_lo, 1]."""
    lo_c, hi_c = np.minimum(w * cos_lo, w), np.maximum(w * cos_lo, w)
    if mode == "multiply":
        return np.minimum(1.0, 1.0 + lo_c), np.maximum(1.0, 1.0 + hi_c)
    return np.minimum(0.0, lo_c), np.maximum(0.0, hi_c)


def _candidates(ids_t, s_t, cos_lo, w, mode, kk):
    """The pool entries that can reach a row's top ``kk`` after the re-rank: every entry whose
    upper bound reaches the kk-th largest lower bound. Returns (ids, scores, candidate mask,
    upper bounds), cut to the columns holding candidates.

    For pools sorted best first and bounds increasing in the score (always for ``sum``; for
    ``multiply`` when every factor is positive) the bounds are monotone along a row: the
    threshold is the bound of the kk-th score and the candidates are a prefix, found with one
    comparison pass; otherwise every entry's bounds are computed."""
    lo, hi = _factors(cos_lo, w, mode)
    valid = ids_t >= 0
    n_valid = valid.sum(axis=1)
    P = s_t.shape[1]
    monotone = mode == "sum" or bool((lo > 0).all())
    if monotone and kk <= P and (s_t[:, 1:] <= s_t[:, :-1]).all():
        s_k = s_t[:, kk - 1].astype(np.float64)
        if mode == "multiply":
            thr = np.where(s_k >= 0, s_k * lo, s_k * hi)
            # smallest score whose upper bound reaches thr
            s_min = np.where(_slack(thr) >= 0, _slack(thr) / hi, _slack(thr) / lo)
        else:
            thr = s_k + lo
            s_min = _slack(thr) - hi
        s_min = np.where(n_valid >= kk, s_min, -np.inf)
        counts = np.where(n_valid >= kk, (s_t >= (s_min - 1e-6 * np.abs(s_min) - 1e-7
                                                    ).astype(np.float32)[:, None]).sum(axis=1),
                          n_valid)
        m = max(int(counts.max(initial=0)), 1)
        ids_t, s_t, valid = ids_t[:, :m], s_t[:, :m], valid[:, :m]
        cand = valid & (np.arange(m)[None, :] < counts[:, None])
    else:
        cand = None
    s64 = np.where(valid, s_t.astype(np.float64), 0.0)
    if mode == "multiply":
        a, b = s64 * lo[:, None], s64 * hi[:, None]
        lb, ub = np.minimum(a, b), np.maximum(a, b)
    else:
        lb, ub = s64 + lo[:, None], s64 + hi[:, None]
    ub[~valid] = -np.inf
    if cand is None:
        lb[~valid] = -np.inf
        cand = valid & (ub >= _slack(_kth_largest(lb, kk))[:, None])
    return ids_t, s_t, cand, ub


@dataclass
class RerankInputs:
    """What every re-rank starts with (:func:`prepare_rerank`): the inputs as arrays, the
    outputs allocated, and the requests still to re-rank.

    ``pool_ids`` (n_pools, P) int sticker rows, ``pool_scores`` float32; ``users`` (n,) int64
    cluster row per request (-1: unknown); ``pool_row`` (n,) the pool row of each request;
    ``k`` the list length, ``width`` P, ``kk`` min(k, P); ``out_ids`` int32 (n, k) -1 padded and
    ``out_scores`` float32 -inf padded (requests whose user has no clusters already hold their
    pool's top k); ``todo`` the request rows to re-rank."""

    pool_ids: np.ndarray
    pool_scores: np.ndarray
    users: np.ndarray
    pool_row: np.ndarray
    k: int
    width: int
    kk: int
    out_ids: np.ndarray
    out_scores: np.ndarray
    todo: np.ndarray


def prepare_rerank(pool_ids, pool_scores, request_user_index, clusters: UserClusters,
                   mode: str, k: int | None, pool_row) -> RerankInputs:
    """The :class:`RerankInputs` of a re-rank: inputs as arrays, outputs allocated (ids -1,
    scores -inf), and requests whose user has no clusters answered with their pool's top ``k``."""
    if mode not in MODES:
        raise ValueError(f"rerank mode must be one of {', '.join(MODES)}, got {mode!r}")
    pool_ids = np.asarray(pool_ids)
    pool_scores = np.asarray(pool_scores, dtype=np.float32)
    users = np.asarray(request_user_index, dtype=np.int64)
    nq = len(users)
    P = pool_ids.shape[1] if pool_ids.ndim == 2 else 0
    k = P if k is None else max(0, int(k))
    prow = np.arange(nq) if pool_row is None else np.asarray(pool_row, dtype=np.int64)
    if len(prow) != nq:
        raise ValueError(f"pool_row has {len(prow)} entries for {nq} requests")
    out_ids = np.full((nq, k), -1, dtype=np.int32)
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    kk = min(k, P)
    if nq == 0 or k == 0 or P == 0:
        return RerankInputs(pool_ids, pool_scores, users, prow, k, P, kk, out_ids, out_scores,
                            np.zeros(0, dtype=np.int64))
    n_cl = np.where(users >= 0, clusters.n_clusters[np.maximum(users, 0)], 0) \
        if len(clusters) else np.zeros(nq, dtype=np.int64)
    plain = np.flatnonzero(n_cl == 0)
    out_ids[plain, :kk] = pool_ids[prow[plain], :kk]
    out_scores[plain, :kk] = pool_scores[prow[plain], :kk]
    return RerankInputs(pool_ids, pool_scores, users, prow, k, P, kk, out_ids, out_scores,
                        np.flatnonzero(n_cl > 0))


def rerank(pool_ids: np.ndarray, pool_scores: np.ndarray, request_user_index: np.ndarray,
           embeddings: np.ndarray, clusters: UserClusters, weight: float = 0.3,
           mode: str = "multiply", k: int | None = None, pool_row: np.ndarray | None = None,
           inv_norms: np.ndarray | None = None, n_threads: int | None = None,
           never_lower: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank recall pools toward each request's user's style clusters; the exact top ``k``.

    ``pool_ids`` (n_pools, P) int sticker rows (-1 = padding) and ``pool_scores`` (n_pools, P),
    best first; request i uses pool row ``pool_row[i]`` (default i). ``request_user_index``
    (n_requests,): row in ``clusters`` (-1 = unknown user: not re-ranked). ``embeddings``: one
    row per sticker (normalised here through ``inv_norms``, computed when None). Returns
    (ids int32 (n_requests, k) padded with -1, scores float32 padded with -inf), best first,
    ties by pool position. ``k`` defaults to P (the whole pool re-ranked). ``n_threads``:
    request chunks re-ranked in parallel (default: available CPUs, at most 4). ``never_lower``:
    a score is only ever raised (the reference's rule)."""
    prep = prepare_rerank(pool_ids, pool_scores, request_user_index, clusters, mode, k, pool_row)
    out_ids, out_scores, todo = prep.out_ids, prep.out_scores, prep.todo
    if todo.size == 0:
        return out_ids, out_scores
    pool_ids, pool_scores, users, prow, kk = (prep.pool_ids, prep.pool_scores, prep.users,
                                              prep.pool_row, prep.kk)
    if inv_norms is None:
        inv_norms = inverse_norms(embeddings)
    w = float(weight)
    # Largest radius per user -> the smallest cosine a covered sticker can have.
    offs = clusters.offsets
    has = np.diff(offs) > 0
    r_user = np.zeros(len(clusters), dtype=np.float64)
    if has.any():
        r_user[has] = np.maximum.reduceat(clusters.radii, offs[:-1][has])
    k_max = int(clusters.n_clusters[users[todo]].max())  # the most clusters of any request
    d = embeddings.shape[1]

    def run_chunk(c0: int) -> None:
        chunk = todo[c0:c0 + RERANK_CHUNK]
        cos_lo = np.clip(1.0 - r_user[users[chunk]] - COVER_EPS, -1.0, 1.0)
        ids_t, s_t, cand, ub = _candidates(pool_ids[prow[chunk]], pool_scores[prow[chunk]],
                                           cos_lo, w, mode, kk)
        # Stage 1: the first STAGE_ONE candidates of each row (pool order: the best recall
        # scores). The k-th best of their new scores is a lower bound of the final k-th best, so
        # stage 2 needs only the remaining candidates whose upper bound reaches it.
        width = ids_t.shape[1]
        first = cand & (np.cumsum(cand, axis=1) <= max(STAGE_ONE, kk))
        ctx = (chunk, ids_t, s_t, users, clusters, embeddings, inv_norms, w, mode, k_max, d,
               never_lower)
        scored = _score_candidates(first, *ctx)      # (row, pool position, new score) triplets
        kth = _kth_largest(_compact(scored, len(chunk), width)[0], kk)
        rest = cand & ~first & (ub >= _slack(kth)[:, None])
        if rest.any():
            scored += _score_candidates(rest, *ctx)
        # The top k over the scored entries only (left-aligned), never the whole pool width.
        top_pos, top_scores = top_k_entries(*_compact(scored, len(chunk), width), kk)
        rows = np.arange(len(chunk))[:, None]
        n = top_pos.shape[1]
        out_ids[chunk, :n] = np.where(top_pos >= 0, ids_t[rows, np.maximum(top_pos, 0)], -1)
        out_scores[chunk, :n] = top_scores

    with single_threaded_blas():
        run_chunks(run_chunk, len(todo), RERANK_CHUNK, n_threads)
    return out_ids, out_scores


def run_chunks(run_chunk, n_rows: int, chunk: int, n_threads: int | None) -> None:
    """``run_chunk(start)`` for every ``chunk`` rows of ``n_rows``, in threads when there are
    several chunks (numpy's gathers, BLAS, einsum and partitions release the GIL; each chunk
    writes disjoint output rows)."""
    starts = list(range(0, n_rows, chunk))
    threads = min(len(starts), resolve_threads(n_threads))
    if threads <= 1:
        for start in starts:
            run_chunk(start)
        return
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(run_chunk, starts))


def _compact(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_rows: int,
             width: int) -> tuple[np.ndarray, np.ndarray]:
    """Scored entries ``(row, column, value)`` (lists of arrays) left-aligned per row: (values
    (n_rows, m) float32 padded with -inf, their columns (n_rows, m) int64), m = the most entries
    of a row (at least 1). Order within a row is free (:func:`top_k_entries` breaks ties by
    column).
    When most of the ``width`` columns are scored, the plain (n_rows, width) layout is cheaper
    than sorting the entries by row, and is returned instead."""
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    if 4 * len(rows) >= n_rows * width:
        dense = np.full((n_rows, width), -np.inf, dtype=np.float32)
        dense[rows, cols] = vals
        return dense, np.broadcast_to(np.arange(width), dense.shape)
    order = np.argsort(rows, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n_rows)
    m = max(int(counts.max(initial=0)), 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    out_vals = np.full((n_rows, m), -np.inf, dtype=np.float32)
    out_cols = np.zeros((n_rows, m), dtype=np.int64)
    out_vals[rows, slot] = vals
    out_cols[rows, slot] = cols
    return out_vals, out_cols


def top_k_entries(vals: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` finite values of each row, ties by column: (columns int32 padded with -1,
    values float32 padded with -inf), at most ``k`` wide."""
    keys = np.where(np.isfinite(vals), pack_keys(vals, cols), np.iinfo(np.uint64).max)
    if keys.shape[1] > k:
        keys = np.partition(keys, k - 1, axis=1)[:, :k]
    return unpack_keys(np.sort(keys, axis=1))


def _kth_largest(values: np.ndarray, k: int) -> np.ndarray:
    """k-th largest finite value of each row; -inf where a row has fewer than k."""
    n = values.shape[1]
    if k > n:
        return np.full(len(values), -np.inf)
    kth = np.partition(values, n - k, axis=1)[:, n - k].astype(np.float64)
    return np.where(np.isfinite(kth), kth, -np.inf)


def _slack(threshold: np.ndarray) -> np.ndarray:
    """A threshold lowered by a little more than float32 round-off (so ties are kept)."""
    return np.where(np.isfinite(threshold),
                    threshold - (1e-5 * np.abs(threshold) + 1e-6), threshold)


def _score_candidates(cand, chunk, ids_t, s_t, users, clusters, embeddings, inv_norms, w, mode,
                      k_max, d, never_lower=False) -> list[tuple[np.ndarray, ...]]:
    """Re-ranked scores of the ``cand`` entries of a chunk's pools, as a list of (chunk row,
    pool position, new score) arrays; rows in blocks of similar candidate counts (bounded padded
    memory)."""
    counts = cand.sum(axis=1)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    start, out = 0, []
    while start < len(order):
        nb = len(order) - start
        while nb > 1 and nb * (int(counts[order[start + nb - 1]]) + k_max) * d > BLOCK_FLOATS:
            nb = (nb + 1) // 2
        sel = order[start:start + nb]
        out.append(_score_block(sel, cand, counts, chunk, ids_t, s_t, users, clusters,
                                embeddings, inv_norms, w, mode, never_lower))
        start += nb
    return out


def _score_block(sel, cand, counts, chunk, ids_t, s_t, users, clusters, embeddings, inv_norms,
                 w, mode, never_lower=False):
    nb = len(sel)
    m = int(counts[sel].max())
    # Candidate pool positions, left-aligned per row (np.nonzero is row-major, in order).
    r_idx, p_idx = np.nonzero(cand[sel])
    slot = np.arange(len(r_idx)) - np.repeat(np.cumsum(counts[sel]) - counts[sel], counts[sel])
    pos = np.zeros((nb, m), dtype=np.int64)
    live = np.zeros((nb, m), dtype=bool)
    pos[r_idx, slot] = p_idx
    live[r_idx, slot] = True
    rows = np.arange(nb)[:, None]
    sid = np.where(live, ids_t[sel][rows, pos], 0)
    score = s_t[sel][rows, pos]
    E = embeddings[sid]                                                  # (nb, m, d), raw
    u = users[chunk[sel]]
    n_c = clusters.n_clusters[u]
    K = int(n_c.max())
    cslot = np.arange(K)
    cmask = cslot[None, :] < n_c[:, None]
    cidx = np.where(cmask, clusters.offsets[u][:, None] + cslot[None, :], 0)
    C = clusters.centroids[cidx]                                         # (nb, K, d)
    R = np.where(cmask, clusters.radii[cidx], -np.inf).astype(np.float32)
    cos = np.matmul(E, C.transpose(0, 2, 1).astype(E.dtype, copy=False))  # (nb, m, K)
    cos *= inv_norms[sid][..., None]                                     # unit embeddings
    covered = (1.0 - cos) <= R[:, None, :] + COVER_EPS
    cand_new = score[..., None] * (1.0 + w * cos) if mode == "multiply" \
        else score[..., None] + w * cos
    best = np.where(covered, cand_new, -np.inf).max(axis=2)
    final = np.where(covered.any(axis=2), best, score).astype(np.float32)
    if never_lower:
        final = np.maximum(final, score)
    return sel[r_idx], p_idx, final[r_idx, slot]
