"""Candidate pool and per (request, candidate) features of the learned ranker ``ltr``.

:func:`build_signals` turns a set of clicks (the feature history) into :class:`Signals`; then
:func:`candidate_features` pools candidates for a batch of requests and computes one feature row
per (request, candidate). Candidates: the union of each source's top ``pool`` — BM25 per field,
dense text (when an encoder is given), the stickers clicked under the exact query, the user's own
clicked stickers and the most popular stickers. Features, by group (``drop`` removes groups):

============  ==============================================================================
group         columns
============  ==============================================================================
text          ``bm25_<field>`` (Lucene BM25 of the query in that field, exact for every
              candidate) and ``bm25_<field>_rank`` (1-based rank in the field's top ``pool``,
              NaN beyond it), one pair per field; ``queries`` is the historical-query field
dense         ``dense_cos`` (query . sticker text embedding), ``dense_rank`` (as above)
popularity    ``popularity`` (clicks), ``distinct_users``, ``distinct_queries``
query_clicks  ``query_clicks``: clicks on the candidate under this exact query string
history       ``user_clicks`` (the user's clicks on it), ``user_clicks_since`` (the user's clicks
              after their last click on it, 0 = the latest; NaN if never clicked),
              ``user_history`` (the user's clicks in all)
style         ``style_cos``: cosine of the candidate's image embedding to the user's nearest
              style centroid (:mod:`bench.persrv.clustering`), ``style_cluster_size`` its size;
              NaN without history or embeddings
query         ``query_length`` (tokens), ``query_seen`` (1 if the query string is in the history)
============  ==============================================================================

Everything is computed from the clicks passed to :func:`build_signals` only: the trainer passes
each user's *earlier* clicks (:mod:`bench.ltr.training`), the fitted ranker all fitting clicks.
Rows come sorted by (request, sticker row); NaN marks a missing value (LightGBM's missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from bench.persrv.clustering import ClusterConfig, UserClusters, fit_user_clusters, inverse_norms
from bench.persrv.fields import MultiFieldBM25
from bench.retrieval import Request

FEATURE_GROUPS = ("text", "dense", "popularity", "query_clicks", "history", "style", "query")
#: Pairs scored per block when gathering BM25 and dense scores (bounds temporary memory).
BLOCK_PAIRS = 1 << 20


@dataclass
class Corpus:
    """What does not depend on the clicks. ``texts_for(clicks)``: field -> one text per sticker
    (the ``queries`` field from those clicks); ``image_unit``: unit image embeddings (float32,
    zero rows stay zero) or None; ``dense_docs``: unit text embeddings (zero rows = no text) and
    ``encode`` (queries -> unit embeddings), or None; ``pool``: depth of every source."""

    sticker_ids: np.ndarray
    fields: list[str]
    texts_for: Callable[[pd.DataFrame], dict[str, list[str]]]
    tokenizer: Callable
    pool: int = 100
    image_unit: np.ndarray | None = None
    dense_docs: np.ndarray | None = None
    encode: Callable[[list[str]], np.ndarray] | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def n(self) -> int:
        return len(self.sticker_ids)


@dataclass
class Signals:
    """Click-derived state of one feature history (see :func:`build_signals`)."""

    corpus: Corpus
    bm25: dict[str, MultiFieldBM25]
    counts: np.ndarray            # (n, 3): popularity, distinct users, distinct queries
    popular: np.ndarray           # rows by popularity (desc), ties by row
    query_codes: dict[str, int]   # fitting query -> code
    query_keys: np.ndarray        # sorted code * n + row, with query_counts
    query_counts: np.ndarray
    user_codes: dict[str, int]
    user_keys: np.ndarray         # sorted code * n + row, with user_n / user_since
    user_n: np.ndarray
    user_since: np.ndarray
    user_total: np.ndarray        # clicks per user code
    clusters: UserClusters | None


def _rows_of(clicks: pd.DataFrame, sticker_ids: np.ndarray) -> np.ndarray:
    return pd.Index(sticker_ids, dtype=object).get_indexer(
        clicks["sticker_id"].astype(str)).astype(np.int64)


def build_signals(corpus: Corpus, clicks: pd.DataFrame) -> Signals:
    """Index the history ``clicks`` (user_id, query, sticker_id, ts): BM25 per field, click
    statistics, query and user tables, per-user style clusters."""
    n = corpus.n
    clicks = clicks.iloc[np.lexsort((np.arange(len(clicks)), clicks["ts"].to_numpy()))] \
        if len(clicks) else clicks
    rows = _rows_of(clicks, corpus.sticker_ids) if len(clicks) else np.zeros(0, np.int64)
    keep = rows >= 0
    users = clicks["user_id"].astype(str).to_numpy(dtype=object)[keep]
    queries = clicks["query"].astype(str).to_numpy(dtype=object)[keep]
    rows = rows[keep]
    texts = corpus.texts_for(clicks)
    bm25 = {f: MultiFieldBM25({f: 1.0}, tokenizer=corpus.tokenizer).fit({f: texts[f]}, n_docs=n)
            for f in corpus.fields}
    pop = np.bincount(rows, minlength=n).astype(np.float64)
    pairs_u = np.unique(pd.factorize(users)[0].astype(np.int64) * n + rows) if len(rows) else rows
    pairs_q = np.unique(pd.factorize(queries)[0].astype(np.int64) * n + rows) if len(rows) else rows
    counts = np.stack([pop, np.bincount(pairs_u % n, minlength=n).astype(np.float64),
                       np.bincount(pairs_q % n, minlength=n).astype(np.float64)], axis=1) \
        if n else np.zeros((0, 3))
    popular = np.lexsort((np.arange(n), -pop))[:corpus.pool]
    q_codes, q_uniq = pd.factorize(queries)
    qk, qc = np.unique(q_codes.astype(np.int64) * n + rows, return_counts=True)
    u_codes, u_uniq = pd.factorize(users)
    u_codes = u_codes.astype(np.int64)
    uk, un = np.unique(u_codes * n + rows, return_counts=True)
    # position of each click within its user's (time-ordered) clicks; since = clicks after it
    total = np.bincount(u_codes, minlength=len(u_uniq))
    order = np.argsort(u_codes, kind="stable")
    pos = np.empty(len(rows), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(total)[:-1]]) if len(total) else np.zeros(0, np.int64)
    pos[order] = np.arange(len(rows)) - np.repeat(starts, total)
    last = np.full(len(uk), -1, dtype=np.int64)
    np.maximum.at(last, np.searchsorted(uk, u_codes * n + rows), pos)
    since = total[uk // n] - 1 - last if len(uk) else np.zeros(0, np.int64)
    clusters = None
    if corpus.image_unit is not None and len(rows):
        clusters = fit_user_clusters(users, rows, corpus.image_unit, corpus.cluster,
                                     inv_norms=np.ones(n, dtype=np.float32))
    return Signals(corpus=corpus, bm25=bm25, counts=counts, popular=popular,
                   query_codes={q: i for i, q in enumerate(q_uniq.tolist())},
                   query_keys=qk, query_counts=qc.astype(np.float64),
                   user_codes={u: i for i, u in enumerate(u_uniq.tolist())}, user_keys=uk,
                   user_n=un.astype(np.float64), user_since=since.astype(np.float64),
                   user_total=total.astype(np.float64), clusters=clusters)


# ------------------------------------------------------------------------------ the pool

def _top_by_key(keys: np.ndarray, values: np.ndarray, secondary: np.ndarray, code: int, n: int,
                pool: int, descending_secondary: bool = False) -> np.ndarray:
    """Rows of entity ``code`` in sorted ``keys`` (code * n + row), best ``values`` first."""
    a, e = np.searchsorted(keys, [code * n, (code + 1) * n])
    rows = keys[a:e] % n
    sec = -secondary[a:e] if descending_secondary else secondary[a:e]
    return rows[np.lexsort((rows, sec, -values[a:e]))][:pool]


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, missing: float) -> np.ndarray:
    """values[keys == query] per query key, ``missing`` where absent (keys sorted)."""
    out = np.full(len(query), missing, dtype=np.float64)
    if len(keys) == 0 or len(query) == 0:
        return out
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = keys[at] == query
    out[hit] = values[at[hit]]
    return out


def _bm25_gather(index: MultiFieldBM25, qmat, q_of_pair: np.ndarray, rows: np.ndarray
                 ) -> np.ndarray:
    """Exact BM25 of each (query row of ``qmat``, sticker row) pair, by key lookup in the term x
    sticker weights (CSR, one sorted key per stored weight)."""
    w = index.weights_
    if not hasattr(index, "_ltr_keys"):
        w.sort_indices()
        term = np.repeat(np.arange(w.shape[0], dtype=np.int64), np.diff(w.indptr))
        index._ltr_keys = term * w.shape[1] + w.indices.astype(np.int64)
    keys, out = index._ltr_keys, np.zeros(len(rows), dtype=np.float64)
    for a in range(0, len(rows), BLOCK_PAIRS):
        qi, r = q_of_pair[a:a + BLOCK_PAIRS], rows[a:a + BLOCK_PAIRS]
        lens = np.diff(qmat.indptr)[qi]
        pair = np.repeat(np.arange(len(qi)), lens)
        first = np.repeat(qmat.indptr[qi] - np.cumsum(lens) + lens, lens)
        entry = first + np.arange(len(pair))
        want = qmat.indices[entry].astype(np.int64) * w.shape[1] + r[pair]
        vals = _lookup(keys, w.data.astype(np.float64), want, 0.0) * qmat.data[entry]
        out[a:a + BLOCK_PAIRS] = np.bincount(pair, weights=vals, minlength=len(qi))
    return out


def _ranks(top_rows: np.ndarray, q_of_pair: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """1-based rank of each pair's row in its query's top list (-1 padded), NaN if absent."""
    q = np.repeat(np.arange(top_rows.shape[0], dtype=np.int64), top_rows.shape[1])
    rank = np.tile(np.arange(1, top_rows.shape[1] + 1, dtype=np.float64), top_rows.shape[0])
    flat = top_rows.reshape(-1).astype(np.int64)
    ok = flat >= 0
    keys = q[ok] * n + flat[ok]
    order = np.argsort(keys, kind="stable")
    return _lookup(keys[order], rank[ok][order], q_of_pair * n + rows, np.nan)


def _dense_top(docs: np.ndarray, q_emb: np.ndarray, pool: int) -> np.ndarray:
    has = np.abs(docs).sum(axis=1) > 0
    out = np.full((len(q_emb), min(pool, int(has.sum()))), -1, dtype=np.int64)
    if out.shape[1] == 0:
        return out
    step = max(1, (1 << 24) // max(len(docs), 1))
    for a in range(0, len(q_emb), step):
        s = q_emb[a:a + step] @ docs.T
        s[:, ~has] = -np.inf
        part = np.argpartition(-s, out.shape[1] - 1, axis=1)[:, :out.shape[1]]
        vals = np.take_along_axis(s, part, axis=1)
        for i, (p, v) in enumerate(zip(part, vals)):  # best first, ties by row
            out[a + i] = p[np.lexsort((p, -v))]
    return out


def candidate_features(sig: Signals, requests: Sequence[Request], drop: Sequence[str] = ()
                       ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Pool candidates for ``requests`` and compute their features: (request index per row,
    sticker row per row, feature frame), rows sorted by (request, sticker row)."""
    c, n, pool = sig.corpus, sig.corpus.n, int(sig.corpus.pool)
    queries = list(dict.fromkeys(r.query for r in requests))
    q_index = {q: i for i, q in enumerate(queries)}
    q_of_req = np.array([q_index[r.query] for r in requests], dtype=np.int64)
    parts_req, parts_row = [], []

    def add(req_idx: np.ndarray, rows: np.ndarray) -> None:
        parts_req.append(req_idx.astype(np.int64))
        parts_row.append(rows.astype(np.int64))

    tops = {}
    for f, index in sig.bm25.items():
        top, _ = index.search(queries, pool)
        tops[f] = top.astype(np.int64)
        grid = tops[f][q_of_req]
        add(np.repeat(np.arange(len(requests)), grid.shape[1]), grid.reshape(-1))
    q_emb = dense_top = None
    if c.dense_docs is not None and c.encode is not None and queries:
        q_emb = np.asarray(c.encode(queries), dtype=np.float32)
        dense_top = _dense_top(c.dense_docs, q_emb, pool)
        grid = dense_top[q_of_req]
        add(np.repeat(np.arange(len(requests)), grid.shape[1]), grid.reshape(-1))
    for i, r in enumerate(requests):
        code = sig.query_codes.get(r.query, -1)
        if code >= 0:
            rows = _top_by_key(sig.query_keys, sig.query_counts, np.zeros(len(sig.query_keys)),
                               code, n, pool)
            add(np.full(len(rows), i), rows)
        code = sig.user_codes.get(r.user_id, -1)
        if code >= 0:
            rows = _top_by_key(sig.user_keys, sig.user_n, sig.user_since, code, n, pool)
            add(np.full(len(rows), i), rows)
    add(np.repeat(np.arange(len(requests)), len(sig.popular)),
        np.tile(sig.popular, len(requests)))
    req_idx = np.concatenate(parts_req) if parts_req else np.zeros(0, np.int64)
    rows = np.concatenate(parts_row) if parts_row else np.zeros(0, np.int64)
    ok = rows >= 0
    key = np.unique(req_idx[ok] * n + rows[ok]) if n else np.zeros(0, np.int64)
    req_idx, rows = (key // n, key % n) if n else (key, key)
    qp = q_of_req[req_idx]
    X: dict[str, np.ndarray] = {}
    if "text" not in drop:
        for f, index in sig.bm25.items():
            if hasattr(index, "weights_") and index.weights_.nnz:
                qmat = index.query_matrix([c.tokenizer(q) for q in queries])
                X[f"bm25_{f}"] = _bm25_gather(index, qmat.tocsr(), qp, rows)
            else:
                X[f"bm25_{f}"] = np.zeros(len(rows))
            X[f"bm25_{f}_rank"] = _ranks(tops[f], qp, rows, n)
    if "dense" not in drop and q_emb is not None:
        cos = np.empty(len(rows))
        for a in range(0, len(rows), BLOCK_PAIRS):
            cos[a:a + BLOCK_PAIRS] = np.einsum("ij,ij->i", q_emb[qp[a:a + BLOCK_PAIRS]],
                                               c.dense_docs[rows[a:a + BLOCK_PAIRS]])
        X["dense_cos"] = cos
        X["dense_rank"] = _ranks(dense_top, qp, rows, n)
    if "popularity" not in drop:
        for j, name in enumerate(("popularity", "distinct_users", "distinct_queries")):
            X[name] = sig.counts[rows, j] if n else np.zeros(0)
    q_code = np.array([sig.query_codes.get(q, -1) for q in queries], dtype=np.int64)[qp]
    if "query_clicks" not in drop:
        X["query_clicks"] = np.where(q_code >= 0, _lookup(sig.query_keys, sig.query_counts,
                                                          q_code * n + rows, 0.0), 0.0)
    u_of_req = np.array([sig.user_codes.get(r.user_id, -1) for r in requests], dtype=np.int64)
    u_code = u_of_req[req_idx]
    if "history" not in drop:
        known = u_code >= 0
        X["user_clicks"] = np.where(known, _lookup(sig.user_keys, sig.user_n, u_code * n + rows,
                                                   0.0), 0.0)
        X["user_clicks_since"] = np.where(known, _lookup(sig.user_keys, sig.user_since,
                                                         u_code * n + rows, np.nan), np.nan)
        X["user_history"] = np.where(known, sig.user_total[np.maximum(u_code, 0)]
                                     if len(sig.user_total) else 0.0, 0.0)
    if "style" not in drop:
        X["style_cos"], X["style_cluster_size"] = _style(sig, requests, req_idx, rows)
    if "query" not in drop:
        lengths = np.array([len(c.tokenizer(q)) for q in queries], dtype=np.float64)
        X["query_length"] = lengths[qp]
        X["query_seen"] = (q_code >= 0).astype(np.float64)
    return req_idx, rows, pd.DataFrame(X)


def _style(sig: Signals, requests: Sequence[Request], req_idx: np.ndarray, rows: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    cos = np.full(len(rows), np.nan)
    size = np.full(len(rows), np.nan)
    cl, emb = sig.clusters, sig.corpus.image_unit
    if cl is None or emb is None or not len(rows):
        return cos, size
    users = cl.user_index([r.user_id for r in requests])[req_idx]
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order], prepend=-2, append=-3))
    for a, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        u = int(users[order[a]])
        if u < 0:
            continue
        lo, hi = cl.offsets[u], cl.offsets[u + 1]
        if hi == lo:
            continue
        sel = order[a:e]
        sims = emb[rows[sel]] @ cl.centroids[lo:hi].T
        best = np.argmax(sims, axis=1)
        cos[sel] = sims[np.arange(len(sel)), best]
        size[sel] = cl.sizes[lo:hi][best]
    return cos, size


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Embeddings scaled to unit rows (float32; zero rows stay zero)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    return emb * inverse_norms(emb)[:, None]
