"""Per-user style clusters and the personalised re-rank (bench/persrv/clustering.py, kmeans.py,
rerank.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.persrv.clustering import (ALGORITHMS, ClusterConfig, UserClusters,
                                     fit_user_clusters, inverse_norms)
from bench.persrv.kmeans import kmeans_batched, user_keys
from bench.persrv.rerank import rerank


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def blobs(rng, centers, per, spread=0.05):
    pts = np.concatenate([c + rng.normal(0, spread, (per, len(c))) for c in centers])
    return unit(pts).astype(np.float32)


# ----------------------------------------------------------------------------------- clusters

def test_edge_cases_no_history_single_duplicates_and_k_above_history():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 6)).astype(np.float32) * 3
    users = ["single", "dup", "dup", "dup", "dup", "few", "few", "few", "unknown-sticker"]
    rows = [4, 7, 7, 7, 8, 1, 2, 3, -1]
    cl = fit_user_clusters(users, rows, emb, ClusterConfig(n_clusters=5))
    assert cl.user_ids.tolist() == ["dup", "few", "single"]  # no clicks -> not a user here
    assert cl.user_index(["single", "nobody", "few"]).tolist() == [2, -1, 1]
    c, r = cl.of("single")
    assert c.shape == (1, 6) and r.tolist() == [0.0]
    assert np.allclose(c[0], unit(emb[4]), atol=1e-6)
    c, r = cl.of("dup")                                       # sticker 7 counted once
    assert len(c) == 2 and sorted(cl.sizes[cl.offsets[0]:cl.offsets[1]].tolist()) == [1, 1]
    c, r = cl.of("few")                                       # k capped at 3 distinct stickers
    assert len(c) == 3 and np.allclose(r, 0, atol=1e-6)
    assert cl.of("nobody")[0].shape == (0, 6)
    wide = fit_user_clusters(users, rows, emb, ClusterConfig(min_radius=0.2))
    assert (wide.radii >= 0.2).all()


def test_empty_input():
    cl = fit_user_clusters([], [], np.zeros((3, 4), np.float32))
    assert len(cl) == 0 and cl.centroids.shape == (0, 4)
    ids, sc = rerank(np.array([[0, 1]]), np.array([[2.0, 1.0]]), np.array([-1]),
                     np.eye(3, 4, dtype=np.float32), cl, k=2)
    assert ids.tolist() == [[0, 1]] and sc.tolist() == [[2.0, 1.0]]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_gives_covering_unit_clusters(algorithm):
    rng = np.random.default_rng(1)
    d = 8
    centers = [np.eye(d)[i] * 3 for i in range(3)]
    emb = np.concatenate([blobs(rng, centers, 10), rng.normal(size=(5, d)).astype(np.float32)])
    users, rows = [], []
    for u in range(6):
        picked = rng.choice(len(emb), size=int(rng.integers(1, 25)), replace=True)
        users += [f"u{u}"] * len(picked)
        rows += picked.tolist()
    cfg = ClusterConfig(algorithm=algorithm, n_clusters=3, min_cluster_size=2, seed=3)
    cl = fit_user_clusters(users, rows, emb, cfg)
    assert len(cl) == 6
    assert np.allclose(np.linalg.norm(cl.centroids, axis=1), 1, atol=1e-5)
    for u in range(6):
        mine = np.unique([r for uu, r in zip(users, rows) if uu == f"u{u}"])
        c, r = cl.of(f"u{u}")
        a, e = cl.offsets[u], cl.offsets[u + 1]
        assert cl.sizes[a:e].sum() == len(mine)              # every distinct sticker, once
        assert 1 <= len(c) <= (len(mine) if algorithm == "hdbscan" else min(3, len(mine)))
        cos = unit(emb[mine]) @ c.T.astype(np.float64)
        # every member is covered by some centroid of its user
        assert ((1 - cos) <= r[None, :] + 1e-5).any(axis=1).all()
    again = fit_user_clusters(users, rows, emb, cfg)
    assert np.array_equal(again.centroids, cl.centroids)     # deterministic


def test_hdbscan_noise_singleton_or_dropped():
    rng = np.random.default_rng(2)
    d = 6
    pts = np.concatenate([blobs(rng, [np.eye(d)[0]], 6, 0.02), blobs(rng, [np.eye(d)[1]], 6, 0.02),
                          unit(-np.eye(d)[0:1] - np.eye(d)[1:2]).astype(np.float32)])  # far out
    users = ["u"] * len(pts)
    rows = list(range(len(pts)))
    base = dict(algorithm="hdbscan", min_cluster_size=3, allow_single_cluster=False)
    single = fit_user_clusters(users, rows, pts, ClusterConfig(**base, noise="singleton"))
    dropped = fit_user_clusters(users, rows, pts, ClusterConfig(**base, noise="drop"))
    assert sorted(single.sizes.tolist()) == [1, 6, 6]
    assert sorted(dropped.sizes.tolist()) == [6, 6]
    c, r = single.of("u")
    lone = int(np.flatnonzero(single.sizes == 1)[0])
    assert r[lone] == 0 and np.allclose(c[lone], pts[-1], atol=1e-6)


def test_batched_kmeans_equals_sklearn_lloyd_from_the_same_init():
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(4)
    d = 8
    groups, offsets = [], [0]
    for u in range(12):
        centers = [rng.normal(size=d) * 4 for _ in range(3)]
        pts = blobs(rng, centers, int(rng.integers(2, 12)), spread=0.6)
        groups.append(pts)
        offsets.append(offsets[-1] + len(pts))
    X = np.concatenate(groups)
    offsets = np.array(offsets)
    keys = user_keys([f"u{u}" for u in range(12)], seed=0)
    labels, inits = kmeans_batched(X, offsets, 4, keys, max_iter=300, return_init=True)
    for u in range(12):
        pts = X[offsets[u]:offsets[u + 1]]
        k = len(inits[u])
        assert k == min(4, len(pts))
        ref = KMeans(n_clusters=k, init=inits[u].astype(np.float64), n_init=1, tol=0,
                     max_iter=300, algorithm="lloyd").fit(pts.astype(np.float64))
        assert labels[offsets[u]:offsets[u + 1]].tolist() == ref.labels_.tolist(), u
    # one user alone gets the same clustering as inside the batch (own random stream)
    for u in (0, 5):
        alone = kmeans_batched(X[offsets[u]:offsets[u + 1]], np.array([0, offsets[u + 1] - offsets[u]]),
                               4, keys[u:u + 1], max_iter=300)
        assert alone.tolist() == labels[offsets[u]:offsets[u + 1]].tolist()


def test_batched_and_sklearn_kmeans_agree_on_separated_styles():
    rng = np.random.default_rng(5)
    d = 8
    emb = blobs(rng, [np.eye(d)[i] * 5 for i in range(3)], 8, 0.05)  # 24 stickers, 3 styles
    users = [f"u{i % 4}" for i in range(80)]
    rows = rng.integers(0, 24, 80).tolist()
    a = fit_user_clusters(users, rows, emb, ClusterConfig(n_clusters=3))
    b = fit_user_clusters(users, rows, emb, ClusterConfig(n_clusters=3, kmeans_impl="sklearn"))
    for u in a.user_ids:
        ca, cb = a.of(u)[0], b.of(u)[0]
        assert len(ca) == len(cb) == 3
        assert np.allclose(np.sort(ca @ np.eye(d)[:3].T, axis=0),
                           np.sort(cb @ np.eye(d)[:3].T, axis=0), atol=1e-5)


# ------------------------------------------------------------------------------------- rerank

def hand_clusters() -> tuple[np.ndarray, UserClusters]:
    deg = math.radians
    emb = np.array([[1, 0], [-1, 0], [math.cos(deg(20)), math.sin(deg(20))], [0.5, math.sqrt(3) / 2],
                    [0, 1]], dtype=np.float32) * np.array([[2.0], [1.0], [3.0], [1.0], [0.5]],
                                                          dtype=np.float32)  # norms don't matter
    clusters = UserClusters(
        user_ids=np.array(["A", "C"], dtype=object), offsets=np.array([0, 2, 3]),
        centroids=np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32),
        radii=np.array([0.1, 0.7, 0.0], dtype=np.float32), sizes=np.array([3, 2, 1]))
    return emb, clusters


def test_rerank_hand_example_both_modes():
    """Stickers 0 (1,0), 1 (-1,0), 2 (20 deg), 3 (60 deg), 4 (0,1). User A: centroid (1,0)
    radius 0.1 (covers cos >= 0.9: stickers 0, 2) and (0,1) radius 0.7 (covers cos >= 0.3:
    stickers 2, 3, 4); sticker 2 is covered by both and keeps the better (cos 20 deg)."""
    emb, clusters = hand_clusters()
    pool = np.array([[0, 1, 2, 3, 4]] * 3, dtype=np.int32)
    scores = np.array([[1.0, 0.98, 0.9, 0.8, 0.7]] * 3, dtype=np.float32)
    users = np.array([0, -1, 1])  # A, unknown, C
    c20, c30 = math.cos(math.radians(20)), math.cos(math.radians(30))
    ids, sc = rerank(pool, scores, users, emb, clusters, weight=0.3, mode="multiply")
    want = {0: 1.3, 2: 0.9 * (1 + 0.3 * c20), 3: 0.8 * (1 + 0.3 * c30), 1: 0.98, 4: 0.7 * 1.3}
    assert ids[0].tolist() == [0, 2, 3, 1, 4]
    assert np.allclose(sc[0], [want[i] for i in ids[0]], rtol=1e-6)
    assert ids[1].tolist() == [0, 1, 2, 3, 4] and np.array_equal(sc[1], scores[1])
    assert ids[2].tolist() == [1, 0, 2, 3, 4] and sc[2, 0] == pytest.approx(0.98 * 1.3)
    ids, sc = rerank(pool, scores, users, emb, clusters, weight=0.3, mode="sum", k=4)
    want = {0: 1.3, 2: 0.9 + 0.3 * c20, 3: 0.8 + 0.3 * c30, 4: 1.0, 1: 0.98}
    assert ids[0].tolist() == [0, 2, 3, 4]
    assert np.allclose(sc[0], [want[i] for i in ids[0]], rtol=1e-6)
    assert ids.shape == (3, 4) and ids[1].tolist() == [0, 1, 2, 3]


def slow_rerank(pool_ids, pool_scores, users, emb, clusters, w, mode, k, never_lower=False):
    out_ids, out_sc = [], []
    for i in range(len(users)):
        entries = []
        for p, (sid, s) in enumerate(zip(pool_ids[i], pool_scores[i])):
            if sid < 0:
                continue
            new = float(s)
            if users[i] >= 0:
                a, e = clusters.offsets[users[i]], clusters.offsets[users[i] + 1]
                v = emb[sid] / np.linalg.norm(emb[sid])
                best = None
                for c in range(a, e):
                    cos = float(v @ clusters.centroids[c])
                    if 1 - cos <= clusters.radii[c] + 1e-5:
                        cand = s * (1 + w * cos) if mode == "multiply" else s + w * cos
                        best = cand if best is None else max(best, cand)
                if best is not None:
                    new = max(best, new) if never_lower else best
            entries.append((-new, p, sid))
        entries.sort()
        top = entries[:k]
        out_ids.append([sid for _, _, sid in top] + [-1] * (k - len(top)))
        out_sc.append([-n for n, _, _ in top] + [-np.inf] * (k - len(top)))
    return np.array(out_ids), np.array(out_sc)


@pytest.mark.parametrize("mode", ["multiply", "sum"])
@pytest.mark.parametrize("weight,k,stage_one,shuffle", [
    (0.3, None, 64, False), (0.3, 7, 2, False), (0.3, 7, 64, True), (1.5, 3, 2, True),
    (-0.4, 10, 3, False), (-1.5, 5, 2, False)])
def test_vectorised_rerank_equals_slow_reference(mode, weight, k, stage_one, shuffle, monkeypatch):
    """Against a plain loop: full re-rank and top-k, both stages, pools in any order."""
    import bench.persrv.rerank as pers
    rng = np.random.default_rng(7)
    n_st, d, P, nq = 300, 5, 40, 25
    emb = rng.normal(size=(n_st, d)).astype(np.float32)
    users = [f"u{i % 9}" for i in range(400)]
    rows = rng.integers(0, n_st, 400)
    clusters = fit_user_clusters(users, rows, emb, ClusterConfig(n_clusters=4, min_radius=0.3))
    pool_ids = np.stack([rng.choice(n_st, P, replace=False) for _ in range(nq)]).astype(np.int32)
    pool_sc = np.sort(rng.gamma(2.0, 1.0, (nq, P)).astype(np.float32), axis=1)[:, ::-1].copy()
    pool_ids[3, 30:] = -1
    pool_sc[3, 30:] = -np.inf
    if shuffle:  # correctness must not depend on the pool being sorted
        perm = np.argsort(rng.random((nq, P)), axis=1)
        pool_ids = np.take_along_axis(pool_ids, perm, axis=1)
        pool_sc = np.take_along_axis(pool_sc, perm, axis=1)
    req_users = clusters.user_index([f"u{rng.integers(0, 12)}" for _ in range(nq)])
    assert (req_users == -1).any() and (req_users >= 0).any()
    kk = P if k is None else k
    want_ids, want_sc = slow_rerank(pool_ids, pool_sc, req_users, emb, clusters, weight, mode, kk)
    monkeypatch.setattr(pers, "BLOCK_FLOATS", 200)    # many small blocks
    monkeypatch.setattr(pers, "RERANK_CHUNK", 4)
    monkeypatch.setattr(pers, "STAGE_ONE", stage_one)
    ids, sc = rerank(pool_ids, pool_sc, req_users, emb, clusters, weight=weight, mode=mode, k=k)
    assert ids.shape == (nq, kk)
    # rows of users without clusters are the pool's first k: pools must come best first
    rows = req_users >= 0 if shuffle else slice(None)
    assert ids[rows].tolist() == want_ids[rows].tolist()
    assert np.allclose(sc[rows], want_sc[rows], rtol=1e-5)
    # pool_row indirection: requests sharing pools
    prow = rng.integers(0, nq, 10)
    ids2, sc2 = rerank(pool_ids, pool_sc, req_users[:10], emb, clusters, weight=weight,
                       mode=mode, k=k, pool_row=prow, inv_norms=inverse_norms(emb))
    w_ids, _ = slow_rerank(pool_ids[prow], pool_sc[prow], req_users[:10], emb, clusters, weight,
                           mode, kk)
    rows = req_users[:10] >= 0 if shuffle else slice(None)
    assert ids2[rows].tolist() == w_ids[rows].tolist()


def test_rerank_rejects_bad_mode():
    emb, clusters = hand_clusters()
    with pytest.raises(ValueError, match="mode"):
        rerank(np.zeros((1, 1), np.int32), np.ones((1, 1)), np.array([0]), emb, clusters,
               mode="max")


@pytest.mark.parametrize("mode", ["multiply", "sum"])
@pytest.mark.parametrize("weight", [0.3, -0.8])
def test_never_lower_rerank_only_raises_and_equals_slow_reference(mode, weight, monkeypatch):
    """never_lower keeps max(score, best); top-k over scored entries only, identical to a loop."""
    import bench.persrv.rerank as rr
    rng = np.random.default_rng(3)
    n_st, d, P, nq, k = 200, 4, 30, 20, 6
    emb = rng.normal(size=(n_st, d)).astype(np.float32)
    users = [f"u{i % 5}" for i in range(150)]
    clusters = fit_user_clusters(users, rng.integers(0, n_st, 150), emb,
                                 ClusterConfig(n_clusters=3, min_radius=0.5))
    pool_ids = np.stack([rng.choice(n_st, P, replace=False) for _ in range(nq)]).astype(np.int32)
    pool_sc = np.sort(rng.gamma(2.0, 1.0, (nq, P)).astype(np.float32), axis=1)[:, ::-1].copy()
    req = clusters.user_index([f"u{i % 6}" for i in range(nq)])
    monkeypatch.setattr(rr, "STAGE_ONE", 2)
    ids, sc = rerank(pool_ids, pool_sc, req, emb, clusters, weight=weight, mode=mode, k=k,
                     never_lower=True)
    want_ids, want_sc = slow_rerank(pool_ids, pool_sc, req, emb, clusters, weight, mode, k,
                                    never_lower=True)
    assert ids.tolist() == want_ids.tolist()
    assert np.allclose(sc, want_sc, rtol=1e-5)
    # every returned score is at least the sticker's recall score
    recall = {(i, int(s)): float(v) for i in range(nq) for s, v in zip(pool_ids[i], pool_sc[i])}
    assert all(sc[i, j] >= recall[(i, int(ids[i, j]))] - 1e-6 for i in range(nq) for j in range(k))
    plain, _ = rerank(pool_ids, pool_sc, req, emb, clusters, weight=weight, mode=mode, k=k)
    if weight < 0:  # a negative weight lowers covered stickers unless never_lower
        assert plain.tolist() != ids.tolist()


def test_standardized_geometry_equals_a_plain_loop():
    """The reference geometry: per-user StandardScaler, k-means there, Euclidean radius and
    coverage, cosine boost, never-lower; against sklearn's StandardScaler and a loop."""
    from sklearn.preprocessing import StandardScaler

    from bench.persrv.clustering import user_points
    from bench.persrv.standardized import rerank_standardized, standardized_clusters
    rng = np.random.default_rng(5)
    n_st, d, P, k = 60, 3, 12, 5
    emb = rng.normal(size=(n_st, d)).astype(np.float32)
    users = ["a"] * 8 + ["b"] * 3
    rows = np.r_[np.arange(8), [20, 21, 22]]
    cl = standardized_clusters(user_points(users, rows, emb), emb, ClusterConfig(n_clusters=2))
    sc = StandardScaler().fit(emb[rows[:8]].astype(np.float64))
    assert np.allclose(cl.mean[0], sc.mean_) and np.allclose(cl.scale[0], sc.scale_)
    Z = sc.transform(emb[rows[:8]])
    a, e = cl.offsets[0], cl.offsets[1]
    # every member is within its cluster's radius of one centroid
    dist = np.linalg.norm(Z[:, None, :] - cl.centroids[a:e][None], axis=2)
    assert (dist.min(axis=1) <= cl.radii[a:e].max() + 1e-5).all()
    pool_ids = np.stack([rng.permutation(n_st)[:P] for _ in range(2)]).astype(np.int32)
    pool_sc = np.sort(rng.gamma(2.0, 1.0, (2, P)).astype(np.float32), axis=1)[:, ::-1].copy()
    ids, scores = rerank_standardized(pool_ids, pool_sc, np.array([0, 1]), emb, cl, weight=0.3,
                                      k=k, never_lower=True)
    for i, u in enumerate([0, 1]):
        a, e = cl.offsets[u], cl.offsets[u + 1]
        want = []
        for p, (sid, s) in enumerate(zip(pool_ids[i], pool_sc[i])):
            z = (emb[sid] - cl.mean[u]) / cl.scale[u]
            best = float(s)
            for c, r in zip(cl.centroids[a:e], cl.radii[a:e]):
                if np.linalg.norm(z - c) <= r * (1 + 1e-5) + 1e-5:
                    cos = z @ c / (np.linalg.norm(z) * np.linalg.norm(c))
                    best = max(best, float(s) * (1 + 0.3 * cos))
            want.append((-best, p, int(sid)))
        want.sort()
        assert ids[i].tolist() == [sid for _, _, sid in want[:k]]
        assert np.allclose(scores[i], [-b for b, _, _ in want[:k]], rtol=1e-5)
    # the user's own history stickers are covered and raised (cos > 0 with their centroid)
    assert (scores >= pool_sc[:, :1].min() - 1e-6).any()
