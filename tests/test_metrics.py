"""bench.metrics: hand-computed values, macro vs micro, edge cases, agreement with ranx."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest

from bench.data.splits import Requests
from bench.metrics import (DEFAULT_KS, METRICS, aggregate, evaluate_run, metric_name, metric_names,
                           per_request, per_user)
from bench.retrieval import Request, Run


def one(ranking, relevant, ks=(1, 3, 5)) -> dict:
    """Metric values of a single request, as a dict."""
    return per_request({"q": ranking}, {"q": set(relevant)}, None, ks).iloc[0].to_dict()


def test_names_follow_design():
    assert metric_name("m_mrr", 10) == "m_mrr_at_10"
    assert metric_name("ndcg", 1) == "ndcg_at_1"
    assert METRICS == ("m_mrr", "mrr", "recall", "ndcg")
    assert DEFAULT_KS == (1, 5, 10, 20)
    assert metric_names((5, 1))[:2] == ["m_mrr_at_1", "m_mrr_at_5"]
    assert len(metric_names()) == 16
    with pytest.raises(ValueError):
        metric_name("map", 10)
    with pytest.raises(ValueError):
        per_request({}, {"q": {"a"}}, None, ks=(0,))


def test_multi_hit_m_mrr_exceeds_one():
    v = one(["a", "x", "b"], {"a", "b"})
    assert v["m_mrr_at_3"] == pytest.approx(1 + 1 / 3)
    assert v["m_mrr_at_1"] == pytest.approx(1.0)
    assert v["mrr_at_3"] == pytest.approx(1.0)
    assert v["recall_at_1"] == pytest.approx(0.5)
    assert v["recall_at_3"] == pytest.approx(1.0)
    assert v["ndcg_at_3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert v["n_relevant"] == 2


def test_three_hits_and_late_first_hit():
    v = one(["x", "a", "b", "y", "c"], {"a", "b", "c", "d"}, ks=(1, 2, 5))
    assert v["m_mrr_at_5"] == pytest.approx(1 / 2 + 1 / 3 + 1 / 5)
    assert v["m_mrr_at_2"] == pytest.approx(1 / 2)
    assert v["m_mrr_at_1"] == 0.0
    assert v["mrr_at_5"] == pytest.approx(1 / 2)
    assert v["mrr_at_1"] == 0.0
    assert v["recall_at_5"] == pytest.approx(3 / 4)
    dcg = 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(6)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 5))  # min(|G|=4, k=5) ideal ranks
    assert v["ndcg_at_5"] == pytest.approx(dcg / idcg)
    # ideal DCG at k=2 fills only 2 ranks
    assert v["ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_all_hits_give_m_mrr_harmonic_sum_and_ndcg_one():
    v = one(["a", "b", "c"], {"a", "b", "c"}, ks=(3,))
    assert v["m_mrr_at_3"] == pytest.approx(1 + 1 / 2 + 1 / 3)
    assert v["ndcg_at_3"] == pytest.approx(1.0)
    assert v["recall_at_3"] == pytest.approx(1.0)


def test_empty_ranking_and_missing_ranking_score_zero():
    df = per_request({"q1": []}, {"q1": {"a"}, "q2": {"b"}}, None, ks=(1, 5))
    assert list(df["qid"]) == ["q1", "q2"]  # a request without a ranking is kept
    assert (df[metric_names((1, 5))].to_numpy() == 0).all()


def test_k_beyond_ranking():
    v = one(["x", "a"], {"a", "b"}, ks=(20,))
    assert v["m_mrr_at_20"] == pytest.approx(0.5)
    assert v["recall_at_20"] == pytest.approx(0.5)
    assert v["ndcg_at_20"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_repeated_sticker_counts_once_and_is_removed_before_cutoff():
    # ranking de-duplicated: [a, x, b]; the second "a" neither scores nor takes a slot
    v = one(["a", "a", "x", "b"], {"a", "b"}, ks=(2, 3))
    assert v["m_mrr_at_2"] == pytest.approx(1.0)
    assert v["m_mrr_at_3"] == pytest.approx(1 + 1 / 3)
    assert v["recall_at_3"] == pytest.approx(1.0)
    w = one(["a", "a", "a"], {"a"}, ks=(3,))
    assert w["m_mrr_at_3"] == pytest.approx(1.0)
    assert w["recall_at_3"] == pytest.approx(1.0)


def test_empty_relevant_set_scores_zero():
    v = one(["a"], set(), ks=(1,))
    assert v["n_relevant"] == 0
    assert v["recall_at_1"] == 0.0 and v["ndcg_at_1"] == 0.0 and v["m_mrr_at_1"] == 0.0


def test_run_only_queries_are_ignored():
    df = per_request({"q1": ["a"], "extra": ["a"]}, {"q1": {"a"}}, None, ks=(1,))
    assert list(df["qid"]) == ["q1"]


def test_missing_user_is_an_error():
    with pytest.raises(ValueError, match="no user"):
        per_request({}, {"q1": {"a"}, "q2": {"b"}}, {"q1": "u"}, ks=(1,))


def test_macro_vs_micro_with_unequal_request_counts():
    # user u1: three requests with MRR@1 = 1, 1, 0 (user mean 2/3); user u2: one request, 0
    rankings = {"a": ["s"], "b": ["s"], "c": ["x"], "d": ["x"]}
    relevant = {"a": {"s"}, "b": {"s"}, "c": {"s"}, "d": {"s"}}
    users = {"a": "u1", "b": "u1", "c": "u1", "d": "u2"}
    df = per_request(rankings, relevant, users, ks=(1,))
    assert aggregate(df, "micro")["mrr_at_1"] == pytest.approx(2 / 4)
    assert aggregate(df, "macro")["mrr_at_1"] == pytest.approx((2 / 3 + 0) / 2)
    pu = per_user(df)
    assert list(pu["user_id"]) == ["u1", "u2"]
    assert list(pu["n_requests"]) == [3, 1]
    assert pu["mrr_at_1"].tolist() == pytest.approx([2 / 3, 0.0])
    with pytest.raises(ValueError):
        aggregate(df, "weighted")


def test_without_users_macro_equals_micro():
    df = per_request({"a": ["s", "t"], "b": ["t"]}, {"a": {"t"}, "b": {"t"}}, None, ks=(1, 2))
    assert list(df["user_id"]) == ["a", "b"]
    assert aggregate(df, "macro") == pytest.approx(aggregate(df, "micro"))
    assert aggregate(df)["mrr_at_2"] == pytest.approx((0.5 + 1) / 2)


def test_evaluate_run_uses_request_qids_and_users():
    r1, r2, r3 = Request("u1", "hi"), Request("u1", "bye"), Request("u2", "hi")
    reqs = Requests([r1, r2, r3], {r1: {"a", "b"}, r2: {"c"}, r3: {"a"}})
    run = Run({r1: [("a", 3.0), ("x", 2.0), ("b", 1.0)], r3: [("x", 1.0), ("a", 0.5)],
               Request("u9", "other"): [("a", 1.0)]})
    df, macro, micro = evaluate_run(run, reqs, ks=(3,))
    assert list(df["qid"]) == ["q0", "q1", "q2"]
    assert list(df["query"]) == ["hi", "bye", "hi"]
    assert df["m_mrr_at_3"].tolist() == pytest.approx([1 + 1 / 3, 0.0, 0.5])
    assert micro["m_mrr_at_3"] == pytest.approx((4 / 3 + 0 + 0.5) / 3)
    assert macro["m_mrr_at_3"] == pytest.approx(((4 / 3 + 0) / 2 + 0.5) / 2)


def _random_case(seed: int, n_queries: int = 60, n_docs: int = 40):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    relevant, rankings = {}, {}
    for q in range(n_queries):
        qid = f"q{q:03d}"
        relevant[qid] = set(rng.sample(docs, rng.randint(1, 6)))
        rankings[qid] = rng.sample(docs, rng.randint(1, 25))  # distinct, so ranx agrees exactly
    return rankings, relevant


def test_agrees_with_ranx_on_random_runs():
    ranx = pytest.importorskip("ranx")
    ks = (1, 3, 5, 10, 20)
    for seed in range(3):
        rankings, relevant = _random_case(seed)
        df = per_request(rankings, relevant, None, ks).set_index("qid").sort_index()
        qrels = ranx.Qrels({q: {d: 1 for d in rel} for q, rel in relevant.items()})
        run = ranx.Run({q: {d: float(len(r) - i) for i, d in enumerate(r)}
                        for q, r in rankings.items()})
        names = [f"{m}@{k}" for m in ("mrr", "recall", "ndcg") for k in ks]
        ours = {f"{m}@{k}": df[metric_name(m, k)].to_numpy() for m in ("mrr", "recall", "ndcg")
                for k in ks}
        theirs = ranx.evaluate(qrels, run, names, return_mean=False)
        for name in names:  # ranx returns values in sorted-qid order, as is df here
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} seed={seed}")


def test_fast_enough_at_paper_scale():
    rng = np.random.default_rng(0)
    n = 12_568
    ids = rng.integers(0, 5000, size=(n, 20)).astype(str)
    rankings = {f"q{i}": ids[i].tolist() for i in range(n)}
    relevant = {f"q{i}": set(rng.integers(0, 5000, size=2).astype(str).tolist()) for i in range(n)}
    users = {f"q{i}": f"u{i % 3000}" for i in range(n)}
    aggregate(per_request({"w": ["a"]}, {"w": {"a"}}, {"w": "u"}), "macro")  # warm-up imports
    start = time.perf_counter()
    df = per_request(rankings, relevant, users, DEFAULT_KS)
    aggregate(df, "macro")
    aggregate(df, "micro")
    assert time.perf_counter() - start < 1.0
    assert len(df) == n
