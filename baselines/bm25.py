"""BM25 over the sticker text fields joined into one document (the single-field baseline).

Scoring is Lucene's BM25, as Elasticsearch computes it (DESIGN §7)::

    score(q, d) = sum over query tokens t (repeats count) of
                  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))

with N the number of documents that have at least one token (Lucene's ``docCount`` counts only
documents holding the field, so stickers without any text are left out of N and avgdl) and n_t
the number of those containing t. Lengths are exact token counts (Lucene stores them in a
lossy one-byte norm, so Elasticsearch's scores differ slightly for long documents).

Backends (all Lucene's formula except rank-bm25; the first two give the same rankings, scores
agree to float32 rounding):

- ``native`` (default, the fastest measured: see the note of :mod:`bench.bm25`): the project's
  BM25 core :mod:`bench.bm25` — vectorised tokenisation, one CSR build of the term x document
  weights; search by ``scoring``: ``"pruned"`` (default) is the exact MaxScore kernel
  :mod:`bench.bm25.pruned` (numba; documents that cannot enter the top-k are skipped),
  ``"exhaustive"`` one sparse product per block of queries and one top-k over the scored
  entries. Both give identical ids and float32 scores (same summation order, same ties).
- ``bm25s``: bm25s builds the term x document score matrix (``method="lucene"``; its indexing
  loops over documents in Python); retrieval is the same block loop and top-k as ``native``.
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
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd

from bench.data.format import text_columns
from pydantic import field_validator

from bench.errors import ConfigError
from bench.params import Configurable, RetrieverParams, param
from bench.retrieval import Request, Run, TrainView
from bench.registry import register
from bench.bm25.index import bm25_weights, counts_from_codes
from bench.bm25.scoring import n_threads, query_matrix, search_blocks
from bench.text import CHINESE_MODES, Tokenizer, tokenize_to_codes

log = logging.getLogger(__name__)

#: The field name that means "every query under which the sticker was clicked in train".
QUERIES_FIELD = "queries"
BACKENDS = ("native", "bm25s", "rank-bm25")
#: Search paths of the native and bm25s backends (identical results; module doc).
SCORINGS = ("pruned", "exhaustive")
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
    joined by ``sep``; "" for stickers never clicked. Grouped in numpy: rows stably sorted by
    sticker, then one join of all queries and one split at the sticker boundaries."""
    if clicks is None or len(clicks) == 0:
        return [""] * len(sticker_ids)
    c = clicks[["sticker_id", "query"]].copy()
    if "ts" in clicks:
        c = c.iloc[np.argsort(clicks["ts"].to_numpy(), kind="stable")]
    c = c.dropna().astype({"sticker_id": str, "query": str})
    c = c[c["query"].str.strip() != ""].drop_duplicates(["sticker_id", "query"])
    group, stickers = pd.factorize(c["sticker_id"], sort=False)
    order = np.argsort(group, kind="stable")
    group, queries = group[order], c["query"].to_numpy(dtype=object)[order]
    joined = _join_groups(queries, group, len(stickers), sep)
    where = pd.Index(stickers, dtype=object).get_indexer(
        pd.Index([str(s) for s in sticker_ids], dtype=object))
    return [joined[i] if i >= 0 else "" for i in where.tolist()]


def _join_groups(values: np.ndarray, group: np.ndarray, n_groups: int, sep: str) -> list[str]:
    """``sep.join`` of each group's values (``group`` sorted, every group non-empty): one
    ``str.join`` over all values and one ``str.split`` at a delimiter no value holds."""
    if n_groups == 0:
        return []
    body = "".join(values.tolist()) + sep
    delim = next((d for d in ("\x1e", "\x1f", "\x1d", "\x00") if d not in body), None)
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    if delim is None:  # every candidate delimiter occurs: join group by group
        ends = np.append(starts[1:], len(values)).tolist()
        return [sep.join(values[a:e].tolist()) for a, e in zip(starts.tolist(), ends)]
    glue = np.full(len(values), sep, dtype=object)
    glue[starts[1:] - 1] = delim
    glue[-1] = ""
    pieces = np.empty(2 * len(values), dtype=object)
    pieces[0::2], pieces[1::2] = values, glue
    return "".join(pieces.tolist()).split(delim)


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


# ----------------------------------------------------------------------------------- retriever

def check_stem(value: str | None) -> str | None:
    """A PyStemmer language (or None), else ValueError listing the languages."""
    if value is not None:
        import Stemmer
        if value not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer language; PyStemmer knows "
                             f"{', '.join(Stemmer.algorithms())}")
    return value


def check_fields(value: str | list[str]) -> str | list[str]:
    """A non-empty field name, comma-separated names or a list of names."""
    names = [value] if isinstance(value, str) else list(value)
    if not names or any(not n.strip() for n in names):
        raise ValueError("name at least one field ('all', a column, 'queries' or a list)")
    return value


@register("bm25")
class BM25Retriever(Configurable):
    """BM25 (Lucene/Elasticsearch formula) over the chosen sticker text fields as one document.

    ``fields``: ``"all"`` (every text column), a name, a comma-separated string or a list; the
    name ``"queries"`` is the historical-query field (distinct train-click queries per sticker).
    ``backend``: ``"native"`` (the project's BM25 core, fastest), ``"bm25s"`` (bm25s builds the
    index) or ``"rank-bm25"`` (reference, slow; see module doc for its formula). ``k1``, ``b``: BM25 parameters. ``stem``: PyStemmer language or None.
    ``chinese``: ``"jieba"``, ``"char"`` or ``"none"`` (see :class:`bench.text.Tokenizer`).
    ``scoring``: ``"pruned"`` (exact MaxScore top-k, numba, threaded) or ``"exhaustive"`` (block
    sparse products), identical results; ``batch_size``: most queries per sparse product
    (``exhaustive`` only).
    """

    name = "bm25"

    class Params(RetrieverParams):
        fields: Union[list[str], str] = param("all", description=(
            "all | a text column | comma-separated names | a list; 'queries' = train-click "
            "queries"))
        backend: Literal[BACKENDS] = param("native", description="native | bm25s | rank-bm25")
        k1: float = param(1.2, ge=0, description="BM25 k1")
        b: float = param(0.75, ge=0, le=1, description="BM25 b")
        stem: Optional[str] = param(None, description="PyStemmer language or None")
        chinese: Literal[CHINESE_MODES] = param("jieba", description="Chinese segmentation")
        batch_size: int = param(1024, ge=1, refit="search",
                                description="most queries per sparse product (exhaustive)")
        scoring: Literal[SCORINGS] = param("pruned", refit="search",
                                           description="pruned | exhaustive (same results)")

        @field_validator("fields")
        @classmethod
        def _fields(cls, value):
            return check_fields(value)

        @field_validator("stem")
        @classmethod
        def _stem(cls, value):
            return check_stem(value)

    # --------------------------------------------------------------------------------- fit
    def fit(self, train: TrainView) -> "BM25Retriever":
        self.sticker_ids_ = np.asarray(train.sticker_ids, dtype=object)
        try:
            self.tokenizer_ = Tokenizer(stem=self.stem, chinese=self.chinese)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        texts = field_texts(train, self.fields, retriever=self.name)
        codes, lengths, terms = tokenize_to_codes(self.tokenizer_, texts)
        # Lucene's N and avgdl count only documents that hold at least one token.
        self.doc_rows_ = np.flatnonzero(lengths > 0)
        lengths = lengths[self.doc_rows_]
        self.index_ = None
        self.vocab_: dict[str, int] = {}
        if not len(self.doc_rows_):
            log.warning("%s: no sticker has text in fields %r; every search returns nothing",
                        self.name, self.fields)
            return self
        if self.backend == "native":
            counts = counts_from_codes(codes, lengths, terms)
            self.vocab_ = counts.vocab
            self.index_ = bm25_weights(counts, self.k1, self.b)
        elif self.backend == "bm25s":
            self._fit_bm25s(codes, lengths, terms)
        else:
            import rank_bm25
            words = np.asarray(terms, dtype=object)[codes].tolist()
            ends = np.cumsum(lengths).tolist()
            docs = [words[e - n:e] for n, e in zip(lengths.tolist(), ends)]
            self.index_ = rank_bm25.BM25Okapi(docs, k1=self.k1, b=self.b)
        if self.backend != "rank-bm25" and self.scoring == "pruned":
            from bench.bm25 import pruned
            self._pruned_index()
            # load (or, the first time on this machine, compile) the kernel now, not in search
            self.jit_s_ = pruned.warm_up(parallel=n_threads(None) > 1)
        return self

    def _pruned_index(self):
        """The :class:`bench.bm25.pruned.PrunedIndex` of ``index_`` (rebuilt if ``index_`` was
        replaced, e.g. on a copy holding other weights)."""
        from bench.bm25 import pruned
        cached = self.__dict__.get("_pruned")
        if cached is None or cached.source is not self.index_:
            cached = self._pruned = pruned.PrunedIndex(self.index_)
        return cached

    def _fit_bm25s(self, codes: np.ndarray, lengths: np.ndarray, terms: list[str]) -> None:
        import bm25s
        import scipy.sparse as sp
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG
        flat = codes.tolist()
        ends = np.cumsum(lengths).tolist()
        ids = [flat[e - n:e] for n, e in zip(lengths.tolist(), ends)]
        vocab = {t: i for i, t in enumerate(terms)}
        model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab),
                    create_empty_token=False, show_progress=False)
        s = model.scores  # CSC of (docs x vocab) == CSR of (vocab x docs): postings per term
        self.vocab_ = vocab
        self.index_ = sp.csr_matrix((s["data"], s["indices"], s["indptr"]),
                                    shape=(len(vocab), s["num_docs"]))

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
            if self.backend == "rank-bm25":
                pos, scores = self._search_rank_bm25(self.tokenizer_.batch(queries), k)
            else:
                pos, scores = self._search_index(queries, k)
            ids = self.sticker_ids_[self.doc_rows_[np.maximum(pos, 0)]]
            hits = (pos >= 0).sum(axis=1).tolist()
            ranked = {q: list(zip(ids[i, :n].tolist(), scores[i, :n].astype(float).tolist()))
                      for i, (q, n) in enumerate(zip(queries, hits))}
        run = Run(name=self.name)
        for r in requests:
            run[r] = list(ranked[r.query])
        return run

    def _search_index(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows of the term x document ``index_`` (native and bm25s): one sparse query
        matrix of token counts, scored by the MaxScore kernel (``scoring="pruned"``, when its
        bounds hold: :func:`bench.bm25.pruned.usable`) or block by block
        (:func:`bench.bm25.search_blocks`); identical results."""
        codes, lengths, terms = tokenize_to_codes(self.tokenizer_, queries)
        index = self.__dict__.get("_terms")
        if index is None or len(index) != len(self.vocab_):
            index = self._terms = pd.Index(list(self.vocab_), dtype=object)
        rows = index.get_indexer(pd.Index(terms, dtype=object)).astype(np.int64)[codes] \
            if terms else np.zeros(0, dtype=np.int64)
        query_of = np.repeat(np.arange(len(queries), dtype=np.int64), lengths)
        q = query_matrix([(query_of, rows, 1.0)], len(queries), self.index_.shape[0])
        if self.scoring == "pruned":
            from bench.bm25 import pruned
            prepared = self._pruned_index()
            if pruned.usable(prepared, q):
                return pruned.search(prepared, q, k, threads=n_threads(None))
        return search_blocks(q, self.index_, k, max_queries=int(self.batch_size),
                             max_postings=MAX_BLOCK_POSTINGS, positive_only=True)

    def _search_rank_bm25(self, tokens: list[list[str]], k: int
                          ) -> tuple[np.ndarray, np.ndarray]:
        """rank-bm25's dense float64 scores per query, positive ones sorted (ties by position):
        the slow reference, kept in float64 (the core's top-k packs float32 keys)."""
        pos = np.full((len(tokens), k), -1, dtype=np.int64)
        out = np.full((len(tokens), k), -np.inf, dtype=np.float64)
        for i, toks in enumerate(tokens):
            scores = np.asarray(self.index_.get_scores(toks), dtype=np.float64)
            hit = np.flatnonzero(scores > 0)
            best = hit[np.lexsort((hit, -scores[hit]))[:k]]
            pos[i, :len(best)], out[i, :len(best)] = best, scores[best]
        return pos, out
