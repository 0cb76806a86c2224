"""Floor baselines ``query-lookup`` and ``user-history`` on hand-made TrainViews: exact ranks."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.registry import make_retriever, registry
from bench.retrieval import Request, TrainView

STICKERS = ["s0", "s1", "s2", "s3", "s4", "s5"]
CLICKS = [  # user, query, sticker, ts
    ("ua", "hi", "s2", 1), ("ub", "hi", "s2", 2), ("uc", "hi", "s4", 3), ("ua", "hi", "s3", 4),
    ("ua", "bye", "s1", 5), ("ub", "bye", "s1", 6), ("uc", "bye", "s1", 7),
    ("ud", "Hi", "s5", 8), ("ud", "   ", "s0", 9),
]
# popularity (all clicks): s1=3, s2=2, s3=1, s4=1, s5=1, s0=1 ; corpus order breaks ties


def view(clicks=CLICKS) -> TrainView:
    st = pd.DataFrame({"sticker_id": STICKERS, "image": None})
    cl = pd.DataFrame(clicks, columns=["user_id", "query", "sticker_id", "ts"])
    return TrainView(stickers=st, clicks=cl)


def ids(run, request):
    return [s for s, _ in run[request]]


def test_registered():
    assert {"query-lookup", "user-history"} <= set(registry())


def test_query_lookup_ranks_by_clicks_under_the_exact_query_then_popularity():
    r = make_retriever("query-lookup").fit(view())
    hi, other, upper = Request("zz", "hi"), Request("zz", "nothing"), Request("zz", "Hi")
    blank = Request("zz", "   ")
    run = r.search([hi, other, upper, blank], k=6)
    # under "hi": s2 (2 clicks); s3 and s4 (1 each, same popularity 1 -> corpus order); then
    # popularity: s1 (3), then s0, s5 (1 each, corpus order)
    assert ids(run, hi) == ["s2", "s3", "s4", "s1", "s0", "s5"]
    assert ids(run, other) == ["s1", "s2", "s0", "s3", "s4", "s5"]      # popularity only
    assert ids(run, upper) == ["s5", "s1", "s2", "s0", "s3", "s4"]      # exact string: no case fold
    assert ids(run, blank) == ids(run, other)                           # blank queries not kept
    scores = [s for _, s in run[hi]]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(2 + 2 / 4) and scores[3] == pytest.approx(3 / 4)
    assert ids(r.search([hi], k=2), hi) == ["s2", "s3"]


def test_query_lookup_popularity_breaks_ties_between_equal_query_counts():
    clicks = [("u1", "q", "s4", 1), ("u2", "q", "s0", 2), ("u3", "x", "s4", 3)]
    run = make_retriever("query-lookup").fit(view(clicks)).search([Request("u", "q")], k=3)
    assert ids(run, Request("u", "q")) == ["s4", "s0", "s1"]  # s4 has 2 clicks overall


def test_user_history_own_stickers_first_by_frequency_then_recency_then_lookup():
    clicks = CLICKS + [("ua", "yo", "s3", 10), ("ua", "yo", "s5", 11)]
    r = make_retriever("user-history").fit(view(clicks))
    req = Request("ua", "hi")
    run = r.search([req], k=6)
    # ua: s3 twice; s2, s1, s5 once each -> most recent first: s5 (11), s1 (5), s2 (1);
    # then query-lookup of "hi" without those: s4, then popularity: s0
    assert ids(run, req) == ["s3", "s5", "s1", "s2", "s4", "s0"]
    assert [s for _, s in run[req]] == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert ids(r.search([req], k=2), req) == ["s3", "s5"]


def test_user_history_ties_in_frequency_and_recency_go_to_popularity():
    clicks = [("ua", "q", "s0", 5), ("ua", "q", "s1", 5), ("ub", "q", "s1", 1)]
    run = make_retriever("user-history").fit(view(clicks)).search([Request("ua", "z")], k=3)
    assert ids(run, Request("ua", "z")) == ["s1", "s0", "s2"]


def test_user_history_unknown_user_gets_query_lookup():
    v = view()
    uh = make_retriever("user-history").fit(v)
    ql = make_retriever("query-lookup").fit(v)
    req = Request("new-user", "bye")
    assert ids(uh.search([req], 5), req) == ids(ql.search([req], 5), req) == \
        ["s1", "s2", "s0", "s3", "s4"]


def test_empty_history_and_search_before_fit():
    empty = view(clicks=[])
    for name in ("query-lookup", "user-history"):
        r = make_retriever(name)
        with pytest.raises(RuntimeError, match="fit"):
            r.search([Request("u", "q")], 3)
        run = r.fit(empty).search([Request("u", "q")], 3)
        assert ids(run, Request("u", "q")) == ["s0", "s1", "s2"]
