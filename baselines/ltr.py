"""Learned personalised ranker ``ltr``: LightGBM LambdaMART over PerSRV's own signals.

Candidates are pooled from cheap retrievers (BM25 per field, dense text, the exact query's
clicks, the user's own clicks, popularity; ``pool`` each) and every (request, candidate) gets the
features of :mod:`bench.ltr.features` (BM25 score and rank per field, dense cosine, popularity /
distinct users / distinct queries, clicks under the exact query, the user's clicks on it and how
recently, cosine to the user's nearest style centroid and its size, query length, query seen).
Training (:mod:`bench.ltr.training`) uses the fitting clicks only and respects time: features
from each user's earlier clicks, labels from the later ones, early stopping on the users' last
groups. Fixed ``seed``, ``deterministic=True`` and a fixed ``num_threads``: the same rankings on
any machine of the same platform. Ties in the learned score are broken by sticker id.

Fitted attributes for the run's log: ``feature_importances_`` (feature -> total gain of the final
model), ``training_curve_`` (``{"train": [...], "valid": [...]}`` NDCG@``eval_at`` per round of
the early-stopped model), ``best_iteration_``, ``train_requests_``, ``valid_requests_``,
``n_features_``. ``drop_features`` removes feature groups (:data:`FEATURE_GROUPS`) — the pool
stays the same, so an ablation changes only what the model may look at.
"""

from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from baselines.bm25 import QUERIES_FIELD, field_texts, historical_queries, resolve_fields
from bench.errors import ConfigError
from bench.ltr.features import FEATURE_GROUPS, Corpus, build_signals, candidate_features, \
    unit_rows
from bench.ltr.training import RankerConfig, labelled_rows, predict, train_ranker
from bench.params import Configurable, RetrieverParams, param
from bench.persrv.clustering import ClusterConfig
from bench.registry import register
from bench.retrieval import Request, Run, TrainView

log = logging.getLogger(__name__)


@register("ltr")
class LearnedRanker(Configurable):
    """Learned ranker: LightGBM LambdaMART over PerSRV's signals, trained on earlier clicks only.

    Candidates pooled from BM25 fields, dense text, query clicks, the user's history and
    popularity; features per (request, candidate) from :mod:`bench.ltr.features`."""

    name = "ltr"

    class Params(RetrieverParams):
        pool: int = param(50, ge=1, description="candidates taken from each source")
        fields: list[str] | str = param(["all", QUERIES_FIELD],
                                        description="BM25 fields ('all' text columns, 'queries')")
        dense: bool = param(True, description="dense-text cosine over the text columns")
        dense_model: str = param("default", description="sentence-transformers model")
        n_clusters: int = param(5, ge=1, description="style clusters per user (k-means)")
        drop_features: list[str] = param([], description="feature groups left out: "
                                         + ", ".join(FEATURE_GROUPS))
        learning_rate: float = param(0.05, gt=0, le=1)
        num_leaves: int = param(31, ge=2)
        min_data_in_leaf: int = param(20, ge=1)
        n_estimators: int = param(300, ge=1, description="most boosting rounds")
        early_stopping: int = param(30, ge=1, description="rounds without validation gain")
        max_train_requests: int = param(20000, ge=1, description="labelled requests per "
                                        "set (a seeded sample beyond it)")
        seed: int = param(0, ge=0)
        num_threads: int = param(1, ge=1, description="LightGBM threads (fixed: same results)")
        chinese: Literal["jieba", "char", "none"] = param(
            "jieba", description="Chinese tokenisation (bench.text.Tokenizer)")

    # ----------------------------------------------------------------------------------- fit
    def _corpus(self, train: TrainView) -> Corpus:
        from bench.text import Tokenizer
        unknown = [g for g in self.drop_features if g not in FEATURE_GROUPS]
        if unknown:
            raise ConfigError(f"ltr: drop_features: unknown group {unknown[0]!r} "
                              f"(groups: {', '.join(FEATURE_GROUPS)})")
        fields = resolve_fields(self.fields, train.stickers, self.name)
        ids = train.stickers["sticker_id"].astype(str).to_numpy(dtype=object)
        static = {f: field_texts(train, [f], retriever=self.name) for f in fields
                  if f != QUERIES_FIELD}

        def texts_for(clicks: pd.DataFrame) -> dict[str, list[str]]:
            out = dict(static)
            if QUERIES_FIELD in fields:
                out[QUERIES_FIELD] = historical_queries(clicks, ids)
            return out

        corpus = Corpus(sticker_ids=ids, fields=fields, texts_for=texts_for,
                        tokenizer=Tokenizer(chinese=self.chinese), pool=int(self.pool),
                        cluster=ClusterConfig(n_clusters=int(self.n_clusters),
                                              seed=int(self.seed)))
        if train.embeddings is not None and "style" not in self.drop_features:
            corpus.image_unit = unit_rows(train.embeddings)
        if self.dense and "dense" not in self.drop_features:
            self._attach_dense(corpus, train, [f for f in fields if f != QUERIES_FIELD])
        return corpus

    def _attach_dense(self, corpus: Corpus, train: TrainView, fields: list[str]) -> None:
        """Sentence embeddings of the text columns (not the click-dependent ``queries`` field,
        so one encoding serves every feature history); none when no sticker has text."""
        if not fields or not any(t.strip() for t in field_texts(train, fields, sep="; ")):
            return
        from baselines.dense_text import DenseTextRetriever
        enc = DenseTextRetriever(fields=fields, model=self.dense_model).fit(train)
        docs = np.zeros((corpus.n, enc.embeddings_.shape[1]), dtype=np.float32)
        docs[enc.doc_rows_] = enc.embeddings_
        corpus.dense_docs, corpus.encode = docs, enc._encode
        self.dense_model_id_ = enc.model_id_

    def fit(self, train: TrainView) -> "LearnedRanker":
        corpus = self._corpus(train)
        drop = tuple(self.drop_features)
        cfg = RankerConfig(learning_rate=float(self.learning_rate),
                           num_leaves=int(self.num_leaves),
                           min_data_in_leaf=int(self.min_data_in_leaf),
                           n_estimators=int(self.n_estimators),
                           early_stopping=int(self.early_stopping), seed=int(self.seed),
                           num_threads=int(self.num_threads))
        cap, seed = int(self.max_train_requests), int(self.seed)
        train_rows = labelled_rows(corpus, train.clicks, 1, drop, cap, seed)
        valid_rows = labelled_rows(corpus, train.clicks, 0, drop, cap, seed)
        self._ranker = train_ranker(train_rows, valid_rows, cfg)
        if self._ranker.booster is None:
            log.warning("ltr: no user has two click-groups with a positive in the pool; "
                        "ranking by popularity")
        # the clicks each labelled set took its targets from (inspection, tests); not the rows
        self._training_targets = (train_rows.targets, valid_rows.targets)
        self._signals = build_signals(corpus, train.clicks)
        self._id_rank = np.argsort(np.argsort(corpus.sticker_ids, kind="stable"), kind="stable")
        self.feature_importances_ = dict(self._ranker.importances)
        self.training_curve_ = dict(self._ranker.curve)
        self.best_iteration_ = int(self._ranker.best_iteration)
        self.train_requests_ = int(train_rows.n_requests)
        self.valid_requests_ = int(valid_rows.n_requests)
        self.train_rows_ = int(len(train_rows.y) + len(valid_rows.y))
        self.n_features_ = len(self._ranker.feature_names)
        return self

    # -------------------------------------------------------------------------------- search
    def scored_candidates(self, requests: Sequence[Request]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
        """(request index, sticker row, score, features) of every pooled candidate."""
        req_idx, rows, X = candidate_features(self._signals, requests, tuple(self.drop_features))
        if self._ranker.booster is None:
            scores = self._signals.counts[rows, 0] if len(rows) else np.zeros(0)
        else:
            scores = predict(self._ranker, X, int(self.num_threads))
        return req_idx, rows, scores, X

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top ``k`` candidates per request by the learned score (ties by sticker id)."""
        if not hasattr(self, "_signals"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        requests = list(requests)
        req_idx, rows, scores, _ = self.scored_candidates(requests)
        order = np.lexsort((self._id_rank[rows], -scores, req_idx))
        req_idx, rows, scores = req_idx[order], rows[order], scores[order]
        starts = np.searchsorted(req_idx, np.arange(len(requests) + 1))
        ids = self._signals.corpus.sticker_ids
        run = Run(name=self.name)
        for i, r in enumerate(requests):
            a = int(starts[i])
            e = min(int(starts[i + 1]), a + max(0, int(k)))
            run[r] = list(zip(ids[rows[a:e]].tolist(), scores[a:e].astype(float).tolist()))
        return run
