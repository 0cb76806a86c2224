"""BM25 over the sticker text fields joined into one document (the single-field baseline).

Scoring is Lucene's BM25, as Elasticsearch computes it (DESIGN §7)::

    score(q, d) = sum over query tokens t (repeats count) of
                  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))

with N the number of documents that have at least one token (Lucene's ``docCount`` counts only
documents holding the field, so stickers without any text are left out of N and avgdl) and n_t
the number of those containing t. Lengths are exact token counts (Lucene stores them in a
lossy one-byte norm, so Elasticsearch's scores differ slightly for long documents).

Backends:

- ``bm25s`` (default): bm25s builds the term x document score matrix (``method="lucene"``);
  retrieval is one sparse product per block of queries (query-term counts x score matrix),
  blocks sized so the product stays small, then a top-k per row.
- ``rank-bm25``: ``rank_bm25.BM25Okapi``, one dense pass per query — a slow reference. Its
  formula differs: idf = ln((N - n + 0.5) / (n + 0.5)), negative for terms in more than half of
  the documents and then floored at ``0.25 * mean idf``, and a tf part multiplied by (k1 + 1).
  The (k1 + 1) factor is a constant that does not change rankings; the idf differs in value but
  is increasing in n in both, so rankings coincide for single-term queries (and for queries
  whose terms share one document frequency) whenever every query term is in fewer than N/2
  documents. Beyond that they may differ.

Results keep only stickers with a positive score, best first, ties broken by sticker order.
The helpers :func:`resolve_fields`, :func:`historical_queries` and :func:`field_texts` build the
documents and are shared with the dense-text baseline.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.data.format import text_columns
from bench.errors import ConfigError
from bench.retrieval import Request, Run, TrainView
from bench.registry import register
from bench.text import CHINESE_MODES, Tokenizer

log = logging.getLogger(__name__)

#: The field name that means "every query under which the sticker was clicked in train".
QUERIES_FIELD = "queries"
BACKENDS = ("bm25s", "rank-bm25")
#: Upper bound on the non-zeros of one block's sparse product (sum of the query terms' postings).
MAX_BLOCK_POSTINGS = 1 << 24


# ------------------------------------------------------------------------------ document text

def resolve_fields(fields: str | Sequence[str], stickers: pd.DataFrame,
                   retriever: str = "retriever") -> list[str]:
    """Field names to join: ``"all"`` = every text column (format.text_columns); a string may
    also name one field or several separated by commas; ``"queries"`` is the historical-query
    field. Unknown names raise :class:`ConfigError` listing what exists."""
    available = text_columns(stickers)
    # An all-null column (e.g. OCR not run yet, or an empty corpus) is an empty text field.
    available += [c for c in stickers.columns if c not in available and c not in
                  ("sticker_id", "image", "embedding") and not str(c).startswith("gt_")
                  and bool(stickers[c].isna().all())]
    if isinstance(fields, str):
        names = available if fields == "all" else [f.strip() for f in fields.split(",") if f.strip()]
    else:
        names = []
        for f in fields:
            names.extend(available if f == "all" else [f])
    names = list(dict.fromkeys(names))
    for f in names:
        if f != QUERIES_FIELD and f not in available:
            raise ConfigError(
                f"{retriever}: unknown field {f!r}. Text columns of this dataset: "
                f"{', '.join(available) or '(none)'}; also {QUERIES_FIELD!r} (queries of the "
                f"train clicks) and 'all' (every text column)")
    return names


def historical_queries(clicks: pd.DataFrame, sticker_ids: Sequence[str], sep: str = " ") -> list[str]:
    """Per sticker, the distinct queries it was clicked under in ``clicks`` (first click first),
    joined by ``sep``; "" for stickers never clicked."""
    if clicks is None or len(clicks) == 0:
        return [""] * len(sticker_ids)
    c = clicks[["sticker_id", "query"]].copy()
    if "ts" in clicks:
        c = c.iloc[np.argsort(clicks["ts"].to_numpy(), kind="stable")]
    c = c.dropna().astype({"sticker_id": str, "query": str})
    c = c[c["query"].str.strip() != ""].drop_duplicates(["sticker_id", "query"])
    joined = c.groupby("sticker_id", sort=False)["query"].agg(sep.join)
    return joined.reindex(pd.Index(list(sticker_ids), dtype=object)).fillna("").tolist()


def _as_text(value: Any, sep: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return sep.join(str(v) for v in value if isinstance(v, str) or v is not None)
    return str(value)


def field_texts(train: TrainView, fields: str | Sequence[str], sep: str = " ",
                retriever: str = "retriever") -> list[str]:
    """One text per sticker (in ``train.stickers`` order): the chosen fields joined by ``sep``,
    empty fields skipped. List-valued cells (e.g. keyword lists) are joined too."""
    names = resolve_fields(fields, train.stickers, retriever)
    ids = train.sticker_ids
    columns = []
    for f in names:
        if f == QUERIES_FIELD:
            columns.append(historical_queries(train.clicks, ids, sep=sep))
        else:
            columns.append([_as_text(v, sep) for v in train.stickers[f].tolist()])
    if not columns:
        return [""] * len(ids)
    if len(columns) == 1:
        return columns[0]
    return [sep.join(v for v in row if v) for row in zip(*columns)]


# ------------------------------------------------------------------------------------- top-k

def top_k_row(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of one row's candidates (scores, corpus positions), best first, ties by
    position. O(m) selection, then a sort of the k (plus boundary ties) kept."""
    m = len(scores)
    if m > k:
        kth = np.partition(scores, m - k)[m - k]
        keep = scores >= kth
        scores, idx = scores[keep], idx[keep]
    order = np.lexsort((idx, -scores))[:k]
    return idx[order], scores[order]


# ----------------------------------------------------------------------------------- retriever

@register("bm25")
class BM25Retriever:
    """BM25 (Lucene/Elasticsearch formula) over the chosen sticker text fields as one document.

    ``fields``: ``"all"`` (every text column), a name, a comma-separated string or a list; the
    name ``"queries"`` is the historical-query field (distinct train-click queries per sticker).
    ``backend``: ``"bm25s"`` (fast, batched) or ``"rank-bm25"`` (reference, slow; see module
    doc for its formula). ``k1``, ``b``: BM25 parameters. ``stem``: PyStemmer language or None.
    ``chinese``: ``"jieba"``, ``"char"`` or ``"none"`` (see :class:`bench.text.Tokenizer`).
    ``batch_size``: most queries per sparse product.
    """

    name = "bm25"

    def __init__(self, fields: list[str] | str = "all", backend: str = "bm25s",
                 k1: float = 1.2, b: float = 0.75, stem: str | None = None,
                 chinese: str = "jieba", batch_size: int = 1024):
        self.fields = fields
        self.backend = backend
        self.k1 = k1
        self.b = b
        self.stem = stem
        self.chinese = chinese
        self.batch_size = batch_size

    def _check_params(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"{self.name}: backend must be one of {', '.join(BACKENDS)}, "
                              f"got {self.backend!r}")
        if self.chinese not in CHINESE_MODES:
            raise ConfigError(f"{self.name}: chinese must be one of {', '.join(CHINESE_MODES)}, "
                              f"got {self.chinese!r}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"{self.name}: need k1 >= 0 and 0 <= b <= 1 "
                              f"(got k1={self.k1}, b={self.b})")
        if int(self.batch_size) < 1:
            raise ConfigError(f"{self.name}: batch_size must be >= 1, got {self.batch_size}")

    # --------------------------------------------------------------------------------- fit
    def fit(self, train: TrainView) -> "BM25Retriever":
        self._check_params()
        self.sticker_ids_ = np.asarray(train.sticker_ids, dtype=object)
        try:
            self.tokenizer_ = Tokenizer(stem=self.stem, chinese=self.chinese)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        docs = self.tokenizer_.batch(field_texts(train, self.fields, retriever=self.name))
        # Lucene's N and avgdl count only documents that hold at least one token.
        self.doc_rows_ = np.flatnonzero(np.fromiter((len(d) > 0 for d in docs), dtype=bool,
                                                    count=len(docs)))
        docs = [docs[i] for i in self.doc_rows_]
        self.index_ = None
        self.vocab_: dict[str, int] = {}
        if not docs:
            log.warning("%s: no sticker has text in fields %r; every search returns nothing",
                        self.name, self.fields)
            return self
        if self.backend == "bm25s":
            self._fit_bm25s(docs)
        else:
            import rank_bm25
            self.index_ = rank_bm25.BM25Okapi(docs, k1=self.k1, b=self.b)
        return self

    def _fit_bm25s(self, docs: list[list[str]]) -> None:
        import bm25s
        import scipy.sparse as sp
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        codes, terms = pd.factorize(pd.Series([t for d in docs for t in d], dtype=object))
        flat = codes.tolist()
        ends = np.cumsum(lengths).tolist()
        ids = [flat[a:e] for a, e in zip([0] + ends[:-1], ends)]
        vocab = {t: i for i, t in enumerate(terms.tolist())}
        model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab),
                    create_empty_token=False, show_progress=False)
        s = model.scores  # CSC of (docs x vocab) == CSR of (vocab x docs): postings per term
        self.vocab_ = vocab
        self.index_ = sp.csr_matrix((s["data"], s["indices"], s["indptr"]),
                                    shape=(len(vocab), s["num_docs"]))
        self.doc_freq_ = np.diff(s["indptr"])

    # ------------------------------------------------------------------------------ search
    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top-``k`` stickers (score > 0) per request; the same query gets the same list."""
        if not hasattr(self, "sticker_ids_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        requests = list(requests)
        queries = list(dict.fromkeys(r.query for r in requests))
        k = max(0, min(int(k), len(self.doc_rows_)))
        if self.index_ is None or k == 0 or not queries:
            ranked = {q: [] for q in queries}
        else:
            tokens = self.tokenizer_.batch(queries)
            hits = (self._search_bm25s(tokens, k) if self.backend == "bm25s"
                    else self._search_rank_bm25(tokens, k))
            ids = self.sticker_ids_
            ranked = {q: list(zip(ids[self.doc_rows_[pos]].tolist(), sc.astype(float).tolist()))
                      for q, (pos, sc) in zip(queries, hits)}
        run = Run(name=self.name)
        for r in requests:
            run[r] = list(ranked[r.query])
        return run

    def _search_bm25s(self, tokens: list[list[str]], k: int):
        import scipy.sparse as sp
        vocab = self.vocab_
        rows, cols = [], []
        for i, toks in enumerate(tokens):
            term_ids = [vocab[t] for t in toks if t in vocab]
            rows.extend([i] * len(term_ids))
            cols.extend(term_ids)
        nq = len(tokens)
        query_terms = sp.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (np.asarray(rows, dtype=np.int64),
                                                    np.asarray(cols, dtype=np.int64))),
            shape=(nq, self.index_.shape[0]))  # repeated tokens are summed: counts
        query_terms.sum_duplicates()
        # A query's cost bound: total postings of its distinct terms.
        row_of = np.repeat(np.arange(nq), np.diff(query_terms.indptr))
        cost = np.bincount(row_of, weights=self.doc_freq_[query_terms.indices], minlength=nq)
        empty = (np.array([], dtype=np.int64), np.array([], dtype=np.float32))
        out = []
        start = 0
        while start < nq:
            stop, used = start, 0
            while stop < nq and stop - start < self.batch_size and \
                    (stop == start or used + cost[stop] <= MAX_BLOCK_POSTINGS):
                used += cost[stop]
                stop += 1
            block = (query_terms[start:stop] @ self.index_).tocsr()
            for r in range(stop - start):
                a, e = block.indptr[r], block.indptr[r + 1]
                if a == e:
                    out.append(empty)
                    continue
                data, idx = block.data[a:e], block.indices[a:e]
                pos = data > 0
                out.append(top_k_row(data[pos], idx[pos].astype(np.int64), k))
            start = stop
        return out

    def _search_rank_bm25(self, tokens: list[list[str]], k: int):
        out = []
        for toks in tokens:
            scores = np.asarray(self.index_.get_scores(toks), dtype=np.float64)
            pos = np.flatnonzero(scores > 0)
            out.append(top_k_row(scores[pos], pos, k))
        return out
