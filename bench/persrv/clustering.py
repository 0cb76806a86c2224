"""PerSRV's per-user style clusters (DESIGN §7); the re-rank is :mod:`bench.persrv.rerank`.

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

GMM notes: ``covariance_type`` defaults to ``"diag"`` — ``"full"`` fits d x d covariances
(d = 512 for CLIP) from a handful of points, about 0.5 s per user (hours at paper scale) and
dominated by the regulariser; ``reg_covar`` is 1e-4 (unit vectors have per-dimension variance
~1/d).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from bench.persrv.kmeans import kmeans_batched, user_keys

log = logging.getLogger(__name__)

ALGORITHMS = ("kmeans", "hdbscan", "agglomerative", "gmm")
LINKAGES = ("ward", "average", "complete", "single")
COVARIANCES = ("full", "diag", "spherical", "tied")
NOISE = ("singleton", "drop")
KMEANS_IMPLS = ("batched", "sklearn")
#: Clusters per user unless configured (PerSRV's ``n_clusters`` default too).
DEFAULT_N_CLUSTERS = 5


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
    n_clusters: int = DEFAULT_N_CLUSTERS
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
    labels = cluster_labels(points, cfg)
    return clusters_from_labels(points.user_ids, points.offsets, points.X, labels, cfg)


def cluster_labels(points: UserPoints, cfg: ClusterConfig = ClusterConfig()) -> np.ndarray:
    """Per point of ``points.X``, its cluster number within its user (-1 = HDBSCAN noise)."""
    X, offsets, users = points.X, points.offsets, points.user_ids
    sizes = np.diff(offsets)
    if cfg.algorithm == "kmeans" and cfg.kmeans_impl == "batched":
        with single_threaded_blas():
            return kmeans_batched(X, offsets, cfg.n_clusters, user_keys(users, cfg.seed),
                                  cfg.max_iter)
    labels = np.zeros(len(X), dtype=np.int64)
    seeds = (user_keys(users, cfg.seed) >> np.uint64(33)).astype(np.int64)
    for u in np.flatnonzero(sizes > 1).tolist():
        a, e = offsets[u], offsets[u + 1]
        labels[a:e] = _labels_one(X[a:e], cfg, int(seeds[u]))
    return labels


def fit_user_clusters(user_ids_of_clicks: Sequence[str], embedding_rows_of_clicks: Sequence[int],
                      embeddings: np.ndarray, cfg: ClusterConfig = ClusterConfig(),
                      inv_norms: np.ndarray | None = None) -> UserClusters:
    """Cluster each user's clicked-sticker embeddings: :func:`user_points` then
    :func:`cluster_users` (keep the points to re-cluster with other settings cheaply)."""
    return cluster_users(user_points(user_ids_of_clicks, embedding_rows_of_clicks, embeddings,
                                     inv_norms), cfg)


def clusters_from_labels(user_ids: np.ndarray, point_offsets: np.ndarray, X: np.ndarray,
                         labels: np.ndarray, cfg: ClusterConfig, euclidean: bool = False
                         ) -> UserClusters:
    """Centroids (unit mean of members), radii (largest member cosine distance, at least
    ``cfg.min_radius``) and sizes from per-point labels (-1 = noise, per ``cfg.noise``).
    ``euclidean``: centroids are the plain mean, radii the largest Euclidean member distance."""
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
    if euclidean:
        centroids = (sums / np.maximum(sizes, 1)[:, None]).astype(np.float32)
    else:
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    dots = np.empty(len(cl), dtype=np.float64)
    for a in range(0, len(cl), 1 << 14):  # chunked: no (points x dim) gathered copy
        b = min(len(cl), a + (1 << 14))
        if euclidean:  # "dots" = 1 - distance, so that 1 - dots is the distance
            dots[a:b] = 1.0 - np.linalg.norm(Xk[a:b] - centroids[cl[a:b]], axis=1)
        else:
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
