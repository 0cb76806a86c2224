"""Time-respecting training data and the LightGBM LambdaMART model of the ``ltr`` retriever.

The ranker learns from the fitting clicks only (``TrainView.clicks``; the harness never hands a
retriever validation or test clicks), and never from the future: each user's clicks, ordered by
``ts``, form click-groups (:func:`bench.data.splits.click_groups`), numbered from the end (0 =
the user's last group). A *labelled set* ``from_end = g`` takes, for every user, the group ``g``
as the target request (its clicked stickers are the positives) and computes the features from
the groups before it (``from_end > g``) of *every* user — so a target click never counts in its
own popularity, query-click or history features:

- training rows: ``from_end = 1`` (each user's second-last group, features from the rest before);
- validation rows (early stopping): ``from_end = 0`` (each user's last group, features from all
  earlier clicks) — the same situation as the evaluated requests, one step earlier.

LightGBM's ``lambdarank`` is trained on the training rows with early stopping on the validation
rows' NDCG@``eval_at``, then refitted on both sets for the best number of rounds. Requests whose
pool holds no positive are left out (counted). Determinism: ``deterministic=True``,
``force_row_wise=True``, a fixed ``seed`` and a fixed ``num_threads`` (not the machine's count).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.data.splits import click_groups
from bench.ltr.features import Corpus, build_signals, candidate_features
from bench.retrieval import Request


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM settings (``n_estimators``: most boosting rounds; ``early_stopping``: rounds
    without validation gain before stopping; ``eval_at``: the NDCG cutoff watched)."""

    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    n_estimators: int = 300
    early_stopping: int = 30
    eval_at: int = 20
    seed: int = 0
    num_threads: int = 1

    def lgb_params(self) -> dict[str, Any]:
        return {"objective": "lambdarank", "metric": "ndcg", "eval_at": [int(self.eval_at)],
                "learning_rate": float(self.learning_rate), "num_leaves": int(self.num_leaves),
                "min_data_in_leaf": int(self.min_data_in_leaf), "seed": int(self.seed),
                "deterministic": True, "force_row_wise": True,
                "num_threads": int(self.num_threads), "verbosity": -1,
                "feature_pre_filter": False}


@dataclass
class LabelledRows:
    """One labelled set: feature frame ``X``, binary labels ``y``, rows per request ``groups``
    (requests in order), the requests, and the target clicks they were labelled from."""

    X: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray
    requests: list[Request]
    targets: pd.DataFrame
    without_positive: int = 0

    @property
    def n_requests(self) -> int:
        return len(self.groups)


def history_and_targets(clicks: pd.DataFrame, from_end: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, targets): every user's click-group ``from_end`` (0 = last) as targets, the
    groups before it (of every user) as history. Users with fewer groups give no targets."""
    if len(clicks) == 0:
        return clicks, clicks
    order = np.lexsort((np.arange(len(clicks)), clicks["ts"].to_numpy(),
                        clicks["user_id"].astype(str).to_numpy()))
    df = clicks.iloc[order].reset_index(drop=True)
    df = df.astype({"user_id": str, "query": str, "sticker_id": str})
    group = click_groups(df)
    n_groups = pd.Series(group).groupby(df["user_id"].to_numpy()).transform("max").to_numpy() + 1
    fe = n_groups - 1 - group
    return df[fe > from_end], df[fe == from_end]


def sample_requests(pairs: pd.DataFrame, max_requests: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_requests`` (user_id, query) rows: those with the smallest seeded hash of
    (seed, user, query), so the sample does not depend on row order or thread count."""
    if max_requests is None or len(pairs) <= max_requests:
        return pairs
    keys = [hashlib.blake2b(f"{seed}\x1f{u}\x1f{q}".encode("utf-8", "surrogatepass"),
                            digest_size=8).digest() for u, q in zip(pairs["user_id"],
                                                                     pairs["query"])]
    keep = np.argsort(np.array(keys, dtype=object), kind="stable")[:max_requests]
    return pairs.iloc[np.sort(keep)]


def labelled_rows(corpus: Corpus, clicks: pd.DataFrame, from_end: int,
                  drop: tuple[str, ...] = (), max_requests: int | None = None,
                  seed: int = 0) -> LabelledRows:
    """The labelled set ``from_end`` of ``clicks`` (module doc); at most ``max_requests``
    target requests (a seeded sample: :func:`sample_requests`)."""
    history, targets = history_and_targets(clicks, from_end)
    pairs = targets[["user_id", "query"]].drop_duplicates().sort_values(["user_id", "query"])
    pairs = sample_requests(pairs, max_requests, seed)
    targets = targets.merge(pairs, on=["user_id", "query"], how="inner")
    requests = [Request(u, q) for u, q in zip(pairs["user_id"], pairs["query"])]
    sig = build_signals(corpus, history)
    req_idx, rows, X = candidate_features(sig, requests, drop)
    n = corpus.n
    if requests:
        r_of = {r: i for i, r in enumerate(requests)}
        t_req = np.array([r_of[Request(u, q)] for u, q in zip(targets["user_id"], targets["query"])],
                         dtype=np.int64)
        t_row = pd.Index(corpus.sticker_ids, dtype=object).get_indexer(targets["sticker_id"])
        pos = np.unique(t_req[t_row >= 0] * n + t_row[t_row >= 0])
        y = np.isin(req_idx * n + rows, pos).astype(np.float64)
    else:
        y = np.zeros(len(rows))
    has_pos = np.bincount(req_idx, weights=y, minlength=len(requests)) > 0
    keep = has_pos[req_idx]
    kept_req = np.flatnonzero(has_pos)
    return LabelledRows(X=X[keep].reset_index(drop=True), y=y[keep],
                        groups=np.bincount(req_idx[keep], minlength=len(requests))[kept_req],
                        requests=[requests[i] for i in kept_req.tolist()], targets=targets,
                        without_positive=int((~has_pos).sum()))


@dataclass
class FittedRanker:
    """The trained booster (None without any labelled request), what the runner logs."""

    booster: Any
    feature_names: list[str]
    best_iteration: int
    curve: dict[str, list[float]] = field(default_factory=dict)
    importances: dict[str, float] = field(default_factory=dict)


def _dataset(lgb, rows: LabelledRows, names: list[str], reference=None):
    return lgb.Dataset(rows.X[names].to_numpy(dtype=np.float64), label=rows.y,
                       group=rows.groups, feature_name=names, reference=reference,
                       free_raw_data=False, params={"verbosity": -1})


def train_ranker(train: LabelledRows, valid: LabelledRows, cfg: RankerConfig) -> FittedRanker:
    """LambdaMART on ``train`` with early stopping on ``valid``, refitted on both for the best
    number of rounds. Without validation requests: ``n_estimators`` rounds on ``train``."""
    import lightgbm as lgb
    names = list(train.X.columns if train.n_requests else valid.X.columns)
    if not train.n_requests and not valid.n_requests:
        return FittedRanker(None, names, 0)
    params = cfg.lgb_params()
    curve: dict[str, dict[str, list[float]]] = {}
    best = int(cfg.n_estimators)
    if train.n_requests and valid.n_requests:
        dtrain = _dataset(lgb, train, names)
        dvalid = _dataset(lgb, valid, names, reference=dtrain)
        first = lgb.train(params, dtrain, num_boost_round=int(cfg.n_estimators),
                          valid_sets=[dtrain, dvalid], valid_names=["train", "valid"],
                          callbacks=[lgb.record_evaluation(curve),
                                     lgb.early_stopping(int(cfg.early_stopping), verbose=False)])
        best = int(first.best_iteration or cfg.n_estimators)
    both = [r for r in (train, valid) if r.n_requests]
    merged = LabelledRows(X=pd.concat([r.X[names] for r in both], ignore_index=True),
                          y=np.concatenate([r.y for r in both]),
                          groups=np.concatenate([r.groups for r in both]),
                          requests=[q for r in both for q in r.requests],
                          targets=pd.concat([r.targets for r in both]))
    booster = lgb.train(params, _dataset(lgb, merged, names), num_boost_round=best)
    gains = booster.feature_importance(importance_type="gain")
    metric = f"ndcg@{int(cfg.eval_at)}"
    return FittedRanker(booster, names, best,
                        curve={k: [round(float(x), 6) for x in v.get(metric, [])]
                               for k, v in curve.items()},
                        importances={n: round(float(g), 6) for n, g in zip(names, gains)})


def predict(ranker: FittedRanker, X: pd.DataFrame, num_threads: int) -> np.ndarray:
    """Scores of feature rows (columns reordered to the trained order)."""
    if ranker.booster is None or not len(X):
        return np.zeros(len(X))
    return ranker.booster.predict(X[ranker.feature_names].to_numpy(dtype=np.float64),
                                  num_threads=int(num_threads))
