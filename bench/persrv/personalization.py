"""PerSRV's personalization: per-user style clusters and the re-rank of a recall pool (DESIGN §7).

**Clusters.** For each user, the image embeddings of the distinct stickers the user clicked in
the fitting clicks are L2-normalised and clustered (a sticker clicked several times counts once).
Every algorithm works on the unit vectors, where Euclidean distance is monotone in cosine
distance (``|a - b|^2 = 2 (1 - cos)``); agglomerative ``average``/``complete``/``single`` use
the cosine metric itself. Each cluster keeps

- its centroid: the L2-normalised mean of its members (for every algorithm, GMM included), and
- its radius: the largest cosine distance ``1 - cos(member, centroid)`` of a member, at least
  ``min_radius``. With radius 0 (a one-sticker cluster, the default ``min_radius = 0``) only that
  sticker, or one with the same direction, is covered; raise ``min_radius`` to let singleton
  clusters cover near neighbours.

Edge cases: a user without clicks has no clusters (never re-ranked); ``n_clusters`` is capped by
the user's number of distinct stickers; one sticker gives one cluster of radius 0; HDBSCAN's
noise points become one singleton cluster each (``noise="singleton"``) or are dropped
(``noise="drop"``, possibly leaving the user without clusters); clusters that end empty are
dropped. A zero embedding stays zero (cosine 0 with everything).

k-means runs batched over all users at once (``kmeans_impl="batched"``, default): Lloyd's
iterations on padded ``users x points x dim`` blocks of users of similar history length, seeded
k-means++ initialisation (one candidate per step, drawn from a counter-based generator keyed by
seed and user id, so a user's clusters do not depend on the other users), iterated until no
label changes (or ``max_iter``); an empty cluster keeps its centre. ``kmeans_impl="sklearn"`` runs
scikit-learn's ``KMeans`` per user instead. HDBSCAN, agglomerative and GMM run per user.

**Re-rank** (:func:`rerank`). For a request of a user with clusters and a pooled sticker with
unit embedding e, the centroids c whose radius covers it (``1 - cos(e, c) <= radius``) each give
``score * (1 + w cos(e, c))`` (``mode="multiply"``) or ``score + w cos(e, c)`` (``"sum"``); the best
is kept; a sticker no centroid covers keeps its score. The result is exactly the top ``k`` of the
fully re-ranked pool (ties by pool position), but only pooled stickers that can reach it are
scored: a covered sticker has ``cos >= 1 - (user's largest radius)``, which bounds every new score
between a lower and an upper bound. Candidates are the stickers whose upper bound reaches the
k-th largest lower bound; the first ``STAGE_ONE`` of them per request are scored, the k-th best
of those real scores raises the threshold, and only the remaining candidates whose upper bound
reaches it are scored next. Pools must come best first (rows of users without clusters are
returned as their first k).

GMM notes: ``covariance_type`` defaults to ``"diag"`` — ``"full"`` fits d x d covariances
(d = 512 for CLIP) from a handful of points, about 0.5 s per user (hours at paper scale) and
dominated by the regulariser; ``reg_covar`` is 1e-4 (unit vectors have per-dimension variance
~1/d).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from bench.persrv.fields import n_threads as resolve_threads
from bench.persrv.fields import pack_keys, unpack_keys

log = logging.getLogger(__name__)

ALGORITHMS = ("kmeans", "hdbscan", "agglomerative", "gmm")
LINKAGES = ("ward", "average", "complete", "single")
COVARIANCES = ("full", "diag", "spherical", "tied")
NOISE = ("singleton", "drop")
KMEANS_IMPLS = ("batched", "sklearn")
MODES = ("multiply", "sum")
#: Floats in one padded block of pooled embeddings (re-rank): 4 MB, cache-sized (2x faster
#: than 64 MB blocks at paper scale).
BLOCK_FLOATS = 1 << 20
#: Floats in one padded block of user points (k-means): small enough to stay in cache over
#: the Lloyd iterations (4 MB; 2x faster than 64 MB blocks).
KMEANS_BLOCK_FLOATS = 1 << 20
#: Tolerance of the coverage test ``1 - cos <= radius + COVER_EPS`` (float32 round-off).
COVER_EPS = 1e-5
#: Requests whose pools are bounded and thresholded at once in :func:`rerank`.
RERANK_CHUNK = 512
#: Candidates per request scored first, to raise the re-rank threshold (see :func:`rerank`).
STAGE_ONE = 64


@dataclass(frozen=True)
class ClusterConfig:
    """How each user's clicked-sticker embeddings are clustered.

    ``algorithm``: kmeans | hdbscan | agglomerative | gmm. ``n_clusters``: k for kmeans,
    agglomerative and gmm (capped by the user's distinct stickers). ``min_cluster_size``,
    ``min_samples``, ``allow_single_cluster``, ``noise`` (singleton | drop): HDBSCAN.
    ``linkage``: agglomerative. ``covariance_type``: gmm. ``min_radius``: floor of every radius
    (cosine distance). ``max_iter``: kmeans / gmm iterations. ``kmeans_impl``: batched | sklearn.
    ``seed``: every random choice.
    """

    algorithm: str = "kmeans"
    n_clusters: int = 5
    min_cluster_size: int = 2
    min_samples: int | None = None
    allow_single_cluster: bool = True
    noise: str = "singleton"
    linkage: str = "ward"
    covariance_type: str = "diag"
    min_radius: float = 0.0
    max_iter: int = 100
    kmeans_impl: str = "batched"
    seed: int = 0

    def __post_init__(self):
        for name, value, allowed in (("algorithm", self.algorithm, ALGORITHMS),
                                     ("linkage", self.linkage, LINKAGES),
                                     ("covariance_type", self.covariance_type, COVARIANCES),
                                     ("noise", self.noise, NOISE),
                                     ("kmeans_impl", self.kmeans_impl, KMEANS_IMPLS)):
            if value not in allowed:
                raise ValueError(f"cluster {name} must be one of {', '.join(allowed)}, "
                                 f"got {value!r}")
        if int(self.n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1, got {self.n_clusters}")
        if int(self.min_cluster_size) < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size}")
        if not 0 <= self.min_radius <= 2:
            raise ValueError(f"min_radius is a cosine distance in [0, 2], got {self.min_radius}")
        if int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


@dataclass
class UserClusters:
    """Every user's clusters, flat: user u owns rows ``offsets[u]:offsets[u + 1]`` of
    ``centroids`` (float32, unit rows), ``radii`` (float32, cosine distance) and ``sizes``
    (members). ``user_ids`` holds the users with fitting clicks (sorted)."""

    user_ids: np.ndarray
    offsets: np.ndarray
    centroids: np.ndarray
    radii: np.ndarray
    sizes: np.ndarray
    config: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        self._index = {u: i for i, u in enumerate(self.user_ids.tolist())}

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def n_clusters(self) -> np.ndarray:
        """Clusters per user (int64, ``user_ids`` order)."""
        return np.diff(self.offsets)

    def user_index(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row of each user in ``user_ids`` order, -1 for users without fitting clicks."""
        get = self._index.get
        return np.fromiter((get(u, -1) for u in user_ids), dtype=np.int64, count=len(user_ids))

    def of(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(centroids, radii) of one user (empty for an unknown user)."""
        i = self._index.get(user_id, -1)
        if i < 0:
            return self.centroids[:0], self.radii[:0]
        a, e = self.offsets[i], self.offsets[i + 1]
        return self.centroids[a:e], self.radii[a:e]


# ------------------------------------------------------------------------------------ helpers

def single_threaded_blas():
    """A context limiting BLAS to one thread: the many tiny batched products here run 2-4x
    slower with OpenBLAS's own threads (threadpoolctl, a scikit-learn dependency)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def inverse_norms(embeddings: np.ndarray) -> np.ndarray:
    """1 / L2 norm of each row (float32; 0 for a zero row), to normalise gathered rows."""
    norms = np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings, dtype=np.float64))
    with np.errstate(divide="ignore"):
        inv = np.where(norms > 0, 1.0 / norms, 0.0)
    return inv.astype(np.float32)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def user_keys(user_ids: Sequence[str], seed: int) -> np.ndarray:
    """A uint64 random-stream key per user from (seed, user id): independent of other users."""
    crc = np.fromiter((zlib.crc32(str(u).encode("utf-8")) for u in user_ids), dtype=np.uint64,
                      count=len(user_ids))
    with np.errstate(over="ignore"):
        return _splitmix64(crc ^ _splitmix64(np.full(len(crc), seed % (1 << 63), np.uint64)))


def _uniform(keys: np.ndarray, step: int) -> np.ndarray:
    """Uniform [0, 1) draw number ``step`` of each key's stream."""
    with np.errstate(over="ignore"):
        bits = _splitmix64(keys + np.uint64(step) * np.uint64(0xD1B54A32D192ED03))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# --------------------------------------------------------------------------- batched k-means

def kmeans_batched(points: np.ndarray, offsets: np.ndarray, n_clusters: int, keys: np.ndarray,
                   max_iter: int = 100, return_init: bool = False):
    """k-means for many users at once. ``points`` (n, d) float32, user u owning rows
    ``offsets[u]:offsets[u+1]``; k = min(n_clusters, user's points). Returns labels (n,) int64
    (cluster number within the user), and with ``return_init`` the initial centres as a list of
    (k_u, d) arrays (k-means++ with one candidate per step; fewer when points coincide)."""
    n_users = len(offsets) - 1
    d = points.shape[1]
    sizes = np.diff(offsets)
    labels = np.zeros(len(points), dtype=np.int64)
    inits: list[np.ndarray | None] = [None] * n_users
    K = int(n_clusters)
    order = np.argsort(sizes, kind="stable")
    order = order[sizes[order] > 0]
    pads = 1 << np.ceil(np.log2(np.maximum(sizes[order], 1))).astype(np.int64)
    start = 0
    while start < len(order):
        pad = int(pads[start])
        same = int(np.searchsorted(pads, pad, side="right"))
        per_block = max(1, KMEANS_BLOCK_FLOATS // (pad * max(d, K)))
        stop = min(same, start + per_block)
        users = order[start:stop]
        lab, init = _kmeans_block(points, offsets[users], sizes[users], pad, K, keys[users],
                                  max_iter)
        for b, u in enumerate(users.tolist()):
            labels[offsets[u]:offsets[u + 1]] = lab[b, :sizes[u]]
            if return_init:
                inits[u] = init[b]
        start = stop
    return (labels, inits) if return_init else labels


def _kmeans_block(points, starts, sizes, pad, K, keys, max_iter):
    B, d = len(starts), points.shape[1]
    slot = np.arange(pad)
    mask = slot[None, :] < sizes[:, None]
    src = np.where(mask, starts[:, None] + slot[None, :], 0)
    X = points[src] * mask[..., None]                                  # (B, pad, d)
    k_user = np.minimum(K, sizes)
    # k-means++: first centre uniform, then proportional to squared distance.
    C = np.zeros((B, K, d), dtype=np.float32)
    valid = np.zeros((B, K), dtype=bool)
    rows = np.arange(B)
    first = np.minimum((_uniform(keys, 0) * sizes).astype(np.int64), sizes - 1)
    C[:, 0] = X[rows, first]
    valid[:, 0] = True
    xx = np.einsum("bnd,bnd->bn", X, X)

    def sq_dist(c):  # squared distances of every point to one centre per user: (B, pad)
        return np.maximum(xx + np.einsum("bd,bd->b", c, c)[:, None]
                          - 2.0 * np.matmul(X, c[:, :, None])[..., 0], 0.0)

    d2 = np.where(mask, sq_dist(C[:, 0]), 0.0)
    for j in range(1, K):
        cs = np.cumsum(d2, axis=1, dtype=np.float64)
        total = cs[:, -1]
        target = _uniform(keys, j) * total
        pick = np.minimum((cs <= target[:, None]).sum(axis=1), sizes - 1)
        ok = (j < k_user) & (total > 0)
        C[:, j] = np.where(ok[:, None], X[rows, pick], 0.0)
        valid[:, j] = ok
        if ok.any():
            d2 = np.where(ok[:, None] & mask,
                          np.minimum(d2, sq_dist(C[:, j])), d2)
    init = [C[b, valid[b]].copy() for b in range(B)]
    prev = None
    for _ in range(max_iter):
        cc = np.where(valid, (C ** 2).sum(-1), np.inf)                   # (B, K)
        dist = cc[:, None, :] - 2.0 * np.matmul(X, C.transpose(0, 2, 1))  # (B, pad, K)
        lab = dist.argmin(axis=2)
        if prev is not None and np.array_equal(lab[mask], prev[mask]):
            break
        prev = lab
        onehot = ((lab[..., None] == np.arange(K)) & mask[..., None]).astype(np.float32)
        counts = onehot.sum(axis=1)                                      # (B, K)
        sums = np.matmul(onehot.transpose(0, 2, 1), X)                   # (B, K, d)
        C = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], C)
    return lab, init


# ------------------------------------------------------------------------- other algorithms

def _labels_one(X: np.ndarray, cfg: ClusterConfig, seed: int) -> np.ndarray:
    """Cluster labels of one user's unit vectors (n >= 2); -1 = HDBSCAN noise."""
    n = len(X)
    k = min(int(cfg.n_clusters), n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / duplicate-point warnings on tiny data
        if cfg.algorithm == "kmeans":
            from sklearn.cluster import KMeans
            return KMeans(n_clusters=k, n_init=1, max_iter=cfg.max_iter,
                          random_state=seed).fit(X).labels_
        if cfg.algorithm == "agglomerative":
            if k == 1:
                return np.zeros(n, dtype=np.int64)
            from sklearn.cluster import AgglomerativeClustering
            metric = "euclidean" if cfg.linkage == "ward" else "cosine"
            return AgglomerativeClustering(n_clusters=k, linkage=cfg.linkage,
                                           metric=metric).fit(X).labels_
        if cfg.algorithm == "gmm":
            from sklearn.mixture import GaussianMixture
            gm = GaussianMixture(n_components=k, covariance_type=cfg.covariance_type,
                                 max_iter=cfg.max_iter, random_state=seed, reg_covar=1e-4)
            return gm.fit(X.astype(np.float64)).predict(X.astype(np.float64))
        # hdbscan
        if n < cfg.min_cluster_size:
            return np.full(n, -1, dtype=np.int64)
        from sklearn.cluster import HDBSCAN
        try:
            return HDBSCAN(min_cluster_size=int(cfg.min_cluster_size),
                           min_samples=cfg.min_samples,
                           allow_single_cluster=cfg.allow_single_cluster,
                           copy=True).fit(X).labels_
        except ValueError:  # e.g. fewer points than min_samples
            return np.full(n, -1, dtype=np.int64)


# ----------------------------------------------------------------------------------- fitting

@dataclass
class UserPoints:
    """The points each user's clusters are fitted on: user u owns rows
    ``offsets[u]:offsets[u + 1]`` of ``rows`` (distinct embedding rows, ascending) and ``X``
    (their unit vectors, float32). ``user_ids``: users with fitting clicks, sorted."""

    user_ids: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    X: np.ndarray


def user_points(user_ids_of_clicks: Sequence[str], embedding_rows_of_clicks: Sequence[int],
                embeddings: np.ndarray, inv_norms: np.ndarray | None = None) -> UserPoints:
    """Each user's distinct clicked stickers as unit vectors (one entry per click: the user and
    the clicked sticker's row in ``embeddings``; rows < 0 are ignored). ``inv_norms``:
    precomputed :func:`inverse_norms` of ``embeddings``."""
    users = np.asarray([str(u) for u in user_ids_of_clicks], dtype=object)
    rows = np.asarray(embedding_rows_of_clicks, dtype=np.int64).reshape(-1)
    if len(users) != len(rows):
        raise ValueError(f"{len(users)} user ids but {len(rows)} embedding rows")
    embeddings = np.asarray(embeddings)
    keep = rows >= 0
    users, rows = users[keep], rows[keep]
    uniq_users, codes = np.unique(users, return_inverse=True) if len(users) else \
        (np.array([], dtype=object), np.array([], dtype=np.int64))
    n_users, n_emb = len(uniq_users), max(len(embeddings), 1)
    pair = np.unique(codes.astype(np.int64) * n_emb + rows)
    p_user, p_row = pair // n_emb, pair % n_emb
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(p_user, minlength=n_users), out=offsets[1:])
    X = embeddings[p_row].astype(np.float32, copy=True)
    X *= (inv_norms[p_row] if inv_norms is not None else inverse_norms(X))[:, None]
    return UserPoints(user_ids=uniq_users, offsets=offsets, rows=p_row, X=X)


def cluster_users(points: UserPoints, cfg: ClusterConfig = ClusterConfig()) -> UserClusters:
    """Cluster every user's points (see the module doc)."""
    X, offsets, users = points.X, points.offsets, points.user_ids
    sizes = np.diff(offsets)
    if cfg.algorithm == "kmeans" and cfg.kmeans_impl == "batched":
        with single_threaded_blas():
            labels = kmeans_batched(X, offsets, cfg.n_clusters, user_keys(users, cfg.seed),
                                    cfg.max_iter)
    else:
        labels = np.zeros(len(X), dtype=np.int64)
        seeds = (user_keys(users, cfg.seed) >> np.uint64(33)).astype(np.int64)
        for u in np.flatnonzero(sizes > 1).tolist():
            a, e = offsets[u], offsets[u + 1]
            labels[a:e] = _labels_one(X[a:e], cfg, int(seeds[u]))
    return clusters_from_labels(users, offsets, X, labels, cfg)


def fit_user_clusters(user_ids_of_clicks: Sequence[str], embedding_rows_of_clicks: Sequence[int],
                      embeddings: np.ndarray, cfg: ClusterConfig = ClusterConfig(),
                      inv_norms: np.ndarray | None = None) -> UserClusters:
    """Cluster each user's clicked-sticker embeddings: :func:`user_points` then
    :func:`cluster_users` (keep the points to re-cluster with other settings cheaply)."""
    return cluster_users(user_points(user_ids_of_clicks, embedding_rows_of_clicks, embeddings,
                                     inv_norms), cfg)


def clusters_from_labels(user_ids: np.ndarray, point_offsets: np.ndarray, X: np.ndarray,
                         labels: np.ndarray, cfg: ClusterConfig) -> UserClusters:
    """Centroids (unit mean of members), radii (largest member cosine distance, at least
    ``cfg.min_radius``) and sizes from per-point labels (-1 = noise, per ``cfg.noise``)."""
    n_users = len(user_ids)
    p_user = np.repeat(np.arange(n_users), np.diff(point_offsets))
    labels = np.asarray(labels, dtype=np.int64).copy()
    keep = np.ones(len(labels), dtype=bool)
    noise = labels < 0
    if noise.any():
        if cfg.noise == "drop":
            keep = ~noise
        else:  # each noise point its own cluster, numbered after the user's real clusters
            labels[noise] = labels.max(initial=0) + 1 + np.arange(int(noise.sum()))
    stride = int(labels.max(initial=0)) + 1
    key = p_user[keep] * stride + labels[keep]
    uniq, cl = np.unique(key, return_inverse=True)
    n_cl = len(uniq)
    Xk = X if keep.all() else X[keep]
    member = sp.csr_matrix((np.ones(len(cl), np.float32), (cl, np.arange(len(cl)))),
                           shape=(n_cl, len(cl)))
    sizes = np.bincount(cl, minlength=n_cl)
    sums = np.asarray(member @ Xk, dtype=np.float32)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    centroids = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    dots = np.empty(len(cl), dtype=np.float64)
    for a in range(0, len(cl), 1 << 14):  # chunked: no (points x dim) gathered copy
        b = min(len(cl), a + (1 << 14))
        dots[a:b] = np.einsum("ij,ij->i", Xk[a:b], centroids[cl[a:b]])
    radii = np.full(n_cl, -np.inf)
    np.maximum.at(radii, cl, 1.0 - dots)
    radii[sizes == 1] = 0.0  # the centroid is the member itself (round-off aside)
    radii = np.maximum(np.maximum(radii, 0.0), cfg.min_radius).astype(np.float32)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(uniq // stride, minlength=n_users), out=offsets[1:])
    return UserClusters(user_ids=np.asarray(user_ids, dtype=object), offsets=offsets,
                        centroids=centroids, radii=radii, sizes=sizes.astype(np.int64),
                        config=cfg)


# ------------------------------------------------------------------------------------ rerank

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


def rerank(pool_ids: np.ndarray, pool_scores: np.ndarray, request_user_index: np.ndarray,
           embeddings: np.ndarray, clusters: UserClusters, weight: float = 0.3,
           mode: str = "multiply", k: int | None = None, pool_row: np.ndarray | None = None,
           inv_norms: np.ndarray | None = None, n_threads: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank recall pools toward each request's user's style clusters; the exact top ``k``.

    ``pool_ids`` (n_pools, P) int sticker rows (-1 = padding) and ``pool_scores`` (n_pools, P),
    best first; request i uses pool row ``pool_row[i]`` (default i). ``request_user_index``
    (n_requests,): row in ``clusters`` (-1 = unknown user: not re-ranked). ``embeddings``: one
    row per sticker (normalised here through ``inv_norms``, computed when None). Returns
    (ids int32 (n_requests, k) padded with -1, scores float32 padded with -inf), best first,
    ties by pool position. ``k`` defaults to P (the whole pool re-ranked). ``n_threads``:
    request chunks re-ranked in parallel (default: available CPUs, at most 4)."""
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
    if nq == 0 or k == 0 or P == 0:
        return out_ids, out_scores
    kk = min(k, P)
    n_cl = np.where(users >= 0, clusters.n_clusters[np.maximum(users, 0)], 0) \
        if len(clusters) else np.zeros(nq, dtype=np.int64)
    plain = np.flatnonzero(n_cl == 0)
    out_ids[plain, :kk] = pool_ids[prow[plain], :kk]
    out_scores[plain, :kk] = pool_scores[prow[plain], :kk]
    todo = np.flatnonzero(n_cl > 0)
    if todo.size == 0:
        return out_ids, out_scores
    if inv_norms is None:
        inv_norms = inverse_norms(embeddings)
    w = float(weight)
    # Largest radius per user -> the smallest cosine a covered sticker can have.
    offs = clusters.offsets
    has = np.diff(offs) > 0
    r_user = np.zeros(len(clusters), dtype=np.float64)
    if has.any():
        r_user[has] = np.maximum.reduceat(clusters.radii, offs[:-1][has])
    k_max = int(n_cl.max())
    d = embeddings.shape[1]

    def run_chunk(c0: int) -> None:
        chunk = todo[c0:c0 + RERANK_CHUNK]
        cos_lo = np.clip(1.0 - r_user[users[chunk]] - COVER_EPS, -1.0, 1.0)
        ids_t, s_t, cand, ub = _candidates(pool_ids[prow[chunk]], pool_scores[prow[chunk]],
                                           cos_lo, w, mode, kk)
        # Stage 1: the first STAGE_ONE candidates of each row (pool order: the best recall
        # scores). The k-th best of their new scores is a lower bound of the final k-th best, so
        # stage 2 needs only the remaining candidates whose upper bound reaches it.
        new = np.full(ids_t.shape, -np.inf, dtype=np.float32)
        first = cand & (np.cumsum(cand, axis=1) <= max(STAGE_ONE, kk))
        ctx = (chunk, ids_t, s_t, users, clusters, embeddings, inv_norms, w, mode, k_max, d, new)
        _score_candidates(first, *ctx)
        rest = cand & ~first & (ub >= _slack(_kth_largest(new, kk))[:, None])
        if rest.any():
            _score_candidates(rest, *ctx)
        width = new.shape[1]
        keys = np.where(np.isfinite(new), pack_keys(new, np.broadcast_to(np.arange(width),
                                                                         new.shape)),
                        np.iinfo(np.uint64).max)
        if width > kk:
            keys = np.partition(keys, kk - 1, axis=1)[:, :kk]
        top_pos, top_scores = unpack_keys(np.sort(keys, axis=1))
        rows = np.arange(len(chunk))[:, None]
        n = top_pos.shape[1]
        out_ids[chunk, :n] = np.where(top_pos >= 0, ids_t[rows, np.maximum(top_pos, 0)], -1)
        out_scores[chunk, :n] = top_scores

    starts = list(range(0, len(todo), RERANK_CHUNK))
    threads = min(len(starts), resolve_threads(n_threads))
    with single_threaded_blas():
        if threads <= 1:
            for c0 in starts:
                run_chunk(c0)
        else:  # numpy's gathers, BLAS and partitions release the GIL; disjoint output rows
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(run_chunk, starts))
    return out_ids, out_scores


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
                      k_max, d, new):
    """Re-ranked scores of the ``cand`` entries of a chunk's pools, written into ``new``;
    rows in blocks of similar candidate counts (bounded padded memory)."""
    counts = cand.sum(axis=1)
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    start = 0
    while start < len(order):
        nb = len(order) - start
        while nb > 1 and nb * (int(counts[order[start + nb - 1]]) + k_max) * d > BLOCK_FLOATS:
            nb = (nb + 1) // 2
        sel = order[start:start + nb]
        _score_block(sel, cand, counts, chunk, ids_t, s_t, users, clusters, embeddings,
                     inv_norms, w, mode, new)
        start += nb


def _score_block(sel, cand, counts, chunk, ids_t, s_t, users, clusters, embeddings, inv_norms,
                 w, mode, new):
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
    new[sel[r_idx], p_idx] = final[r_idx, slot]
