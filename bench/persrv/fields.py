"""Multi-field BM25 recall, scored as Elasticsearch's ``multi_match`` (``most_fields``) (DESIGN §7).

For a query q and a sticker d::

    score(d, q) = sum over fields f of boost_f * BM25_f(q, d)  +  doc_boost(d)
    BM25_f(q, d) = sum over query tokens t (each occurrence again) of
                   idf_f(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl_f))      [Lucene >= 8]
    idf_f(t)     = ln(1 + (N_f - n_f(t) + 0.5) / (n_f(t) + 0.5))

Each field keeps its own statistics, as a Lucene field does:

- ``N_f`` is Lucene's ``docCount``: the number of stickers with at least one token in the field
  (an empty or missing field is not counted), and ``avgdl_f`` = tokens in the field / ``N_f``;
- ``n_f(t)`` the number of those stickers containing t; ``tf`` and ``dl`` raw counts.
- Statistics are global, as a one-shard index (Elasticsearch 7+'s default) or
  ``dfs_query_then_fetch`` gives.

**The tf numerator.** Lucene 8 (LUCENE-8563; Elasticsearch 7.0 onwards) dropped the constant
``(k1 + 1)`` factor from the numerator; ``BM25Similarity`` now explains its tf as
``freq / (freq + k1 * (1 - b + b * dl / avgdl))``. We follow that (``k1_plus_one=False``). The factor
does not change a pure-BM25 ranking, but here it does matter: the additive ``doc_boost`` (PerSRV's
utility) would weigh 1/(k1 + 1) = 0.45 times as much against text scores that carry it. Set
``k1_plus_one=True`` to reproduce Lucene <= 7 / Elasticsearch <= 6 scores.

**Differences from a live Elasticsearch** (all documented, none changes the formula):

- lengths are exact; Lucene stores ``dl`` in a lossy one-byte norm (SmallFloat), exact only up
  to 40 tokens, so long fields score slightly differently;
- weights are computed in float64 and stored as float32; sums run in float32 (Lucene: float
  per clause, double sum cast to float), so scores agree to ~1e-6 relative;
- a query token repeated counts once per occurrence, as a ``match`` query's SHOULD clauses do
  (Lucene merges duplicate clauses into one with the summed boost: same score);
- a field with boost 0 is left out of the query (Elasticsearch would still let a match in it
  admit the sticker, with 0 text score, so that ``doc_boost`` alone ranks it).

Only stickers matching at least one query token in a queried field are returned (their text
score is > 0, since idf > 0); ``doc_boost`` alone never admits a sticker, as a ``function_score``
never adds documents its query does not match.

Layout (as bm25s), from the one BM25 core :mod:`bench.bm25`: one CSR matrix ``(sum of field
vocabularies) x stickers`` of precomputed weights, the fields' term rows stacked; a block of
queries becomes a sparse ``queries x terms`` matrix whose values are ``count * boost_f``, so a
block is scored by one sparse product (and boosts can change without re-indexing:
:meth:`MultiFieldBM25.with_boosts`). The top ``pool`` of each row are selected on packed int64
keys (score bits, sticker position), which makes ties break by sticker position.

Fitting tokenizes each field once per run: given the run's ``context``
(:class:`bench.run_context.RunContext`), the per-field term counts are kept in its LRU keyed by
(tokenizer settings, a hash of the field's texts), so PerSRV's ablations, which share fields,
index them once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from bench.progress import track
from bench.bm25 import scoring
from bench.bm25.index import (CACHE_SIZE, FieldCounts, bm25_weights,  # noqa: F401
                              count_terms, field_counts, texts_digest, tokenizer_key)
from bench.bm25.scoring import n_threads, pack_keys, top_k_csr, unpack_keys  # noqa: F401

log = logging.getLogger(__name__)

#: Upper bound on the postings one block's sparse product may touch (bounds its memory).
MAX_BLOCK_POSTINGS = scoring.MAX_BLOCK_POSTINGS
#: Most queries per block.
MAX_BLOCK_QUERIES = scoring.MAX_BLOCK_QUERIES


# --------------------------------------------------------------------------------- the index

class MultiFieldBM25:
    """Sum of per-field BM25 scores with boosts (Elasticsearch ``multi_match`` most_fields).

    ``fields``: field name -> boost (>= 0; 0 means the field is indexed but not queried).
    ``tokenizer``: a callable text -> tokens (a :class:`bench.text.Tokenizer`; its ``batch`` is
    used when present); default ``Tokenizer()``. ``k1``, ``b``: BM25 parameters. ``k1_plus_one``:
    multiply the tf part by (k1 + 1) as Lucene <= 7 did (default False: Lucene >= 8). ``dtype``:
    weight precision (float32; float64 for exact checks through :meth:`score_matrix`; pooled
    scores are float32 either way). ``context``: the run's
    :class:`~bench.run_context.RunContext`, through which field term counts are shared (None:
    nothing shared). ``n_threads``: blocks of queries scored in parallel (default: the CPUs
    available, at most 4).
    """

    def __init__(self, fields: Mapping[str, float], tokenizer: Callable | None = None,
                 k1: float = 1.2, b: float = 0.75, k1_plus_one: bool = False,
                 dtype=np.float32, context: Any = None, n_threads: int | None = None):
        self.fields = dict(fields)
        self.tokenizer = tokenizer
        self.k1 = k1
        self.b = b
        self.k1_plus_one = k1_plus_one
        self.dtype = np.dtype(dtype)
        self.context = context
        self.n_threads = n_threads
        self._check()

    def _check(self) -> None:
        for f, boost in self.fields.items():
            if not np.isfinite(boost) or boost < 0:
                raise ValueError(f"field {f!r}: boost must be finite and >= 0, got {boost!r}")
        if not np.isfinite(self.k1) or self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1 (got k1={self.k1}, b={self.b})")

    # ------------------------------------------------------------------------------- fit
    def fit(self, texts_by_field: Mapping[str, Sequence[Any]],
            n_docs: int | None = None) -> "MultiFieldBM25":
        """Index one text per sticker for every field in ``fields`` (None/NaN = empty field).
        All lists must be equally long (the number of stickers); ``n_docs`` gives that number
        when no field is indexed (then every search returns nothing)."""
        missing = [f for f in self.fields if f not in texts_by_field]
        if missing:
            raise ValueError(f"no texts for field(s) {', '.join(missing)}; "
                             f"got {', '.join(texts_by_field) or '(none)'}")
        sizes = {f: len(texts_by_field[f]) for f in self.fields}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"fields have different numbers of texts: {sizes}")
        if self.tokenizer is None:
            from bench.text import Tokenizer
            self.tokenizer = Tokenizer()
        self.n_docs_ = next(iter(sizes.values()), int(n_docs or 0))
        if n_docs is not None and self.n_docs_ != n_docs:
            raise ValueError(f"fields hold {self.n_docs_} texts, expected n_docs={n_docs}")
        self.counts_: dict[str, FieldCounts] = {}
        self.count_keys_: dict[str, tuple | None] = {}
        blocks, offsets, start = [], {}, 0
        for f in track(self.fields, "BM25 index", "fields"):
            counts = field_counts(texts_by_field[f], self.tokenizer, self.context)
            self.counts_[f] = counts
            self.count_keys_[f] = counts.key
            blocks.append(bm25_weights(counts, self.k1, self.b, self.k1_plus_one, self.dtype))
            offsets[f] = start
            start += counts.tf.shape[0]
        self.term_offset_ = offsets
        self.weights_ = (sp.vstack(blocks, format="csr", dtype=self.dtype) if blocks
                         else sp.csr_matrix((0, self.n_docs_), dtype=self.dtype))
        self.postings_ = np.diff(self.weights_.indptr)
        return self

    def with_boosts(self, boosts: Mapping[str, float]) -> "MultiFieldBM25":
        """A copy sharing this index with other boosts (fields not named keep theirs; every
        field named must have been fitted)."""
        self._require_fit()
        unknown = [f for f in boosts if f not in self.fields]
        if unknown:
            raise ValueError(f"field(s) {', '.join(unknown)} are not in this index "
                             f"({', '.join(self.fields)}); refit to add them")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.fields = {**self.fields, **{f: float(v) for f, v in boosts.items()}}
        new._check()
        return new

    def _require_fit(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("MultiFieldBM25: call fit(texts_by_field) before search")

    # ---------------------------------------------------------------------------- search
    def query_matrix(self, tokens: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Queries x (stacked field terms) CSR: count of each token times its field's boost."""
        import pandas as pd
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        codes, terms = pd.factorize(pd.Series([t for ts in tokens for t in ts], dtype=object))
        return self._query_matrix(codes.astype(np.int64), lengths, terms.tolist())

    def _query_matrix(self, codes: np.ndarray, lengths: np.ndarray,
                      terms: list[str]) -> sp.csr_matrix:
        """:meth:`query_matrix` from token codes (:func:`bench.text.tokenize_to_codes`)."""
        self._require_fit()
        query_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        parts = []
        for f, boost in self.fields.items():
            if boost == 0:
                continue
            row = self.counts_[f].lookup(terms)[codes]
            parts.append((query_of, np.where(row >= 0, row + self.term_offset_[f], -1), boost))
        return scoring.query_matrix(parts, len(lengths), self.weights_.shape[0], self.dtype)

    def search(self, queries: Sequence[str], pool: int, doc_boost: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``pool`` stickers per query by text score + ``doc_boost`` (only stickers matching
        a query token): (positions int32 (n_q, pool) padded with -1, scores float32 padded with
        -inf), best first, ties by sticker position. Repeated queries are scored once."""
        self._require_fit()
        queries = list(queries)
        pool = max(0, int(pool))
        distinct = list(dict.fromkeys(queries))
        from bench.text import tokenize_to_codes
        q = self._query_matrix(*tokenize_to_codes(self.tokenizer, distinct))
        ids, scores = self._search_matrix(q, pool, doc_boost)
        if len(distinct) != len(queries):
            row = {q: i for i, q in enumerate(distinct)}
            take = np.fromiter((row[q] for q in queries), dtype=np.int64, count=len(queries))
            ids, scores = ids[take], scores[take]
        return ids, scores

    def score_matrix(self, queries: Sequence[str], doc_boost: np.ndarray | None = None
                     ) -> sp.csr_matrix:
        """Every matching sticker's score, unranked: queries x stickers CSR in ``dtype`` (for
        checks and explanations; :meth:`search` is the batched top-``pool`` path)."""
        self._require_fit()
        tokens = [self.tokenizer(q) for q in queries]
        block = (self.query_matrix(tokens) @ self.weights_).tocsr()
        if doc_boost is not None and block.nnz:
            block.data += np.asarray(doc_boost, dtype=self.dtype)[block.indices]
        return block

    def search_tokens(self, tokens: Sequence[Sequence[str]], pool: int,
                      doc_boost: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` on tokenized queries (one row per entry, no de-duplication)."""
        return self._search_matrix(self.query_matrix(tokens), pool, doc_boost)

    def _search_matrix(self, q: sp.csr_matrix, pool: int, doc_boost: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray]:
        self._require_fit()
        boost = None
        if doc_boost is not None:
            boost = np.asarray(doc_boost, dtype=self.dtype)
            if boost.shape != (self.n_docs_,):
                raise ValueError(f"doc_boost must have one value per sticker "
                                 f"({self.n_docs_}), got shape {boost.shape}")
            if not np.isfinite(boost).all():
                raise ValueError("doc_boost holds NaN or infinite values")
        return scoring.search_blocks(q, self.weights_, max(0, int(pool)), boost,
                                     threads=self.n_threads, max_queries=MAX_BLOCK_QUERIES,
                                     max_postings=MAX_BLOCK_POSTINGS)
