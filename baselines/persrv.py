"""PerSRV (Chee et al., 2024) and its ablations as registered retrievers (DESIGN §7).

``search`` = recall (multi-field BM25 + utility boost, top ``pool``: :mod:`bench.persrv.fields`,
:mod:`bench.persrv.utility`) then the personalised re-rank toward the user's style clusters
(:mod:`bench.persrv.personalization`), cut at k.

Fields (each a BM25 field with its own statistics and boost): ``ocr`` <- column ``ocr_text``,
``queries`` <- the distinct queries of the fitting clicks (``TrainView.clicks`` only, never a
later split), ``description`` <- ``description`` (VLM), ``keywords`` <- ``keywords`` (VLM
keywords/emotions; off by default, as in the reference), ``text`` <- the dataset's other text
columns (``text``, ``title``, ...) joined, per ``text_columns`` (by default not the source fields
a dataset marks as metadata, e.g. persrv-csv's emotion/keyword/type columns). A field whose
column is absent, or whose boost is 0, is not queried.

Registered here: ``persrv``; its ablations and the ``persrv-reference`` preset (the same class
with other defaults) are in :mod:`baselines.persrv_variants`. Recall pools and their shared cache:
:mod:`bench.persrv.recall_cache`; clusters: :mod:`bench.persrv.clustering`; re-rank:
:mod:`bench.persrv.rerank` (and :mod:`bench.persrv.standardized` for the reference geometry).

Parameters: declared once in :class:`baselines.persrv_config.PerSRVParams` (types, ranges,
allowed values, refit groups). For sweeps: ``fit`` keeps the index; :meth:`PerSRV.with_params`
returns a fitted retriever with some parameters changed that refits only the parts their refit
groups name (``clusters``: the clusters; ``search``: nothing; ``utility``: the utility vector;
``boosts``: re-weights the index, indexing a newly enabled field; ``index``: everything) and
shares the recall cache whenever recall is unchanged. :meth:`PerSRV.recall` and
:meth:`PerSRV.personalize` are the two halves of ``search``. Recall pools are cached per distinct
query, per fitted retriever and its ``with_params`` copies (:mod:`bench.persrv.recall_cache`);
tokenized fields are shared within a run through ``train.context``.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import numpy as np
import pandas as pd

from baselines.persrv_config import (FIELD_BOOSTS, FIELD_COLUMNS, PerSRVConfig,  # noqa: F401
                                     PerSRVParams, historical_queries)
from bench.errors import ConfigError
from bench.persrv.clustering import UserClusters, cluster_users, inverse_norms, user_points
from bench.persrv.fields import MultiFieldBM25
from bench.persrv.recall_cache import RecallCaches, RecallPool, digest
from bench.persrv.rerank import rerank
from bench.persrv.standardized import rerank_standardized, standardized_clusters
from bench.persrv.utility import utility_boost, utility_values
from bench.registry import register
from bench.retrieval import Request, Run, TrainView
from bench.text import Tokenizer

log = logging.getLogger(__name__)


@register("persrv")
class PerSRV(PerSRVConfig):
    """PerSRV: multi-field BM25 + sticker utility recall, re-ranked toward the user's style clusters.

    Fields and boosts: ``ocr_boost`` (ocr_text), ``queries_boost`` (train-click queries),
    ``desc_boost`` (VLM description), ``keywords_boost`` (VLM keywords), ``text_boost`` (every
    other text column, chosen by ``text_columns``: see :meth:`text_field_columns`); 0 turns a
    field off. BM25: ``k1``, ``b``, ``k1_plus_one`` (Lucene <= 7 numerator), tokenizer ``stem``
    and ``chinese``. ``pool``: recall depth re-ranked; ``pool_per_k`` > 0 makes it
    ``pool_per_k x k`` of each search instead (the reference: 5).
    Utility (``utility`` on/off): ``utility_source`` (clicks | columns), ``utility_components``
    ("popularity", "users", "queries", comma-separated), ``utility_combine``,
    ``utility_normalize``, ``utility_factor``, ``utility_modifier``, ``utility_missing`` (see
    :class:`bench.persrv.utility.UtilityConfig`). Personalization (``personalization`` on/off):
    ``cluster_algorithm``, ``n_clusters``, ``min_cluster_size``, ``hdbscan_min_samples``,
    ``hdbscan_noise``, ``cluster_linkage``, ``gmm_covariance``, ``min_radius``,
    ``cluster_max_iter``, ``kmeans_impl`` (see
    :class:`~bench.persrv.clustering.ClusterConfig`),
    ``geometry`` (cosine: unit vectors, cosine radius | standardized: the reference's per-user
    standardised space, Euclidean radius, :mod:`bench.persrv.standardized`), ``rerank_weight``,
    ``rerank_mode`` (multiply | sum) and ``rerank_never_lower`` (a score is only ever raised, as
    in the reference). ``seed``: clustering randomness.
    ``n_threads``: recall and re-rank threads (default: available CPUs, at most 4).
    """

    name = "persrv"

    def fit(self, train: TrainView) -> "PerSRV":
        self.train_ = train
        self.recall_caches_ = RecallCaches()  # shared by the with_params copies of this fit
        self._boost_counts = None  # diagnostics(): re-rank counts of this fit's searches
        self.user_points_ = None  # points of the clusters: per TrainView, reused by with_params
        self.sticker_ids_ = np.asarray(train.sticker_ids, dtype=object)
        self._fit_index(train)
        self._fit_utility(train)
        self._fit_clusters(train)
        self._attach_recall_cache()
        return self

    def _fit_index(self, train: TrainView) -> None:
        try:
            tokenizer = Tokenizer(stem=self.stem, chinese=self.chinese)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        texts = self.field_texts(train)
        boosts = {f: b for f, b in self.boosts().items() if b > 0 and f in texts}
        if not boosts:
            log.warning("%s: no field to search (boosts %s, fields present: %s); every search "
                        "returns nothing", self.name, self.boosts(), ", ".join(texts))
        self.index_ = MultiFieldBM25(boosts, tokenizer=tokenizer, k1=self.k1, b=self.b,
                                     k1_plus_one=self.k1_plus_one, n_threads=self.n_threads,
                                     context=train.context).fit({f: texts[f] for f in boosts},
                                           n_docs=len(train.stickers))
        self.n_stickers_ = len(train.stickers)

    def _fit_utility(self, train: TrainView) -> None:
        self.utility_values_ = None
        self.doc_boost_ = None
        if not self.utility:
            return
        cfg = self.utility_config()
        try:
            self.utility_values_ = utility_values(train.clicks, train.sticker_ids, cfg,
                                                  stickers=train.stickers)
            self.doc_boost_ = utility_boost(self.utility_values_, cfg).astype(np.float32)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None

    def _fit_clusters(self, train: TrainView) -> None:
        self.clusters_: UserClusters | None = None
        if not self.personalization:
            return
        emb = train.embeddings
        if emb is None:
            log.warning("%s: the dataset has no image embeddings (features.embeddings not run?); "
                        "personalization is disabled for this run", self.name)
            return
        emb = np.asarray(emb)
        if emb.ndim != 2 or len(emb) != len(train.stickers):
            raise ConfigError(f"{self.name}: embeddings have shape {emb.shape}, expected one row "
                              f"per sticker ({len(train.stickers)})")
        if getattr(self, "user_points_", None) is None:  # kept by with_params copies
            self.embeddings_ = emb
            self.inv_norms_ = inverse_norms(emb)
            clicks = train.clicks
            rows = pd.Index(self.sticker_ids_.astype(str)).get_indexer(
                clicks["sticker_id"].astype(str)) if len(clicks) else np.zeros(0, dtype=np.int64)
            users = clicks["user_id"].astype(str).tolist() if len(clicks) else []
            self.user_points_ = user_points(users, rows, emb, inv_norms=self.inv_norms_)
        if self.geometry == "standardized":
            self.clusters_ = standardized_clusters(self.user_points_, emb, self.cluster_config())
        else:
            self.clusters_ = cluster_users(self.user_points_, self.cluster_config())

    def _pool_width(self) -> int:
        """The recall depth: ``pool``, at most the number of stickers."""
        return max(1, min(int(self.pool), self.n_stickers_))

    def _recall_signature(self) -> tuple | None:
        """What determines the recall pools (None: not shareable between retrievers)."""
        idx = self.index_
        if any(idx.count_keys_.get(f) is None for f in idx.fields):
            return None
        fields = tuple(sorted((f, b, str(idx.count_keys_[f])) for f, b in idx.fields.items()))
        return (fields, idx.k1, idx.b, idx.k1_plus_one, str(idx.dtype), self._pool_width(),
                digest(self.doc_boost_), self.n_stickers_)

    def _attach_recall_cache(self) -> None:
        self._recall = self.recall_caches_.get(self._recall_signature())

    def with_params(self, **params) -> "PerSRV":
        """A retriever with ``params`` changed that reuses this one's fitted state where the
        refit groups of the changed parameters allow (see the module doc). Works before fit too
        (then it only sets params)."""
        validated, changed = self.changed_params(params)
        if not changed:
            return self
        new = copy.copy(self)
        new._set_params(validated)
        if not hasattr(self, "index_"):
            return new
        groups = {self.Params.refit_group(k) for k in changed}
        train = self.train_
        if groups & {"index", "fit"}:
            return new.fit(train)
        if "boosts" in groups:
            present = set(self.field_texts(train)) if any(
                b > 0 and f not in self.index_.fields for f, b in new.boosts().items()) else set()
            if any(b > 0 and f not in self.index_.fields and f in present
                   for f, b in new.boosts().items()):
                new._fit_index(train)
            else:
                new.index_ = self.index_.with_boosts(
                    {f: b for f, b in new.boosts().items() if f in self.index_.fields})
        if "threads" in groups:
            if new.index_ is self.index_:
                new.index_ = new.index_.with_boosts({})
            new.index_.n_threads = new.n_threads
        if "utility" in groups:
            new._fit_utility(train)
        if "clusters" in groups:
            new._fit_clusters(train)
        if groups & {"boosts", "utility", "recall"}:
            new._attach_recall_cache()
        return new

    # ------------------------------------------------------------------------------ search
    def _require_fit(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")

    def recall(self, requests: Sequence[Request] | Sequence[str]) -> RecallPool:
        """The recall pools (top ``pool`` by multi-field BM25 + utility) of the distinct queries
        of ``requests`` (Request objects or query strings); computed once per query and cached."""
        self._require_fit()
        queries = list(dict.fromkeys(r.query if isinstance(r, Request) else str(r)
                                     for r in requests))
        cache = self._recall
        missing = [q for q in queries if q not in cache.where]
        if missing:
            ids, scores = self.index_.search(missing, self._pool_width(), self.doc_boost_)
            cache.add(RecallPool(missing, ids, scores))
        homes = {cache.where[q][0] for q in queries}
        if len(homes) == 1:
            pool = cache.pools[next(iter(homes))]
            if len(pool) == len(queries):
                return pool
        width = self._pool_width()
        at = [cache.where[q] for q in queries]
        ids = np.stack([cache.pools[p].ids[i] for p, i in at]) if queries else \
            np.zeros((0, width), dtype=np.int32)
        scores = np.stack([cache.pools[p].scores[i] for p, i in at]) if queries else \
            np.zeros((0, width), dtype=np.float32)
        merged = RecallPool(queries, ids, scores)
        if queries:
            cache.add(merged, repoint=True)
        return merged

    def personalize(self, pool: RecallPool, requests: Sequence[Request], k: int,
                    clusters: UserClusters | None = None, weight: float | None = None,
                    mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Re-rank each request's recall pool toward its user's clusters; the top ``k`` as
        (sticker rows int32 (n, k) with -1 padding, scores float32 with -inf padding).
        ``clusters``/``weight``/``mode`` default to the fitted clusters and the parameters; with
        personalization off (or no embeddings) the pool's own top ``k``."""
        self._require_fit()
        requests = list(requests)
        rows = pool.rows(requests)
        k = max(0, int(k))
        clusters = self.clusters_ if clusters is None else clusters
        if clusters is None or not self.personalization:
            width = min(k, pool.ids.shape[1])
            ids = np.full((len(requests), k), -1, dtype=np.int32)
            scores = np.full((len(requests), k), -np.inf, dtype=np.float32)
            ids[:, :width] = pool.ids[rows, :width]
            scores[:, :width] = pool.scores[rows, :width]
            return ids, scores
        users = clusters.user_index([r.user_id for r in requests])
        weight = self.rerank_weight if weight is None else weight
        mode = self.rerank_mode if mode is None else mode
        never_lower = bool(self.rerank_never_lower)
        if self.geometry == "standardized":
            return rerank_standardized(pool.ids, pool.scores, users, self.embeddings_, clusters,
                                       weight=weight, mode=mode, k=k, pool_row=rows,
                                       never_lower=never_lower, n_threads=self.n_threads)
        return rerank(pool.ids, pool.scores, users, self.embeddings_, clusters, weight=weight,
                      mode=mode, k=k, pool_row=rows, inv_norms=self.inv_norms_,
                      n_threads=self.n_threads, never_lower=never_lower)

    def to_run(self, requests: Sequence[Request], ids: np.ndarray, scores: np.ndarray) -> Run:
        """A :class:`Run` from sticker-row results (padding dropped)."""
        run = Run(name=self.name)
        sids = self.sticker_ids_
        for r, row_ids, row_scores in zip(requests, ids, scores):
            ok = row_ids >= 0
            run[r] = list(zip(sids[row_ids[ok]].tolist(), row_scores[ok].astype(float).tolist()))
        return run

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top ``k`` stickers per request (at most ``max(pool, k)`` recalled)."""
        self._require_fit()
        requests = list(requests)
        if not requests:
            return Run(name=self.name)
        if int(self.pool_per_k) > 0:  # the reference: recall depth = pool_per_k x k
            me = self.with_params(pool=max(1, int(self.pool_per_k) * int(k)), pool_per_k=0)
        else:
            me = self if int(k) <= self._pool_width() or int(self.pool) >= self.n_stickers_ \
                else self.with_params(pool=int(k))
        pool = me.recall(requests)
        ids, scores = me.personalize(pool, requests, int(k))
        if me.personalization and me.clusters_ is not None and me.geometry == "cosine":
            from bench.persrv.diagnostics import add_counts, boost_counts
            self._boost_counts = add_counts(getattr(self, "_boost_counts", None), boost_counts(
                me.clusters_, me.user_points_, me.embeddings_, me.inv_norms_,
                [r.user_id for r in requests], ids))
        return self.to_run(requests, ids, scores)

    def diagnostics(self) -> dict[str, float]:
        """Personalisation diagnostics of the fit and the searches so far (cluster shapes, where
        the re-rank lands): :func:`bench.persrv.diagnostics.persrv_diagnostics`."""
        from bench.persrv.diagnostics import persrv_diagnostics
        return persrv_diagnostics(getattr(self, "clusters_", None),
                                  getattr(self, "user_points_", None),
                                  getattr(self, "_boost_counts", None))
