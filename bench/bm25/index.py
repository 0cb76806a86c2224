"""BM25 index build: token codes -> term counts (terms x documents CSR) -> Lucene weights.

``count_terms`` takes tokenized documents or integer token codes (:func:`bench.text.tokenize_to_codes`)
and builds the CSR in one pass; :func:`field_counts` tokenizes a field's texts, through the run's
cache (:class:`bench.run_context.RunContext`) keyed by (tokenizer settings, a hash of the texts)
when one is given, so retrievers that share a field (PerSRV's ablations) index it once per run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

#: Field term-count tables kept in a run's cache.
CACHE_SIZE = 8


@dataclass
class FieldCounts:
    """Raw statistics of one field: ``tf`` (terms x documents CSR of term counts, float32 data,
    indices sorted per row), ``dl`` (tokens per document, int64), ``vocab`` (term -> row),
    ``terms`` (row -> term)."""

    tf: sp.csr_matrix
    dl: np.ndarray
    vocab: dict[str, int]
    key: tuple | None = None  # (tokenizer settings, texts digest) when cached
    terms: list[str] = field(default_factory=list)

    @property
    def doc_count(self) -> int:
        """Lucene's docCount: documents with at least one token in the field."""
        return int(np.count_nonzero(self.dl))

    @property
    def avgdl(self) -> float:
        n = self.doc_count
        return float(self.dl.sum()) / n if n else 0.0

    @property
    def doc_freq(self) -> np.ndarray:
        return np.diff(self.tf.indptr)

    def lookup(self, terms: Sequence[str]) -> np.ndarray:
        """Row of each term (int64, -1 for a term not in the vocabulary)."""
        import pandas as pd
        index = self.__dict__.get("_index")
        if index is None:
            index = self.__dict__["_index"] = pd.Index(self.terms, dtype=object)
        return index.get_indexer(pd.Index(list(terms), dtype=object)).astype(np.int64) \
            if len(terms) else np.zeros(0, dtype=np.int64)


#: The :class:`~bench.run_context.RunContext` cache kind of tokenized field term counts.
COUNTS_KIND = "bm25-field-counts"


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


def counts_from_codes(codes: np.ndarray, lengths: np.ndarray, terms: list[str]) -> FieldCounts:
    """Term counts from integer token codes (``codes`` (total,), ``lengths`` (n_docs,) tokens per
    document, ``terms[code]``): one COO -> CSR conversion summing repeated (term, doc) pairs."""
    n_docs = len(lengths)
    lengths = np.asarray(lengths, dtype=np.int64)
    doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    tf = sp.csr_matrix((np.ones(len(codes), dtype=np.float32),
                        (np.asarray(codes, dtype=np.int64), doc_of)), shape=(len(terms), n_docs))
    tf.sum_duplicates()
    return FieldCounts(tf=tf, dl=lengths, vocab={t: i for i, t in enumerate(terms)},
                       terms=list(terms))


def count_terms(docs: Sequence[Sequence[str]]) -> FieldCounts:
    """Term counts of tokenized documents: the k1/b-independent part of a BM25 index."""
    import pandas as pd
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    codes, terms = pd.factorize(pd.Series([t for d in docs for t in d], dtype=object))
    return counts_from_codes(codes, lengths, terms.tolist())


def field_counts(texts: Sequence[Any], tokenizer: Callable, context: Any = None) -> FieldCounts:
    """Tokenize and count one field's texts (vectorised: :func:`bench.text.tokenize_to_codes`).
    With a run ``context`` (:class:`bench.run_context.RunContext`) counts of the same texts and
    tokenizer settings are computed once per run. ``counts.key`` identifies the input (None for
    a tokenizer that is not a :class:`bench.text.Tokenizer`)."""
    from bench.text import tokenize_to_codes
    tok_key = tokenizer_key(tokenizer)
    key = (tok_key, texts_digest(texts)) if tok_key is not None else None

    def compute() -> FieldCounts:
        counts = counts_from_codes(*tokenize_to_codes(tokenizer, list(texts)))
        counts.key = key
        return counts

    if key is None or context is None:
        return compute()
    return context.cached(COUNTS_KIND, key, compute, size=CACHE_SIZE)


def lucene_idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene's idf, float64: ln(1 + (N - n + 0.5) / (n + 0.5))."""
    df = np.asarray(doc_freq, dtype=np.float64)
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def bm25_weights(counts: FieldCounts, k1: float, b: float, k1_plus_one: bool = False,
                 dtype=np.float32) -> sp.csr_matrix:
    """Per-(term, document) BM25 weights of one field (terms x documents CSR), Lucene's formula
    computed in float64 and cast to ``dtype``; N and avgdl count documents with a token only."""
    tf = counts.tf
    n_docs = counts.doc_count
    if n_docs == 0:
        return sp.csr_matrix(tf.shape, dtype=dtype)
    idf = lucene_idf(counts.doc_freq, n_docs)
    row = np.repeat(np.arange(tf.shape[0]), np.diff(tf.indptr))
    freq = tf.data.astype(np.float64)
    norm = k1 * (1.0 - b + b * counts.dl[tf.indices] / counts.avgdl)
    w = idf[row] * freq / (freq + norm)
    if k1_plus_one:
        w *= k1 + 1.0
    return sp.csr_matrix((w.astype(dtype), tf.indices.copy(), tf.indptr.copy()), shape=tf.shape)
