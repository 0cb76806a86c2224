"""The slow references of ``persrv-bench perf``: rank-bm25, and a naive per-candidate loop.

**rank-bm25** (:func:`compare_rank_bm25`). The ``bm25`` baseline is fitted again with
``backend="rank-bm25"`` (``BM25Okapi``: one Python pass over every document per query token) and
run on a seeded sample of the test requests; its time is extrapolated to all requests by
*query scorings*, the unit of work of both backends: the pipeline answers requests in batches
(``batch_size``, as the runner) and each batch scores its distinct queries once. Top-k
identity is checked under one formula: rank-bm25 scores with

    idf(t) = ln((N - n + 0.5) / (n + 0.5)), negative values floored at 0.25 * mean idf,
    tf part = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)),

Lucene (the baseline, bm25s ``method="lucene"``) with idf = ln(1 + (N - n + 0.5) / (n + 0.5)) and
no (k1 + 1). Both store one weight per (term, document), idf(t) times a tf part that is the same
up to the constant (k1 + 1), so the bm25s index is put under rank-bm25's formula by scaling each
term's row by (k1 + 1) idf_okapi(t) / idf_lucene(t); that index is then searched by the
baseline's own bm25s code path (sparse product, top-k). Compared per sampled distinct query:
the ordered top-k sticker ids (``identical``); where they differ, whether the bm25s list is still
an exact top-k under rank-bm25's float64 scores up to float32 rounding (``identical_up_to_ties``:
scores within 1e-6 relative of each other are ties). The Lucene ranking as run is compared too,
for information (``lucene_vs_rank_bm25``): both idfs fall as n grows, so single-term queries
rank alike, but the ratio of the two idfs differs between terms, so multi-term queries can
reorder (and terms in more than N/2 documents get rank-bm25's floor).

**Naive loop** (:func:`compare_naive`), in the style of the reference implementation: for each
request, in pure Python, the candidates are the stickers holding a query token (inverted lists
as dicts, as Elasticsearch's postings); for each candidate its multi-field BM25 is computed from
dict lookups (tf, document length, df), plus the utility boost; the best ``pool`` are kept; then
for each pooled sticker the cosine to each of the user's centroids (embedding row converted to
a list, as a search hit's ``_source`` would hold it), the coverage test and the best re-ranked
score; the top k. Same formula, statistics, boosts, clusters and tie-breaking as PerSRV, so its
top k is checked against PerSRV's. Setup (dict postings for the sample's terms, the users'
centroids as lists) is timed apart and not extrapolated.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np

#: Relative score difference treated as a tie (float32 weights summed over a few terms).
TIE_RTOL = 1e-6
#: The same for PerSRV's re-ranked float32 scores vs the naive loop's float64 ones.
NAIVE_RTOL = 1e-5


def _sample(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``n`` of ``n_total``."""
    n = min(int(n), n_total)
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.choice(n_total, size=n, replace=False))


# ---------------------------------------------------------------------------------- rank-bm25

def okapi_idf(doc_freq: np.ndarray, n_docs: int, epsilon: float = 0.25) -> np.ndarray:
    """rank-bm25's ``BM25Okapi`` idf per term: ln((N - n + 0.5) / (n + 0.5)), negative values
    replaced by ``epsilon`` times the mean idf over the vocabulary."""
    df = np.asarray(doc_freq, dtype=np.float64)
    idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
    out = idf.copy()
    out[idf < 0] = epsilon * idf.mean() if len(idf) else 0.0
    return out


def lucene_idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    df = np.asarray(doc_freq, dtype=np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def under_okapi_formula(bm25) -> Any:
    """A copy of a fitted bm25s-backend ``bm25`` retriever whose index holds rank-bm25's
    weights (each term row scaled by (k1 + 1) idf_okapi / idf_lucene); searched by the same
    code."""
    import scipy.sparse as sp
    index = bm25.index_
    n_docs = index.shape[1]
    df = np.diff(index.indptr)
    scale = (bm25.k1 + 1.0) * okapi_idf(df, n_docs) / lucene_idf(df, n_docs)
    data = (index.data.astype(np.float64) * np.repeat(scale, df)).astype(np.float32)
    same = copy.copy(bm25)
    same.index_ = sp.csr_matrix((data, index.indices, index.indptr), shape=index.shape)
    return same


def _is_top_k_of(exact: dict[int, float], got: list[int], k: int, rtol: float) -> bool:
    """Whether ``got`` is a best-first top-k of the float64 scores ``exact`` (item -> score),
    scores within ``rtol`` (relative to the largest) counting as ties in any order."""
    if not exact:
        return not got
    want = min(k, len(exact))
    if len(got) != want or len(set(got)) != want or any(g not in exact for g in got):
        return False
    values = np.fromiter(exact.values(), dtype=np.float64, count=len(exact))
    tol = rtol * float(np.abs(values).max())
    s = np.array([exact[g] for g in got], dtype=np.float64)
    if (np.diff(s) > tol).any():                    # order: non-increasing up to ties
        return False
    kth = np.sort(values)[::-1][want - 1]
    return bool((s >= kth - tol).all())             # nothing better was left out


def _is_top_k_under(exact: np.ndarray, got: list[int], k: int) -> bool:
    """:func:`_is_top_k_of` for a dense score vector (entries > 0 only, as BM25 results)."""
    pos = np.flatnonzero(exact > 0)
    return _is_top_k_of(dict(zip(pos.tolist(), exact[pos].tolist())), got, k, TIE_RTOL)


def compare_rank_bm25(bm25, data, cfg, clock, ours: dict[str, Any]) -> dict[str, Any]:
    """rank-bm25 vs the bm25s baseline (module doc): timings and the top-k identity check."""
    from bench.registry import get_params, make_retriever
    from bench.retrieval import iter_batches
    reqs = data.requests.requests
    idx = _sample(len(reqs), cfg.rank_bm25_sample, cfg.seed)
    sample = [reqs[i] for i in idx]
    # the pipeline's units of work: bm25 scores each batch's distinct queries once
    scorings = sum(len({r.query for r in b}) for b in iter_batches(reqs, cfg.batch_size))
    queries = list(dict.fromkeys(r.query for r in sample))
    k = int(cfg.k)
    params = {p: v for p, v in get_params(bm25).items() if p != "backend"}
    rb = make_retriever("bm25", {**params, "backend": "rank-bm25"})
    with clock.stage("rank-bm25", "index"):
        rb.fit(data.view)
    with clock.stage("rank-bm25", "recall (sample)"):
        run_rb = rb.search(sample, k)
    with clock.stage("bm25", "recall (sample)"):
        run_ours = bm25.search(sample, k)
    same = under_okapi_formula(bm25)
    run_same = same.search(sample, k)

    # the okapi idf used above is rank-bm25's own
    vocab = bm25.vocab_
    terms = list(vocab)
    df = np.diff(bm25.index_.indptr)
    mine = okapi_idf(df, bm25.index_.shape[1])[[vocab[t] for t in terms]]
    theirs = np.array([rb.index_.idf.get(t, np.nan) for t in terms])
    idf_diff = float(np.nanmax(np.abs(mine - theirs))) if len(terms) else 0.0

    first = {}
    for r in sample:
        first.setdefault(r.query, r)
    pos_of = {sid: i for i, sid in enumerate(bm25.sticker_ids_[bm25.doc_rows_].tolist())}
    strict = tied = lucene_same = 0
    max_rel = 0.0
    mismatches = []
    tokens = dict(zip(queries, bm25.tokenizer_.batch(queries)))
    for q in queries:
        r = first[q]
        a, b = run_rb[r], run_same[r]
        ids_a, ids_b = [s for s, _ in a], [s for s, _ in b]
        lucene_same += ids_a == run_ours.ids(r)
        common = dict(a)
        for sid, sc in b:
            if sid in common and common[sid] > 0:
                max_rel = max(max_rel, abs(sc - common[sid]) / abs(common[sid]))
        if ids_a == ids_b:
            strict += 1
            tied += 1
            continue
        exact = np.asarray(rb.index_.get_scores(tokens[q]), dtype=np.float64)
        ok = _is_top_k_under(exact, [pos_of[s] for s in ids_b], k)
        tied += ok
        if not ok and len(mismatches) < 5:
            mismatches.append(q)
    n_q = len(queries)
    t_rb = clock.seconds("rank-bm25", "recall (sample)")
    t_ours_sample = clock.seconds("bm25", "recall (sample)")
    rb_full = t_rb * scorings / max(n_q, 1)
    ours_search = ours["search_s"]
    rb_fit = clock.seconds("rank-bm25", "index")
    return {
        "sample_requests": len(sample), "sample_distinct_queries": n_q,
        "query_scorings_all": scorings,
        "extrapolation": f"x{scorings / max(n_q, 1):.2f}: {n_q} distinct queries scored on "
                         f"the sample, {scorings} in the pipeline ({len(reqs)} requests in "
                         f"batches of {cfg.batch_size}, each batch's distinct queries scored "
                         f"once)",
        "rank_bm25_fit_s": rb_fit, "rank_bm25_search_sample_s": t_rb,
        "rank_bm25_search_extrapolated_s": rb_full,
        "bm25s_fit_s": ours["fit_s"], "bm25s_search_s": ours_search,
        "bm25s_search_sample_s": t_ours_sample,
        "speedup_search": rb_full / ours_search if ours_search > 0 else None,
        "speedup_search_same_sample": t_rb / t_ours_sample if t_ours_sample > 0 else None,
        "speedup_end_to_end": (rb_fit + rb_full) / (ours["fit_s"] + ours_search),
        "rank_bm25_peak_rss_mb": max(v["peak_rss_mb"] for v in clock.of("rank-bm25").values()),
        "identity": {
            "compared": "per sampled distinct query, ordered top-k sticker ids: rank-bm25 vs "
                        "the bm25s index rescaled to rank-bm25's formula (okapi idf with "
                        "0.25 x mean-idf floor, x (k1 + 1)), same search code",
            "queries": n_q, "identical": strict, "identical_up_to_ties": tied,
            "fraction": tied / n_q if n_q else 1.0,
            "max_rel_score_diff": max_rel, "okapi_idf_max_abs_diff": idf_diff,
            "mismatched_queries": mismatches},
        "lucene_vs_rank_bm25": {
            "queries": n_q, "identical": lucene_same,
            "note": "the baseline as run (Lucene idf) vs rank-bm25: equal rankings only where "
                    "the idf difference cannot reorder (e.g. single-term queries, all terms in "
                    "fewer than N/2 documents)"},
    }


# --------------------------------------------------------------------------------- naive loop

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
