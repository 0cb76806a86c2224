"""bench.segments: request labels and per-segment macro metrics, against a hand computation."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.data.splits import make_requests
from bench.metrics import per_request
from bench.segments import label_requests, segment_metrics


def clicks(rows):
    return pd.DataFrame(rows, columns=["user_id", "query", "sticker_id", "ts"])


# history: a clicked s1 under "hi", b clicked s2 under "yo"; c has no history
HISTORY = clicks([("a", "hi", "s1", 1), ("a", "cat", "s3", 2), ("b", "yo", "s2", 3)])
# test: a/hi -> s1 (seen, refind); a/new -> s4 (unseen, discover); b/hi -> s5 (seen, discover);
# c/yo -> s2 (seen, discover, cold)
TEST = clicks([("a", "hi", "s1", 10), ("a", "new", "s4", 11), ("b", "hi", "s5", 12),
               ("c", "yo", "s2", 13)])


def test_labels():
    reqs = make_requests(TEST)
    labels = label_requests(reqs, HISTORY)
    assert labels.to_dict("list") == {
        "qid": ["q0", "q1", "q2", "q3"],
        "query_segment": ["seen_query", "unseen_query", "seen_query", "seen_query"],
        "history_segment": ["refind", "discover", "discover", "discover"],
        "cold_user": [False, False, False, True],
        # s4 and s5 have no click in the history (anyone's); s1 and s2 have
        "cold_sticker": [False, True, True, False]}


def test_segment_metrics_equal_hand_computation():
    reqs = make_requests(TEST)
    qids = reqs.qids
    # rankings: q0 hit at 1; q1 hit at 2; q2 hit at 4; q3 no hit
    ranked = {"q0": ["s1", "x"], "q1": ["x", "s4"], "q2": ["x", "y", "z", "s5"], "q3": ["x"]}
    pr = per_request(ranked, {qids[r]: reqs.relevant[r] for r in reqs.requests},
                     {qids[r]: r.user_id for r in reqs.requests}, ks=[1, 5])
    m = segment_metrics(pr, label_requests(reqs, HISTORY), ks=[1, 5])
    # seen_query: q0 (a: 1), q2 (b: 1/4), q3 (c: 0) -> users a, b, c -> (1 + .25 + 0) / 3
    assert m["m_mrr_at_5__seen_query"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert m["m_mrr_at_1__seen_query"] == pytest.approx(1 / 3)
    # unseen_query: q1 only (a: 1/2)
    assert m["m_mrr_at_5__unseen_query"] == pytest.approx(0.5)
    assert m["recall_at_1__unseen_query"] == 0.0
    # discover: q1 (a: .5), q2 (b: .25), q3 (c: 0): macro over users a, b, c
    assert m["mrr_at_5__discover"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert m["m_mrr_at_5__refind"] == pytest.approx(1.0)
    assert m["m_mrr_at_5__cold_user"] == 0.0
    # cold_sticker: q1 (a: 1/2), q2 (b: 1/4)
    assert m["m_mrr_at_5__cold_sticker"] == pytest.approx((0.5 + 0.25) / 2)
    assert {k: v for k, v in m.items() if k.startswith("n__")} == {
        "n__seen_query": 3, "n__unseen_query": 1, "n__refind": 1, "n__discover": 3,
        "n__cold_user": 1, "n__cold_sticker": 2}


def test_macro_within_segment_averages_users_first():
    # user a has two seen requests (1 and 0), user b one (1): macro = (0.5 + 1) / 2, not 2/3
    test = clicks([("a", "hi", "s1", 10), ("a", "yo", "s9", 11), ("b", "hi", "s1", 12)])
    reqs = make_requests(test)
    qids = reqs.qids
    pr = per_request({"q0": ["s1"], "q1": ["x"], "q2": ["s1"]},
                     {qids[r]: reqs.relevant[r] for r in reqs.requests},
                     {qids[r]: r.user_id for r in reqs.requests}, ks=[1])
    m = segment_metrics(pr, label_requests(reqs, HISTORY), ks=[1])
    assert m["m_mrr_at_1__seen_query"] == pytest.approx(0.75)
    assert m["n__unseen_query"] == 0 and "m_mrr_at_1__unseen_query" not in m


def test_labels_must_cover_every_request():
    reqs = make_requests(TEST)
    qids = reqs.qids
    pr = per_request({}, {qids[r]: reqs.relevant[r] for r in reqs.requests}, ks=[1])
    labels = label_requests(reqs, HISTORY).iloc[:2]
    with pytest.raises(ValueError, match="2 per-request rows have no segment label"):
        segment_metrics(pr, labels, ks=[1])
