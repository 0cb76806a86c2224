"""The one BM25 core of the project: Lucene/Elasticsearch BM25 (DESIGN §7) for the ``bm25``
baseline (``backend: native``) and PerSRV's multi-field recall (:mod:`bench.persrv.fields`).

- :mod:`bench.bm25.index`: tokens -> term counts (one CSR build from integer token codes) ->
  BM25 weights ``idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``, with
  ``idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))``, optionally times ``(k1 + 1)`` (Lucene <= 7).
- :mod:`bench.bm25.scoring`: a block of queries as a sparse ``queries x terms`` matrix, one sparse
  product per block (blocks bounded in postings, run on threads), one top-k over the scored
  entries only, ties broken by document position.
"""

from bench.bm25.index import (FieldCounts, COUNTS_KIND, bm25_weights, count_terms,
                              field_counts, lucene_idf, texts_digest, tokenizer_key)
from bench.bm25.scoring import (n_threads, pack_keys, plan_blocks, query_matrix, search_blocks,
                                top_k_csr, unpack_keys)

__all__ = ["FieldCounts", "COUNTS_KIND", "bm25_weights", "count_terms", "field_counts",
           "lucene_idf", "texts_digest", "tokenizer_key", "n_threads", "pack_keys",
           "plan_blocks", "query_matrix", "search_blocks", "top_k_csr", "unpack_keys"]
