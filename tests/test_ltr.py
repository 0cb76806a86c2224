"""``ltr``: feature values on a hand-built case, time-respecting training data, no validation or
test click in training (a planted validation click is caught), same seed -> same rankings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.errors import ConfigError
from bench.ltr.features import Corpus, build_signals, candidate_features
from bench.ltr.training import history_and_targets, labelled_rows
from bench.persrv.clustering import ClusterConfig
from bench.registry import make_retriever
from bench.retrieval import Request, TrainView, leak_safe_view
from bench.text import Tokenizer

pytest.importorskip("lightgbm")

IDS = np.array(["s0", "s1", "s2", "s3"], dtype=object)
TEXT = ["hi there", "hi", "bye", ""]
EMB = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
CLICKS = pd.DataFrame([("ua", "hi", "s0", 1), ("ub", "hi", "s0", 2), ("ua", "bye", "s2", 3),
                       ("ua", "hi", "s0", 4), ("uc", "yo", "s1", 5)],
                      columns=["user_id", "query", "sticker_id", "ts"])


def hand_corpus(encode=None, docs=None) -> Corpus:
    from baselines.bm25 import historical_queries

    def texts_for(clicks):
        return {"text": TEXT, "queries": historical_queries(clicks, IDS)}

    unit = EMB / np.linalg.norm(EMB, axis=1, keepdims=True)
    return Corpus(sticker_ids=IDS, fields=["text", "queries"], texts_for=texts_for,
                  tokenizer=Tokenizer(), pool=10, image_unit=unit.astype(np.float32),
                  dense_docs=docs, encode=encode, cluster=ClusterConfig(n_clusters=1))


def feature_table(requests, corpus=None, clicks=CLICKS, drop=()):
    sig = build_signals(corpus or hand_corpus(), clicks)
    req, rows, X = candidate_features(sig, requests, drop)
    X.index = pd.MultiIndex.from_arrays([req, IDS[rows]], names=["req", "sticker"])
    return X


def test_feature_values_on_a_hand_built_case():
    X = feature_table([Request("ua", "hi"), Request("zz", "hi"), Request("ua", "nope")])
    assert sorted(X.loc[0].index) == ["s0", "s1", "s2", "s3"]      # popularity fills the pool
    a = X.loc[0]
    # counts: s0 clicked 3 times by ua, ub under "hi" only
    assert a.loc["s0", ["popularity", "distinct_users", "distinct_queries"]].tolist() == [3, 2, 1]
    assert a.loc["s3", "popularity"] == 0
    assert a.loc["s0", "query_clicks"] == 3 and a.loc["s2", "query_clicks"] == 0
    # ua clicked s0 (ts 1), s2 (ts 3), s0 (ts 4): s0 twice, last click the latest -> since 0
    assert a.loc["s0", "user_clicks"] == 2 and a.loc["s0", "user_clicks_since"] == 0
    assert a.loc["s2", "user_clicks"] == 1 and a.loc["s2", "user_clicks_since"] == 1
    assert math.isnan(a.loc["s1", "user_clicks_since"]) and a.loc["s1", "user_clicks"] == 0
    assert (a["user_history"] == 3).all()
    # BM25 on "text": N = 3 stickers with text, avgdl = 4/3, n(hi) = 2 (Lucene's formula)
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    tf = lambda dl: 1 / (1 + 1.2 * (0.25 + 0.75 * dl / (4 / 3)))  # noqa: E731
    assert a.loc["s0", "bm25_text"] == pytest.approx(idf * tf(2), rel=1e-6)
    assert a.loc["s1", "bm25_text"] == pytest.approx(idf * tf(1), rel=1e-6)
    assert a.loc["s2", "bm25_text"] == 0
    assert a.loc["s1", "bm25_text_rank"] == 1 and a.loc["s0", "bm25_text_rank"] == 2
    assert math.isnan(a.loc["s2", "bm25_text_rank"])
    # historical queries: s0 "hi", s1 "yo", s2 "bye" -> N = 3, n(hi) = 1, dl = avgdl = 1
    assert a.loc["s0", "bm25_queries"] == pytest.approx(math.log(1 + 2.5 / 1.5) / 2.2, rel=1e-6)
    # style: ua's one cluster = unit mean of s0 [1, 0] and s2 [1, 1]/sqrt 2
    c = np.array([1 + 0.5 ** 0.5, 0.5 ** 0.5])
    c /= np.linalg.norm(c)
    assert a.loc["s0", "style_cos"] == pytest.approx(c[0], rel=1e-5)
    assert a.loc["s3", "style_cos"] == pytest.approx(-c[0], rel=1e-5)
    assert (a["style_cluster_size"] == 2).all()
    assert (a["query_length"] == 1).all() and (a["query_seen"] == 1).all()
    # an unknown user: no history, no style; an unseen query: no query clicks
    z = X.loc[1]
    assert (z["user_clicks"] == 0).all() and z["user_clicks_since"].isna().all()
    assert z["style_cos"].isna().all() and (z["user_history"] == 0).all()
    n = X.loc[2]
    assert (n["query_seen"] == 0).all() and (n["query_clicks"] == 0).all()


def test_dense_features_and_dropped_groups():
    docs = np.array([[1, 0], [0, 1], [0.6, 0.8], [0, 0]], dtype=np.float32)
    corpus = hand_corpus(encode=lambda qs: np.array([[0.8, 0.6]] * len(qs), np.float32),
                         docs=docs)
    a = feature_table([Request("ua", "hi")], corpus).loc[0]
    assert a["dense_cos"].to_dict() == pytest.approx({"s0": 0.8, "s1": 0.6, "s2": 0.96, "s3": 0})
    assert a.loc["s2", "dense_rank"] == 1 and a.loc["s0", "dense_rank"] == 2
    assert math.isnan(a.loc["s3", "dense_rank"])          # no text: never a dense candidate
    kept = feature_table([Request("ua", "hi")], corpus, drop=("history", "text")).columns
    assert not {"user_clicks", "user_clicks_since", "bm25_text"} & set(kept)
    assert {"dense_cos", "style_cos", "query_clicks"} <= set(kept)


def test_training_labels_come_after_their_features():
    hist, targets = history_and_targets(CLICKS, 0)
    # last groups: ua "hi" (ts 4), ub "hi" (ts 2), uc "yo" (ts 5); history: ua's ts 1 and 3
    assert sorted(targets["ts"]) == [2, 4, 5] and sorted(hist["ts"]) == [1, 3]
    rows = labelled_rows(hand_corpus(), CLICKS, 0)
    # uc's "yo" target s1 has no text match but is in the pool (popularity); the positive
    # row of ua/"hi" counts only the history's "hi" click on s0, never the target itself
    assert Request("ua", "hi") in rows.requests
    i = rows.requests.index(Request("ua", "hi"))
    start = int(rows.groups[:i].sum())
    part = rows.X.iloc[start:start + rows.groups[i]]
    pos = part[rows.y[start:start + rows.groups[i]] == 1]
    assert len(pos) == 1 and pos["query_clicks"].tolist() == [1] and \
        pos["popularity"].tolist() == [1]


def _tiny_split(plant: bool):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_frames

    from bench.data.splits import split_interactions
    stickers, clicks = make_tiny_frames(seed=3, n_users=30, clicks_per_user=10)
    extra = stickers.iloc[[0]].assign(sticker_id="planted")  # in the corpus, never clicked
    stickers = pd.concat([stickers, extra], ignore_index=True)
    if plant:  # every validation click now goes to the planted sticker
        first = split_interactions(clicks)
        val = set(zip(first.validation["user_id"], first.validation["ts"]))
        hit = [(u, t) in val for u, t in zip(clicks["user_id"], clicks["ts"])]
        clicks = clicks.copy()
        clicks.loc[hit, "sticker_id"] = "planted"
    emb = np.stack(stickers["embedding"].to_numpy()).astype(np.float32)
    return stickers.drop(columns=["embedding"]), split_interactions(clicks), emb


def _fit(target: str, plant: bool, **params):
    stickers, splits, emb = _tiny_split(plant)
    view = leak_safe_view(stickers, splits.history_for(target), embeddings=emb)
    r = make_retriever("ltr", {"dense": False, "min_data_in_leaf": 5, **params}).fit(view)
    reqs = splits.requests("validation").requests
    return r, view, r.search(reqs, 10)


def test_a_planted_validation_click_never_reaches_training():
    clean, view, run = _fit("validation", plant=False)
    planted, view_p, run_p = _fit("validation", plant=True)
    assert view_p.clicks.equals(view.clicks)                 # the harness hides validation
    assert run_p.results == run.results                      # ... so the ranking cannot move
    for targets in planted._training_targets:                # training labels: fitting clicks
        keys = set(zip(targets["user_id"], targets["ts"]))
        assert keys and keys <= set(zip(view_p.clicks["user_id"], view_p.clicks["ts"]))
        assert "planted" not in set(targets["sticker_id"])
    # the check can fail: once validation is fitting history (the test run), the plant shows
    _, _, run_leak = _fit("test", plant=True)
    assert run_leak.results != run.results


def test_same_seed_same_rankings_and_logged_attributes():
    a, _, run_a = _fit("validation", plant=False, seed=5)
    b, _, run_b = _fit("validation", plant=False, seed=5)
    assert run_a.results == run_b.results
    assert a.feature_importances_ == b.feature_importances_
    assert set(a.feature_importances_) == set(a._ranker.feature_names)
    assert a.training_curve_["valid"] and len(a.training_curve_["train"]) >= a.best_iteration_
    assert a.train_requests_ > 0 and a.valid_requests_ > 0 and a.n_features_ >= 10
    run = next(iter(run_a.results.values()))
    assert len(run) == 10 and len({s for s, _ in run}) == 10


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ConfigError, match="drop_features: unknown group 'histroy'"):
        make_retriever("ltr", {"drop_features": ["histroy"]}).fit(
            TrainView(stickers=pd.DataFrame({"sticker_id": IDS, "image": None, "text": TEXT}),
                      clicks=CLICKS))
    with pytest.raises(ConfigError, match="pool"):
        make_retriever("ltr", {"pool": 0})


def test_training_request_cap_is_a_seeded_order_free_sample():
    from bench.ltr.training import sample_requests
    pairs = pd.DataFrame({"user_id": [f"u{i}" for i in range(50)], "query": ["q"] * 50})
    a = sample_requests(pairs, 10, seed=1)
    b = sample_requests(pairs.iloc[::-1], 10, seed=1)
    assert len(a) == 10 and set(a["user_id"]) == set(b["user_id"])
    assert set(sample_requests(pairs, 10, seed=2)["user_id"]) != set(a["user_id"])
    assert sample_requests(pairs, 100, seed=1) is pairs


@pytest.mark.slow
def test_perf_measures_ltr_fit_time_and_memory(tmp_path, isolated_cache):
    import json

    from click.testing import CliRunner

    from bench.cli import cli
    out = tmp_path / "perf"
    res = CliRunner().invoke(cli, [
        "perf", "--size", "2000", "--requests", "50", "--retrievers", "bm25,ltr",
        "--rank-bm25-sample", "0", "--naive-sample", "0", "--scaling", "none", "--no-peers",
        "--no-sweep", "--no-tracking", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "perf.json").read_text(encoding="utf-8"))["retrievers"]["ltr"]
    assert rec["params"]["dense"] is False and rec["params"]["fields"] == ["ocr_text", "queries"]
    assert rec["fit_s"] > 0 and rec["peak_rss_mb"] > 0 and rec["m_mrr"] > 0
    assert "| ltr |" in (out / "perf.md").read_text(encoding="utf-8")
    assert "ltr" in res.output and "fit " in res.output
