"""The reference code's cluster geometry (``geometry="standardized"``, ``persrv-reference``).

The reference (``gen_personalise.py``, ``rank.py`` of the PerSRV code) standardises each user's
history embeddings with scikit-learn's ``StandardScaler`` (per dimension: subtract the user's
mean, divide by the user's standard deviation, ddof 0; a dimension with no spread is divided by
1), runs k-means there, and keeps per cluster the centroid (the plain mean) and a threshold, the
largest Euclidean member distance. A pooled sticker is covered by a cluster when its Euclidean
distance to the centroid is at most that threshold, and a covering cluster gives
``score * (1 + w cos)`` (``"multiply"``) or ``score + w cos`` (``"sum"``) with ``cos`` the cosine
of the sticker and the centroid. Here the sticker is standardised with the same user's mean and
deviation first (the reference compares the raw embedding with standardised centroids, which
mixes two spaces; we read that as a bug). Points are the user's distinct clicked stickers, as
for the default geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from bench.persrv.clustering import (ClusterConfig, UserClusters, UserPoints, cluster_labels,
                                     clusters_from_labels)
from bench.persrv.rerank import prepare_rerank, run_chunks, top_k_entries

#: Floats of one (requests x candidates x dim) block of standardised pooled embeddings.
BLOCK_FLOATS = 1 << 22
#: Widest pool scored whole with BLAS products (the scores of earlier versions); wider pools
#: are pruned to the entries that can reach the top k (see :func:`rerank_standardized`).
WHOLE_POOL = 512
#: Requests whose pools are bounded at once (then scored in blocks of similar candidate counts).
CHUNK = 512
#: Relative tolerance of the coverage test ``distance <= radius`` (round-off).
COVER_RTOL = 1e-5


@dataclass
class StandardizedClusters(UserClusters):
    """:class:`UserClusters` in each user's standardised space: ``centroids`` are plain means,
    ``radii`` Euclidean; ``mean`` and ``scale`` (n_users, dim) float64 standardise a vector for
    user row u as ``(v - mean[u]) / scale[u]``."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    scale: np.ndarray = field(default_factory=lambda: np.ones((0, 0)))


def standardized_clusters(points: UserPoints, embeddings: np.ndarray,
                          cfg: ClusterConfig = ClusterConfig()) -> StandardizedClusters:
    """Cluster each user's raw history embeddings after per-user standardisation."""
    offsets, users = points.offsets, points.user_ids
    sizes = np.diff(offsets)
    raw = np.asarray(embeddings)[points.rows].astype(np.float64)
    p_user = np.repeat(np.arange(len(users)), sizes)
    member = sp.csr_matrix((np.ones(len(raw)), (p_user, np.arange(len(raw)))),
                           shape=(len(users), len(raw)))
    n = np.maximum(sizes, 1)[:, None]
    mean = np.asarray(member @ raw) / n
    var = np.asarray(member @ (raw - mean[p_user]) ** 2) / n
    scale = np.sqrt(var)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0   # StandardScaler's rule for no spread
    Z = ((raw - mean[p_user]) / scale[p_user]).astype(np.float32)
    std_points = UserPoints(user_ids=users, offsets=offsets, rows=points.rows, X=Z)
    labels = cluster_labels(std_points, cfg)
    base = clusters_from_labels(users, offsets, Z, labels, cfg, euclidean=True)
    return StandardizedClusters(user_ids=base.user_ids, offsets=base.offsets,
                                centroids=base.centroids, radii=base.radii, sizes=base.sizes,
                                config=cfg, mean=mean, scale=scale)


def rerank_standardized(pool_ids: np.ndarray, pool_scores: np.ndarray,
                        request_user_index: np.ndarray, embeddings: np.ndarray,
                        clusters: StandardizedClusters, weight: float = 0.3,
                        mode: str = "multiply", k: int | None = None,
                        pool_row: np.ndarray | None = None, never_lower: bool = False,
                        n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank recall pools in each user's standardised space (see the module doc); the same
    inputs and outputs as :func:`bench.persrv.rerank.rerank` (ids int32 (n, k) padded with -1,
    scores float32 padded with -inf, best first, ties by pool position).

    Pools up to :data:`WHOLE_POOL` wide are scored whole. Wider ones give the exact top ``k`` of
    the fully re-ranked pool, but only the pooled stickers that can reach it are scored: a sticker's new score lies between bounds (:func:`_bounds`, cos in [-1, 1]),
    and one whose upper bound is below the k-th largest lower bound of its row cannot enter the
    top k. The candidates are scored left-aligned, rows in blocks of similar candidate counts;
    ``n_threads``: request chunks scored in parallel (default: available CPUs, at most 4)."""
    prep = prepare_rerank(pool_ids, pool_scores, request_user_index, clusters, mode, k, pool_row)
    out_ids, out_scores, todo = prep.out_ids, prep.out_scores, prep.todo
    if todo.size == 0:
        return out_ids, out_scores
    pool_ids, pool_scores, users, prow = prep.pool_ids, prep.pool_scores, prep.users, prep.pool_row
    P, kk = prep.width, prep.kk
    w, d = float(weight), embeddings.shape[1]

    if P <= WHOLE_POOL:  # small pools (the reference's 5 x k): scored whole, as before
        step = max(1, BLOCK_FLOATS // max(1, P * d))
        for a in range(0, len(todo), step):
            chunk = todo[a:a + step]
            final = _standardized_scores(pool_ids[prow[chunk]], pool_scores[prow[chunk]],
                                         users[chunk], embeddings, clusters, w, mode,
                                         never_lower, blas=True)
            top_pos, top_scores = top_k_entries(final, np.broadcast_to(np.arange(P),
                                                                       final.shape), kk)
            ids = pool_ids[prow[chunk]]
            n = top_pos.shape[1]
            out_ids[chunk, :n] = np.where(top_pos >= 0, ids[np.arange(len(chunk))[:, None],
                                                             np.maximum(top_pos, 0)], -1)
            out_scores[chunk, :n] = top_scores
        return out_ids, out_scores

    def run_chunk(a: int) -> None:
        chunk = todo[a:a + CHUNK]
        ids, scores = pool_ids[prow[chunk]], pool_scores[prow[chunk]]
        cand = _candidates(ids, scores, kk, w, mode, never_lower)
        counts = cand.sum(axis=1)
        order = np.argsort(counts, kind="stable")
        order = order[counts[order] > 0]
        start = 0
        while start < len(order):
            nb = len(order) - start
            while nb > 1 and nb * int(counts[order[start + nb - 1]]) * d > BLOCK_FLOATS:
                nb = (nb + 1) // 2
            sel = order[start:start + nb]
            start += nb
            pos, live = _left_aligned(cand[sel], counts[sel])
            rows = np.arange(nb)[:, None]
            g_ids = np.where(live, ids[sel][rows, pos], -1)
            final = _standardized_scores(g_ids, scores[sel][rows, pos], users[chunk[sel]],
                                         embeddings, clusters, w, mode, never_lower)
            top_pos, top_scores = top_k_entries(final, pos, kk)
            dest = chunk[sel]
            n = top_pos.shape[1]
            out_ids[dest, :n] = np.where(top_pos >= 0, ids[sel][rows, np.maximum(top_pos, 0)],
                                         -1)
            out_scores[dest, :n] = top_scores

    run_chunks(run_chunk, len(todo), CHUNK, n_threads)
    return out_ids, out_scores


def _bounds(s: np.ndarray, w: float, mode: str, never_lower: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bounds (float64) of the re-ranked score of pool scores ``s``: a covered
    sticker gets ``s (1 + w cos)`` or ``s + w cos`` with cos in [-1, 1], an uncovered one keeps
    ``s``; ``never_lower`` keeps at least ``s``."""
    s = s.astype(np.float64)
    if mode == "multiply":
        a, b = s * (1.0 - w), s * (1.0 + w)
    else:
        a, b = s - w, s + w
    lo, hi = np.minimum(np.minimum(a, b), s), np.maximum(np.maximum(a, b), s)
    return (s if never_lower else lo), hi


def _candidates(ids, scores, kk, w, mode, never_lower) -> np.ndarray:
    """Mask (n, P) of the valid pool entries whose upper bound reaches the kk-th largest lower
    bound of their row (lowered by a little more than round-off, so ties are kept)."""
    valid = ids >= 0
    lo, hi = _bounds(np.where(valid, scores, 0.0), w, mode, never_lower)
    lo[~valid] = -np.inf
    P = lo.shape[1]
    if kk >= P:
        return valid
    kth = np.partition(lo, P - kk, axis=1)[:, P - kk]
    thr = np.where(np.isfinite(kth), kth - (1e-5 * np.abs(kth) + 1e-6), -np.inf)
    return valid & (hi >= thr[:, None])


def _left_aligned(mask: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column positions of each row's True entries, left-aligned: (positions int64 (n, m),
    live bool (n, m)), m = the largest count; padding positions are 0."""
    n, m = len(mask), int(counts.max(initial=0))
    r_idx, p_idx = np.nonzero(mask)
    slot = np.arange(len(r_idx)) - np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.zeros((n, max(m, 1)), dtype=np.int64)
    live = np.zeros((n, max(m, 1)), dtype=bool)
    pos[r_idx, slot] = p_idx
    live[r_idx, slot] = True
    return pos, live


def _standardized_scores(ids, scores, users, embeddings, clusters, w, mode, never_lower,
                         blas=False):
    """Re-ranked scores (n, P) float32 of pools ``ids``/``scores`` (n, P) of users ``users``."""
    valid = ids >= 0
    Z = (embeddings[np.maximum(ids, 0)].astype(np.float64)
         - clusters.mean[users][:, None, :]) / clusters.scale[users][:, None, :]   # (n, P, d)
    n_c = clusters.n_clusters[users]
    cslot = np.arange(int(n_c.max()))
    cmask = cslot[None, :] < n_c[:, None]
    cidx = np.where(cmask, clusters.offsets[users][:, None] + cslot[None, :], 0)
    C = clusters.centroids[cidx].astype(np.float64)                                # (n, K, d)
    R = np.where(cmask, clusters.radii[cidx], -np.inf)
    # blas: a BLAS product (whole pools up to WHOLE_POOL wide: the scores of earlier versions);
    # else einsum's own loop, which sums each dot product in the same order whatever the
    # block's shape, so scoring a subset of a pool gives bit-identical scores (gemm does not).
    dot = np.matmul(Z, C.transpose(0, 2, 1)) if blas else np.einsum("npd,nkd->npk", Z, C)
    zz = np.einsum("npd,npd->np", Z, Z)[..., None]
    cc = np.einsum("nkd,nkd->nk", C, C)[:, None, :]
    dist = np.sqrt(np.maximum(zz + cc - 2.0 * dot, 0.0))
    norm = np.sqrt(zz * cc)
    cos = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
    covered = dist <= R[:, None, :] * (1 + COVER_RTOL) + COVER_RTOL
    s = scores.astype(np.float64)[..., None]
    boosted = s * (1.0 + w * cos) if mode == "multiply" else s + w * cos
    best = np.where(covered, boosted, -np.inf).max(axis=2)
    final = np.where(covered.any(axis=2), best, scores)
    if never_lower:
        final = np.maximum(final, scores)
    return np.where(valid, final, -np.inf).astype(np.float32)
