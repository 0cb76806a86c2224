"""The BM25 references of ``persrv-bench perf``: rank-bm25 (sampled, with a top-k identity check
under its formula) and the fast peers bm25s (numba backend) and tantivy (all requests).

**rank-bm25** (:func:`compare_rank_bm25`). The ``bm25`` baseline is fitted again with
``backend="rank-bm25"`` (``BM25Okapi``: one Python pass over every document per query token) and
run on a seeded sample of the test requests; its time is extrapolated to all requests by
*query scorings*, the unit of work of both backends: the pipeline answers requests in batches
(``batch_size``, as the runner) and each batch scores its distinct queries once. Top-k
identity is checked under one formula: rank-bm25 scores with

    idf(t) = ln((N - n + 0.5) / (n + 0.5)), negative values floored at 0.25 * mean idf,
    tf part = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)),

Lucene (the baseline) with idf = ln(1 + (N - n + 0.5) / (n + 0.5)) and no (k1 + 1). Both store
one weight per (term, document), idf(t) times a tf part that is the same up to the constant
(k1 + 1), so the baseline's index (a term x document CSR, ``index_``) is put under rank-bm25's
formula by scaling each term's row by (k1 + 1) idf_okapi(t) / idf_lucene(t); that index is then
searched by the baseline's own code path. Compared per sampled distinct query: the ordered top-k
sticker ids (``identical``); where they differ, whether the list is still an exact top-k under
rank-bm25's float64 scores up to float32 rounding (``identical_up_to_ties``). The Lucene ranking
as run is compared too, for information (``lucene_vs_rank_bm25``).

**Peers** (:func:`compare_peers`): bm25s with its numba backend (``BM25(backend="numba")``,
Lucene formula) and tantivy (the Rust search engine: a text field with the ``whitespace``
tokenizer, BM25 top-k of a boolean OR of term queries). Both index the documents the baseline
indexes, tokenised by the baseline's own tokenizer and handed over pre-tokenised (token ids for
bm25s, tokens joined by spaces for tantivy), so the vocabularies match; that tokenisation and
the queries' are *not* counted in their times (the baseline's fit and search include its own).
Each answers every query the pipeline scores (each batch's distinct queries, as the baseline),
with the machine's cores (bm25s ``n_threads``; tantivy indexes on one writer thread, which keeps
one segment, and searches one query at a time). bm25s' numba kernels are compiled on a first
call, timed apart (``jit_s``) and not counted. Agreement with the baseline: per distinct query,
overlap@k = |ours ∩ theirs| / max(|ours|, |theirs|) (1 when both are empty), and the number of
identical ordered lists. tantivy stores document lengths in a lossy one-byte norm (as Lucene),
so its scores differ slightly for longer documents; bm25s computes our formula exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

#: Relative score difference treated as a tie (float32 weights summed over a few terms).
TIE_RTOL = 1e-6


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
        "backend": getattr(bm25, "backend", None),
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




# ------------------------------------------------------------------------------------ peers

def scored_queries(requests, batch_size: int) -> list[str]:
    """The queries the pipeline scores: each batch's distinct queries, batch after batch."""
    from bench.retrieval import iter_batches
    out: list[str] = []
    for batch in iter_batches(requests, batch_size):
        out.extend(dict.fromkeys(r.query for r in batch))
    return out


def baseline_documents(bm25, view) -> tuple[list[list[str]], np.ndarray, Any]:
    """(token lists of the documents with at least one token, their sticker rows, tokenizer):
    what the ``bm25`` baseline indexes, tokenised by the same :class:`bench.text.Tokenizer`."""
    from baselines.bm25 import field_texts
    from bench.text import Tokenizer
    tokenizer = Tokenizer(stem=bm25.stem, chinese=bm25.chinese)
    docs = tokenizer.batch(field_texts(view, bm25.fields, retriever="bm25"))
    rows = np.flatnonzero(np.fromiter((len(d) > 0 for d in docs), dtype=bool, count=len(docs)))
    return [docs[i] for i in rows], rows, tokenizer


def run_bm25s_numba(docs, tokens, k: int, k1: float, b: float, clock, threads: int):
    """bm25s (numba backend) index + top-k of every token list; (doc positions per query,
    compile seconds of the first call)."""
    import logging

    import bm25s
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    with clock.stage("bm25s-numba", "index"):
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(t, len(vocab)) for t in d] for d in docs]
        model = bm25s.BM25(k1=k1, b=b, method="lucene", backend="numba")
        model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    k = min(k, len(docs))
    live = [i for i, t in enumerate(tokens) if any(x in vocab for x in t)]
    with clock.stage("bm25s-numba", "jit"):
        model.retrieve([tokens[live[0]]] if live else [docs[0]], k=k, show_progress=False,
                       n_threads=threads)
    out: list[list[int]] = [[] for _ in tokens]
    with clock.stage("bm25s-numba", "search"):
        if live:
            pos, scores = model.retrieve([[x for x in tokens[i] if x in vocab] for i in live],
                                         k=k, show_progress=False, n_threads=threads)
            for i, p, s in zip(live, pos, scores):
                out[i] = p[s > 0].tolist()
    return out, clock.seconds("bm25s-numba", "jit")


def run_tantivy(docs, tokens, k: int, clock) -> list[list[int]]:
    """tantivy (whitespace tokenizer on the pre-tokenised text) index + BM25 top-k of every
    token list; doc positions per query."""
    import tantivy
    with clock.stage("tantivy", "index"):
        sb = tantivy.SchemaBuilder()
        sb.add_text_field("body", stored=False, tokenizer_name="whitespace")
        sb.add_integer_field("row", stored=True)
        schema = sb.build()
        index = tantivy.Index(schema)
        writer = index.writer(heap_size=1 << 30, num_threads=1)
        for i, d in enumerate(docs):
            writer.add_document(tantivy.Document(body=" ".join(d), row=i))
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
    searcher = index.searcher()
    Query, should = tantivy.Query, tantivy.Occur.Should
    out: list[list[int]] = []
    with clock.stage("tantivy", "search"):
        one_segment = searcher.num_segments == 1
        for toks in tokens:
            if not toks:
                out.append([])
                continue
            query = Query.boolean_query([(should, Query.term_query(schema, "body", t))
                                         for t in toks])
            hits = searcher.search(query, k).hits
            out.append([a.doc for _, a in hits] if one_segment else
                       [searcher.doc(a)["row"][0] for _, a in hits])
    return out


def agreement(ours: list[list[str]], theirs: list[list[str]]) -> dict[str, Any]:
    """Mean overlap@k and identical ordered lists of two rankings per query (module doc)."""
    over = [1.0 if not a and not b else len(set(a) & set(b)) / max(len(a), len(b))
            for a, b in zip(ours, theirs)]
    return {"queries": len(over), "mean_overlap_at_k": float(np.mean(over)) if over else 1.0,
            "identical": int(sum(a == b for a, b in zip(ours, theirs)))}


def compare_peers(bm25, bm25_run, data, cfg, clock, ours: dict[str, Any]) -> dict[str, Any]:
    """bm25s-numba and tantivy on the baseline's documents and all scored queries (module
    doc): times, ratios to the baseline's fit + search, agreement with its top-k."""
    import os
    reqs = data.requests.requests
    scored = scored_queries(reqs, cfg.batch_size)
    docs, rows, tokenizer = baseline_documents(bm25, data.view)
    tokens = tokenizer.batch(scored)
    first = {}
    for r in reqs:
        first.setdefault(r.query, r)
    distinct = list(first)
    at = {q: i for i, q in enumerate(scored)}  # one scoring per distinct query to compare
    mine = [bm25_run.ids(first[q])[:cfg.k] for q in distinct]
    sids = np.asarray(data.view.sticker_ids, dtype=object)[rows]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    ours_s = ours["fit_s"] + ours["search_s"]
    out: dict[str, Any] = {"documents": len(docs), "scored_queries": len(scored),
                           "distinct_queries": len(distinct), "threads": threads,
                           "bm25_index_s": ours["fit_s"], "bm25_search_s": ours["search_s"],
                           "bm25_total_s": ours_s, "peers": {}}
    runs = {}
    try:
        runs["bm25s-numba"], jit = run_bm25s_numba(docs, tokens, cfg.k, bm25.k1, bm25.b, clock,
                                                   threads)
    except Exception as exc:  # noqa: BLE001 - one peer failing leaves the other
        out["peers"]["bm25s-numba"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        runs["tantivy"] = run_tantivy(docs, tokens, cfg.k, clock)
    except Exception as exc:  # noqa: BLE001
        out["peers"]["tantivy"] = {"error": f"{type(exc).__name__}: {exc}"}
    for name, pos in runs.items():
        index_s, search_s = clock.seconds(name, "index"), clock.seconds(name, "search")
        theirs = [sids[pos[at[q]]].tolist() for q in distinct]
        out["peers"][name] = {
            "index_s": index_s, "search_s": search_s, "total_s": index_s + search_s,
            "ratio": (index_s + search_s) / ours_s if ours_s > 0 else None,
            "agreement": agreement(mine, theirs),
            **({"jit_s": jit} if name == "bm25s-numba" else {})}
    return out
