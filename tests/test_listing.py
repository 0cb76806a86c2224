"""The list policy every retriever is judged by (bench/listing.py): quantised scores, corpus-order
tie-break, the popularity fill, coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.listing import FillOrder, coverage, finalize, finalize_run, order_own, quantize_scores
from bench.retrieval import Request, Run


def fill_order(counts: dict[str, int], corpus: list[str]) -> FillOrder:
    clicks = pd.DataFrame({"sticker_id": [s for s, n in counts.items() for _ in range(n)]})
    return FillOrder.from_view(pd.DataFrame({"sticker_id": corpus}), clicks)


def test_quantize_merges_float_noise_but_keeps_real_differences():
    q = quantize_scores([1.0, 1.0 + 1e-9, 1.0 + 1e-3, 0.0, -2.5, float("nan")])
    assert q[0] == q[1]                # a few ulps of summation noise: tied
    assert q[2] > q[0]                 # a real difference survives
    assert q[3] == 0.0 and q[4] == -2.5
    assert q[5] == -np.inf             # NaN sorts last
    # the same on every call (exact binary rounding, no libm)
    assert np.array_equal(quantize_scores(np.linspace(0, 5, 101)),
                          quantize_scores(np.linspace(0, 5, 101)))


def test_ties_are_put_in_corpus_order_and_groups_keep_the_retrievers_order():
    position = {s: i for i, s in enumerate(["a", "b", "c", "d", "e"])}
    ranked = [("d", 3.0), ("c", 2.0), ("a", 2.0 + 1e-12), ("e", 1.0), ("c", 0.5)]
    ids, groups = order_own(ranked, position, depth=10)
    assert ids == ["d", "a", "c", "e"]          # c/a tied -> corpus order; duplicate c dropped
    assert groups == [0, 1, 1, 2]
    # scores that are not monotone: the list order stands, only equal neighbours tie
    ids, groups = order_own([("e", 1.0), ("a", 5.0), ("b", 5.0)], position, depth=10)
    assert ids == ["e", "a", "b"] and groups == [0, 1, 1]


def test_fill_appends_popularity_without_duplicates_and_groups_by_count():
    corpus = ["a", "b", "c", "d", "e", "f"]
    fo = fill_order({"c": 5, "e": 2, "a": 2}, corpus)
    assert fo.ids == ["c", "a", "e", "b", "d", "f"]   # count desc, corpus order within
    fl = finalize([("e", 0.9)], depth=4, fill="popularity", fill_order=fo)
    assert fl.ids == ["e", "c", "a", "b"] and fl.own == 1
    assert fl.groups == [0, 1, 2, 3]
    # the last listed fill group (count 0: b, d, f) continues past depth
    assert fl.tail_size == 3 and fl.tail_ids == frozenset({"b", "d", "f"})
    none = finalize([("e", 0.9)], depth=4, fill="none", fill_order=fo)
    assert none.ids == ["e"] and none.own == 1


def test_coverage_counts_own_lists_that_reach_depth():
    fo = fill_order({"a": 1}, ["a", "b", "c"])
    run = Run({Request("u", "q1"): [("a", 1.0), ("b", 0.5)], Request("u", "q2"): []})
    reqs = [Request("u", "q1"), Request("u", "q2"), Request("u", "q3")]
    lists = finalize_run(run, reqs, depth=2, fill="popularity", fill_order=fo)
    assert [len(lists[r].ids) for r in reqs] == [2, 2, 2]      # every list filled
    assert coverage(lists, depth=2, n_corpus=3) == 1 / 3
    # depth beyond the corpus: a list of the whole corpus is complete
    lists = finalize_run(Run({reqs[0]: [("a", 1), ("b", 1), ("c", 1)]}), reqs[:1], depth=20,
                         fill="none", fill_order=fo)
    assert coverage(lists, depth=20, n_corpus=3) == 1.0
