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

Layout (as bm25s): one CSR matrix ``(sum of field vocabularies) x stickers`` of precomputed
weights, the fields' term rows stacked; a block of queries becomes a sparse ``queries x terms``
matrix whose values are ``count * boost_f``, so a block is scored by one sparse product (and
boosts can change without re-indexing: :meth:`MultiFieldBM25.with_boosts`). The top ``pool`` of
each row are selected on packed int64 keys (score bits, sticker position), which makes ties break
by sticker position and sorts a whole block at once.

Fitting tokenizes each field once per process: the per-field term counts are kept in a small LRU
cache keyed by (tokenizer settings, a hash of the field's texts), so PerSRV's ablations, which
share fields, index them once (:func:`clear_cache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

#: Upper bound on the postings one block's sparse product may touch (bounds its memory).
MAX_BLOCK_POSTINGS = 1 << 24
#: Most queries per block.
MAX_BLOCK_QUERIES = 1024
#: Field term-count tables kept in the per-process cache.
CACHE_SIZE = 8

_PAD_KEY = np.uint64(np.iinfo(np.uint64).max)
_SIGN = np.uint32(0x80000000)


# --------------------------------------------------------------------------- per-field counts

@dataclass
class FieldCounts:
    """Raw statistics of one field: ``tf`` (terms x stickers CSR of term counts, float32 data),
    ``dl`` (tokens per sticker), ``vocab`` (term -> row)."""

    tf: sp.csr_matrix
    dl: np.ndarray
    vocab: dict[str, int]
    key: tuple | None = None  # (tokenizer settings, texts digest) when cached

    @property
    def doc_count(self) -> int:
        """Lucene's docCount: stickers with at least one token in the field."""
        return int(np.count_nonzero(self.dl))

    @property
    def avgdl(self) -> float:
        n = self.doc_count
        return float(self.dl.sum()) / n if n else 0.0

    @property
    def doc_freq(self) -> np.ndarray:
        return np.diff(self.tf.indptr)


_CACHE: "OrderedDict[tuple, FieldCounts]" = OrderedDict()


def clear_cache() -> None:
    """Forget the cached field term counts."""
    _CACHE.clear()


def tokenizer_key(tokenizer: Any) -> tuple | None:
    """What identifies a tokenizer's output: its settings (a bench.text.Tokenizer); None for
    any other callable (not cached: an object id may be reused)."""
    attrs = ("lowercase", "stem", "chinese", "stopwords")
    if all(hasattr(tokenizer, a) for a in attrs):
        stop = tokenizer.stopwords
        if stop is not None and not isinstance(stop, str):
            stop = tuple(sorted(stop))
        return (type(tokenizer).__qualname__, tokenizer.lowercase, tokenizer.stem,
                tokenizer.chinese, stop)
    return None


def texts_digest(texts: Sequence[Any]) -> str:
    """A content hash of a list of texts (None/NaN and "" hash alike: both are empty)."""
    h = hashlib.blake2b(digest_size=16)
    texts = [t if isinstance(t, str) else "" for t in texts]
    h.update(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)).tobytes())
    joined = "".join(texts)
    h.update(joined.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def count_terms(docs: Sequence[Sequence[str]]) -> FieldCounts:
    """Term counts of tokenized documents: the k1/b-independent part of a BM25 index."""
    n_docs = len(docs)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n_docs)
    total = int(lengths.sum())
    vocab: dict[str, int] = {}
    setdefault = vocab.setdefault
    codes = np.fromiter((setdefault(t, len(vocab)) for d in docs for t in d),
                        dtype=np.int64, count=total)
    doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    tf = sp.csr_matrix((np.ones(total, dtype=np.float32), (codes, doc_of)),
                       shape=(len(vocab), n_docs))
    tf.sum_duplicates()
    return FieldCounts(tf=tf, dl=lengths, vocab=vocab)


def field_counts(texts: Sequence[Any], tokenizer: Callable, use_cache: bool = True) -> FieldCounts:
    """Tokenize and count one field's texts, through the per-process cache."""
    tok_key = tokenizer_key(tokenizer) if use_cache else None
    key = (tok_key, texts_digest(texts)) if tok_key is not None else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    batch = getattr(tokenizer, "batch", None)
    docs = batch(list(texts)) if batch is not None else [tokenizer(t) for t in texts]
    counts = count_terms(docs)
    counts.key = key
    if key is not None:
        _CACHE[key] = counts
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return counts


def bm25_weights(counts: FieldCounts, k1: float, b: float, k1_plus_one: bool = False,
                 dtype=np.float32) -> sp.csr_matrix:
    """Per-(term, sticker) BM25 weights of one field (terms x stickers CSR), Lucene's formula,
    computed in float64 and cast to ``dtype``."""
    tf = counts.tf
    n_docs = counts.doc_count
    if n_docs == 0:
        return sp.csr_matrix(tf.shape, dtype=dtype)
    df = counts.doc_freq.astype(np.float64)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    row = np.repeat(np.arange(tf.shape[0]), np.diff(tf.indptr))
    freq = tf.data.astype(np.float64)
    norm = k1 * (1.0 - b + b * counts.dl[tf.indices] / counts.avgdl)
    w = idf[row] * freq / (freq + norm)
    if k1_plus_one:
        w *= k1 + 1.0
    return sp.csr_matrix((w.astype(dtype), tf.indices.copy(), tf.indptr.copy()), shape=tf.shape)


# ------------------------------------------------------------------------------------- top-k

def pack_keys(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 keys that sort ascending as (score descending, position ascending)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    mono = np.where(bits & _SIGN, ~bits, bits | _SIGN)  # ascending uint32 <=> ascending float
    return ((~mono).astype(np.uint64) << np.uint64(32)) | positions.astype(np.uint64)


def unpack_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions int32 with -1 for padding, scores float32 with -inf for padding)."""
    pad = keys == _PAD_KEY
    mono = ~(keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(mono & _SIGN, mono & ~_SIGN, ~mono)
    scores = bits.view(np.float32)
    pos = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64).astype(np.int32)
    pos[pad] = -1
    scores[pad] = -np.inf
    return pos, scores


def top_k_csr(block: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` stored entries of each row of a CSR block: (positions int32 (n, k) padded with
    -1, scores float32 (n, k) padded with -inf), best first, ties by position.

    A row longer than ``k`` is cut at its k-th largest score (one O(m) partition of float32
    values); only the entries at or above the cut are packed into keys, sorted per row."""
    n = block.shape[0]
    out = np.full((n, k), _PAD_KEY, dtype=np.uint64)
    if block.nnz == 0 or k == 0:
        return unpack_keys(out)
    data = np.ascontiguousarray(block.data, dtype=np.float32)
    indices, indptr = block.indices, block.indptr
    lengths = np.diff(indptr)
    big = np.flatnonzero(lengths > k)
    if big.size:
        cut = np.full(n, -np.inf, dtype=np.float32)
        for r in big.tolist():
            seg = data[indptr[r]:indptr[r + 1]]
            cut[r] = np.partition(seg, seg.size - k)[seg.size - k]
        sel = np.flatnonzero(data >= np.repeat(cut, lengths))
        row = np.searchsorted(indptr, sel, side="right") - 1
    else:
        sel = None
        row = np.repeat(np.arange(n), lengths)
    kept = np.bincount(row, minlength=n)
    keys = pack_keys(data if sel is None else data[sel], indices if sel is None else indices[sel])
    slot = np.arange(keys.size) - (np.cumsum(kept) - kept)[row]
    fits = kept[row] <= k
    out[row[fits], slot[fits]] = keys[fits]
    starts = np.cumsum(kept) - kept
    for r in np.flatnonzero(kept > k).tolist():  # ties at the cut: keep the k smallest keys
        seg = keys[starts[r]:starts[r] + kept[r]]
        out[r] = np.partition(seg, k - 1)[:k]
    out.sort(axis=1)
    return unpack_keys(out)


# --------------------------------------------------------------------------------- the index

class MultiFieldBM25:
    """Sum of per-field BM25 scores with boosts (Elasticsearch ``multi_match`` most_fields).

    ``fields``: field name -> boost (>= 0; 0 means the field is indexed but not queried).
    ``tokenizer``: a callable text -> tokens (a :class:`bench.text.Tokenizer`; its ``batch`` is
    used when present); default ``Tokenizer()``. ``k1``, ``b``: BM25 parameters. ``k1_plus_one``:
    multiply the tf part by (k1 + 1) as Lucene <= 7 did (default False: Lucene >= 8). ``dtype``:
    weight precision (float32; float64 for exact checks through :meth:`score_matrix`; pooled
    scores are float32 either way). ``use_cache``: share field term counts through the
    per-process cache. ``n_threads``: blocks of queries scored in parallel (default: the CPUs
    available, at most 4).
    """

    def __init__(self, fields: Mapping[str, float], tokenizer: Callable | None = None,
                 k1: float = 1.2, b: float = 0.75, k1_plus_one: bool = False,
                 dtype=np.float32, use_cache: bool = True, n_threads: int | None = None):
        self.fields = dict(fields)
        self.tokenizer = tokenizer
        self.k1 = k1
        self.b = b
        self.k1_plus_one = k1_plus_one
        self.dtype = np.dtype(dtype)
        self.use_cache = use_cache
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
        for f in self.fields:
            counts = field_counts(texts_by_field[f], self.tokenizer, self.use_cache)
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
        self._require_fit()
        rows, cols, vals = [], [], []
        for f, boost in self.fields.items():
            if boost == 0:
                continue
            vocab, off = self.counts_[f].vocab, self.term_offset_[f]
            for i, toks in enumerate(tokens):
                for t in toks:
                    j = vocab.get(t)
                    if j is not None:
                        rows.append(i)
                        cols.append(off + j)
                        vals.append(boost)
        q = sp.csr_matrix((np.asarray(vals, dtype=self.dtype),
                           (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
                          shape=(len(tokens), self.weights_.shape[0]))
        q.sum_duplicates()
        return q

    def search(self, queries: Sequence[str], pool: int, doc_boost: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``pool`` stickers per query by text score + ``doc_boost`` (only stickers matching
        a query token): (positions int32 (n_q, pool) padded with -1, scores float32 padded with
        -inf), best first, ties by sticker position. Repeated queries are scored once."""
        self._require_fit()
        queries = list(queries)
        pool = max(0, int(pool))
        distinct = list(dict.fromkeys(queries))
        tokens = self.tokenizer.batch(distinct) if hasattr(self.tokenizer, "batch") \
            else [self.tokenizer(q) for q in distinct]
        ids, scores = self.search_tokens(tokens, pool, doc_boost)
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
        self._require_fit()
        nq = len(tokens)
        ids = np.full((nq, pool), -1, dtype=np.int32)
        scores = np.full((nq, pool), -np.inf, dtype=np.float32)
        if nq == 0 or pool == 0:
            return ids, scores
        boost = None
        if doc_boost is not None:
            boost = np.asarray(doc_boost, dtype=self.dtype)
            if boost.shape != (self.n_docs_,):
                raise ValueError(f"doc_boost must have one value per sticker "
                                 f"({self.n_docs_}), got shape {boost.shape}")
            if not np.isfinite(boost).all():
                raise ValueError("doc_boost holds NaN or infinite values")
        q = self.query_matrix(tokens)
        q_bool = q.copy()
        q_bool.data[:] = 1
        cost = np.asarray(q_bool @ self.postings_.astype(np.float64)).ravel()
        bounds, start = [], 0
        while start < nq:
            stop, used = start + 1, cost[start]
            while stop < nq and stop - start < MAX_BLOCK_QUERIES and \
                    used + cost[stop] <= MAX_BLOCK_POSTINGS:
                used += cost[stop]
                stop += 1
            bounds.append((start, stop))
            start = stop

        def run(span: tuple[int, int]) -> None:
            a, e = span
            block = (q[a:e] @ self.weights_).tocsr()
            if boost is not None and block.nnz:
                block.data += boost[block.indices]
            ids[a:e], scores[a:e] = top_k_csr(block, pool)

        threads = min(len(bounds), n_threads(self.n_threads))
        if threads <= 1:
            for span in bounds:
                run(span)
        else:  # scipy's sparse product and numpy's partition/sort release the GIL
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(threads) as pool_exec:
                list(pool_exec.map(run, bounds))
        return ids, scores


def n_threads(requested: int | None) -> int:
    """Worker threads: ``requested``, or the CPUs this process may use (at most 4)."""
    if requested is not None:
        return max(1, int(requested))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))
