"""The naive per-candidate Python loop of ``persrv-bench perf`` (:func:`compare_naive`).

In the style of the reference implementation: for each request, in pure Python, the candidates
are the stickers holding a query token (inverted lists as dicts, as Elasticsearch's postings);
for each candidate its multi-field BM25 is computed from dict lookups (tf, document length, df),
plus the utility boost; the best ``pool`` are kept; then for each pooled sticker the cosine to
each of the user's centroids (embedding row converted to a list, as a search hit's ``_source``
would hold it), the coverage test and the best re-ranked score; the top k. Same formula,
statistics, boosts, clusters and tie-breaking as PerSRV, so its top k is checked against
PerSRV's. Setup (dict postings for the sample's terms, the users' centroids as lists) is timed
apart and not extrapolated.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from bench.perf.references import _is_top_k_of, _sample

#: Relative score difference treated as a tie for PerSRV's re-ranked float32 scores vs the
#: naive loop's float64 ones.
NAIVE_RTOL = 1e-5


class NaiveIndex:
    """Plain-Python state of the reference-style loop: per field, inverted lists
    ``{term: {sticker row: tf}}`` for the sampled queries' terms, document lengths, docCount,
    avgdl; the utility boost per sticker; the embedding matrix (rows read per hit)."""

    def __init__(self, persrv, query_tokens: list[list[str]]):
        idx = persrv.index_
        self.k1, self.b = float(idx.k1), float(idx.b)
        self.tf_factor = self.k1 + 1.0 if idx.k1_plus_one else 1.0
        need = {t for toks in query_tokens for t in toks}
        self.fields = []
        for f, boost in idx.fields.items():
            if boost <= 0:
                continue
            counts = idx.counts_[f]
            tf = counts.tf
            postings = {}
            for t in need:
                j = counts.vocab.get(t)
                if j is None:
                    continue
                a, e = tf.indptr[j], tf.indptr[j + 1]
                postings[t] = dict(zip(tf.indices[a:e].tolist(), tf.data[a:e].tolist()))
            self.fields.append((float(boost), postings, counts.dl.tolist(),
                                float(counts.doc_count), float(counts.avgdl)))
        boost = persrv.doc_boost_
        self.utility = None if boost is None else boost.tolist()
        self.embeddings = persrv.embeddings_
        self.weight = float(persrv.rerank_weight)
        self.mode = persrv.rerank_mode
        self.pool = persrv._pool_width()


def naive_recall(ix: NaiveIndex, tokens: list[str]) -> list[tuple[float, int]]:
    """The request's pool: (score, sticker row) best first, ties by row."""
    cand = set()
    for _, postings, _, _, _ in ix.fields:
        for t in tokens:
            p = postings.get(t)
            if p:
                cand.update(p)
    k1, b, util = ix.k1, ix.b, ix.utility
    scored = []
    for d in cand:
        s = 0.0
        for boost, postings, dl, n_docs, avgdl in ix.fields:
            for t in tokens:
                p = postings.get(t)
                if p is None:
                    continue
                tf = p.get(d)
                if tf is None:
                    continue
                n = len(p)
                idf = math.log(1.0 + (n_docs - n + 0.5) / (n + 0.5))
                s += boost * idf * tf * ix.tf_factor / (tf + k1 * (1.0 - b + b * dl[d] / avgdl))
        if util is not None:
            s += util[d]
        scored.append((s, d))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return scored[:ix.pool]


def naive_rerank(ix: NaiveIndex, pool: list[tuple[float, int]], centroids: list[list[float]],
                 radii: list[float]) -> list[tuple[float, int]]:
    """The pool re-ranked toward the user's centroids (pure Python): (score, sticker row)
    best first, ties by pool position."""
    if not centroids:
        return list(pool)
    w, emb, multiply = ix.weight, ix.embeddings, ix.mode == "multiply"
    out = []
    for pos, (s, d) in enumerate(pool):
        e = emb[d].tolist()
        norm = math.sqrt(sum(x * x for x in e))
        if norm > 0:
            e = [x / norm for x in e]
        best = None
        for c, r in zip(centroids, radii):
            cos = sum(x * y for x, y in zip(e, c))
            if 1.0 - cos <= r + 1e-5:
                v = s * (1.0 + w * cos) if multiply else s + w * cos
                if best is None or v > best:
                    best = v
        out.append((s if best is None else best, pos, d))
    out.sort(key=lambda x: (-x[0], x[1]))
    return [(v, d) for v, _, d in out]


def compare_naive(persrv, run, data, cfg, clock, ours: dict[str, Any]) -> dict[str, Any]:
    """The naive loop on a seeded sample of requests, checked against and timed against
    PerSRV (module doc)."""
    reqs = data.requests.requests
    idx = _sample(len(reqs), cfg.naive_sample, cfg.seed + 1)
    sample = [reqs[i] for i in idx]
    k = int(cfg.k)
    tokenizer = persrv.index_.tokenizer
    with clock.stage("naive", "setup"):
        tokens = tokenizer.batch([r.query for r in sample])
        ix = NaiveIndex(persrv, tokens)
        users = {}
        for r in sample:
            if r.user_id not in users:
                cl = persrv.clusters_
                c, rad = cl.of(r.user_id) if cl is not None else (np.zeros((0, 1)), [])
                users[r.user_id] = (np.asarray(c, dtype=np.float64).tolist(),
                                    np.asarray(rad, dtype=np.float64).tolist())
    t_recall = t_rerank = 0.0
    same = tied = overlap = clustered = 0
    row_of = {sid: i for i, sid in enumerate(persrv.sticker_ids_.tolist())}
    for r, toks in zip(sample, tokens):
        cents, radii = users[r.user_id]
        clustered += bool(cents)
        t0 = time.perf_counter()
        pool = naive_recall(ix, toks)
        t1 = time.perf_counter()
        ranked = naive_rerank(ix, pool, cents, radii)
        top = [d for _, d in ranked[:k]]
        t2 = time.perf_counter()
        t_recall += t1 - t0
        t_rerank += t2 - t1
        theirs = [row_of[s] for s in run.ids(r)]
        same += top == theirs
        if top == theirs:
            tied += 1
        else:
            exact = dict((d, v) for v, d in ranked)
            tied += _is_top_k_of(exact, theirs, k, rtol=NAIVE_RTOL)
        overlap += len(set(top) & set(theirs)) / max(len(theirs), 1)
    n = len(sample)
    n_all = len(reqs)
    distinct = len({r.query for r in reqs})
    per_req = (t_recall + t_rerank) / max(n, 1)
    naive_full = per_req * n_all
    st = ours["stages"]
    ours_search = ours["search_s"]
    ours_recall = st.get("recall", {}).get("seconds", 0.0)
    ours_rerank = st.get("rerank", {}).get("seconds", 0.0) + \
        st.get("results", {}).get("seconds", 0.0)
    naive_recall_full = t_recall / max(n, 1) * n_all
    naive_rerank_full = t_rerank / max(n, 1) * n_all
    naive_cached = t_recall / max(n, 1) * distinct + naive_rerank_full
    return {
        "sample_requests": n, "sample_with_clusters": clustered,
        "extrapolation": f"x{n_all / max(n, 1):.1f} (per request: {n} sampled of {n_all})",
        "setup_s": clock.seconds("naive", "setup"),
        "sample_s": t_recall + t_rerank, "per_request_s": per_req,
        "recall_per_request_s": t_recall / max(n, 1),
        "rerank_per_request_s": t_rerank / max(n, 1),
        "extrapolated_s": naive_full,
        "ours_search_s": ours_search,
        "speedup": naive_full / ours_search if ours_search > 0 else None,
        "speedup_recall": naive_recall_full / ours_recall if ours_recall > 0 else None,
        "speedup_rerank": naive_rerank_full / ours_rerank if ours_rerank > 0 else None,
        "speedup_if_naive_cached_queries": naive_cached / ours_search if ours_search else None,
        "agreement": {"identical_top_k": same, "identical_up_to_ties": tied, "requests": n,
                      "mean_overlap_at_k": overlap / max(n, 1)},
    }
