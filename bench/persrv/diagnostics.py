"""What PerSRV's personalisation actually did in a run (issue 23.3): is it style, or re-finding?

With a few distinct history stickers per user most k-means clusters hold one sticker and have
radius 0, so the re-rank can only lift stickers the user already sent. These figures show it:

- cluster shape (:func:`cluster_stats`): users with clusters, clusters per user, distinct
  history stickers per user (median), the share of singleton clusters and of zero-radius
  clusters, and radius quantiles (cosine distance; Euclidean in the standardised geometry);
- where the re-rank lands (:func:`boost_counts`): of the stickers a search returned for users
  with clusters, the share covered by one of the user's clusters (the ones the re-rank
  changes), and of those the share that are the user's *own* earlier stickers vs new ones.

:func:`persrv_diagnostics` joins both into one flat ``dict[str, float]`` (PerSRV's
``diagnostics()``; the runner logs each key ``k`` as the child metric ``diag_<k>``).
"""

from __future__ import annotations

import numpy as np

from bench.persrv.rerank import COVER_EPS

RADIUS_QUANTILES = (10, 25, 50, 75, 90)
COUNT_KEYS = ("returned", "boosted", "boosted_own")


def cluster_stats(clusters, points=None) -> dict[str, float]:
    """Shape of every user's clusters (module doc); ``points``: the
    :class:`~bench.persrv.clustering.UserPoints` they were fitted on (history sizes)."""
    out: dict[str, float] = {}
    n = clusters.n_clusters
    users = int((n > 0).sum())
    out["clustered_users"] = float(users)
    out["clusters_per_user_mean"] = float(n[n > 0].mean()) if users else 0.0
    if points is not None and len(points.offsets) > 1:
        out["history_stickers_median"] = float(np.median(np.diff(points.offsets)))
    sizes = np.asarray(clusters.sizes)
    radii = np.asarray(clusters.radii, dtype=np.float64)
    total = len(sizes)
    out["singleton_cluster_share"] = float((sizes == 1).mean()) if total else 0.0
    out["zero_radius_share"] = float((radii <= COVER_EPS).mean()) if total else 0.0
    for q in RADIUS_QUANTILES:
        out[f"radius_p{q}"] = float(np.percentile(radii, q)) if total else 0.0
    out["radius_max"] = float(radii.max()) if total else 0.0
    return out


def boost_counts(clusters, points, embeddings: np.ndarray, inv_norms: np.ndarray,
                 user_ids, ids: np.ndarray) -> dict[str, int]:
    """Counts over the returned stickers (``ids``: rows into ``embeddings``, one row of the
    result per user in ``user_ids``, -1 padding) of users with clusters: ``returned``,
    ``boosted`` (covered by a cluster of the user: ``1 - cos <= radius``, cosine geometry),
    ``boosted_own`` (of those, a sticker in the user's fitting clicks)."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    cu = clusters.user_index(list(user_ids))
    pu = np.searchsorted(points.user_ids, np.asarray(list(user_ids), dtype=object)) \
        if len(points.user_ids) else np.zeros(len(cu), np.int64)
    for r in np.flatnonzero(cu >= 0):
        row = ids[r][ids[r] >= 0]
        if not len(row):
            continue
        a, e = clusters.offsets[cu[r]], clusters.offsets[cu[r] + 1]
        unit = embeddings[row].astype(np.float32) * inv_norms[row, None]
        cos = unit @ clusters.centroids[a:e].T
        covered = ((1.0 - cos) <= clusters.radii[a:e][None, :] + COVER_EPS).any(axis=1)
        p = int(pu[r])
        own_rows = points.rows[points.offsets[p]:points.offsets[p + 1]] \
            if p < len(points.user_ids) and points.user_ids[p] == user_ids[r] else row[:0]
        own = np.isin(row, own_rows)
        counts["returned"] += len(row)
        counts["boosted"] += int(covered.sum())
        counts["boosted_own"] += int((covered & own).sum())
    return counts


def add_counts(a: dict[str, int] | None, b: dict[str, int]) -> dict[str, int]:
    """A new dict with ``a`` + ``b`` (``a`` None: a copy of ``b``)."""
    return {k: (a or {}).get(k, 0) + b.get(k, 0) for k in COUNT_KEYS}


def persrv_diagnostics(clusters, points=None, counts: dict[str, int] | None = None
                       ) -> dict[str, float]:
    """:func:`cluster_stats` plus, when searches were counted, ``boosted_share`` (of returned
    stickers), ``boost_own_share`` and ``boost_new_share`` (of boosted ones; NaN without any)."""
    if clusters is None:
        return {}
    out = cluster_stats(clusters, points)
    if counts and counts.get("returned"):
        boosted = counts["boosted"]
        out["boosted_share"] = boosted / counts["returned"]
        out["boost_own_share"] = counts["boosted_own"] / boosted if boosted else float("nan")
        out["boost_new_share"] = 1.0 - out["boost_own_share"] if boosted else float("nan")
    return out
