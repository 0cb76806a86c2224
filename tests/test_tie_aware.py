"""Tie-aware metrics (McSherry & Najork 2008) and run files that other tools read the same way."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from bench.data.splits import Requests
from bench.eval_loop import EvalSettings, final_run, score_run
from bench.listing import FillOrder
from bench.metrics import per_request
from bench.retrieval import Request, Run


def _setup(ranked: dict[Request, list[tuple[str, float]]], relevant: dict[Request, set[str]],
           corpus: list[str], clicks: dict[str, int] | None = None):
    requests = Requests(requests=list(relevant), relevant=relevant)
    fo = FillOrder.from_view(pd.DataFrame({"sticker_id": corpus}), pd.DataFrame(
        {"sticker_id": [s for s, n in (clicks or {}).items() for _ in range(n)]}))
    return Run(ranked), requests, fo


def test_tied_relevant_sticker_scores_the_hand_computed_expectation():
    req = Request("u1", "cat")
    # x first; then a 3-way tie (y, rel, z) at ranks 2-4; then w
    run, requests, fo = _setup({req: [("x", 9.0), ("y", 5.0), ("rel", 5.0), ("z", 5.0),
                                      ("w", 1.0)]}, {req: {"rel"}},
                               ["x", "y", "rel", "z", "w"])
    scored = score_run(run, requests, EvalSettings(ks=(1, 3, 5), depth=5, fill="none"), fo)
    row = scored.per_request.iloc[0]
    # deterministic: tie broken by corpus order -> y, rel, z -> rel at rank 3
    assert row["m_mrr_at_5"] == pytest.approx(1 / 3)
    # expected under a random order of the tie: rel uniformly at rank 2, 3 or 4
    assert row["m_mrr_at_5_tie_aware"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert row["mrr_at_5_tie_aware"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert row["m_mrr_at_3_tie_aware"] == pytest.approx((1 / 2 + 1 / 3) / 3)  # rank 4 is cut
    assert row["recall_at_3_tie_aware"] == pytest.approx(2 / 3)
    assert row["ndcg_at_5_tie_aware"] == pytest.approx(
        np.mean([1 / np.log2(r + 1) for r in (2, 3, 4)]))
    assert row["m_mrr_at_1_tie_aware"] == 0.0
    assert bool(row["tie_straddle"]) and scored.macro["tie_straddle_share"] == 1.0


def test_tie_aware_equals_the_mean_over_every_order_of_the_ties():
    rng = np.random.default_rng(3)
    corpus = [f"s{i}" for i in range(9)]
    scores = [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5]
    relevant = {"s2", "s4", "s6", "s7"}
    req = Request("u", "q")
    ranked = [(s, sc) for s, sc in zip(corpus, scores)]
    run, requests, fo = _setup({req: ranked}, {req: relevant}, corpus)
    ks = (1, 3, 5, 9)
    scored = score_run(run, requests, EvalSettings(ks=ks, depth=9, fill="none"), fo)
    groups = [corpus[0:1], corpus[1:5], corpus[5:7], corpus[7:9]]
    orders = [list(itertools.chain(*p)) for p in itertools.product(
        *[list(itertools.permutations(g)) for g in groups])]
    assert len(orders) == 1 * 24 * 2 * 2
    exact = per_request({i: o for i, o in enumerate(orders)},
                        {i: relevant for i in range(len(orders))}, None, ks)
    for col in exact.columns[3:]:
        assert scored.per_request[col + "_tie_aware"].iloc[0] == pytest.approx(exact[col].mean())
    del rng


def test_without_ties_tie_aware_equals_deterministic():
    req = Request("u", "q")
    run, requests, fo = _setup({req: [("a", 3.0), ("b", 2.0), ("c", 1.0)]}, {req: {"b"}},
                               ["a", "b", "c"])
    scored = score_run(run, requests, EvalSettings(ks=(1, 2, 3), depth=3, fill="none"), fo)
    row = scored.per_request.iloc[0]
    for k in (1, 2, 3):
        for m in ("m_mrr", "mrr", "recall", "ndcg"):
            assert row[f"{m}_at_{k}_tie_aware"] == pytest.approx(row[f"{m}_at_{k}"])
    assert not bool(row["tie_straddle"])


def test_fill_group_cut_at_depth_counts_its_full_size():
    req = Request("u", "q")
    corpus = [f"s{i}" for i in range(6)]
    # nothing returned; no clicks: the fill is one tie group of all 6 stickers, depth 2
    run, requests, fo = _setup({req: []}, {req: {"s5"}}, corpus)
    scored = score_run(run, requests, EvalSettings(ks=(2,), depth=2, fill="popularity"), fo)
    row = scored.per_request.iloc[0]
    assert row["m_mrr_at_2"] == 0.0                     # s5 is last in corpus order
    assert row["m_mrr_at_2_tie_aware"] == pytest.approx((1 + 1 / 2) / 6)
    assert row["m_mrr_at_2_as_returned"] == 0.0 and scored.coverage == 0.0


def test_ranx_reads_the_run_file_to_the_same_numbers(tmp_path):
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    corpus = [f"s{i}" for i in range(30)]
    relevant, ranked = {}, {}
    for i in range(40):
        req = Request(f"u{i % 7}", f"q{i}")
        relevant[req] = set(rng.choice(corpus, size=int(rng.integers(1, 3)), replace=False))
        n = int(rng.integers(0, 25))  # some empty, many short lists
        # coarse scores: many exact ties, as BM25 on short texts gives
        ranked[req] = [(s, float(rng.integers(0, 4))) for s in rng.choice(corpus, n, False)]
    clicks = {s: int(rng.integers(0, 3)) for s in corpus}
    run, requests, fo = _setup(ranked, relevant, corpus, clicks)
    for fill in ("popularity", "none"):
        settings = EvalSettings(ks=(5, 20), depth=20, fill=fill)
        scored = score_run(run, requests, settings, fo)
        path = final_run(scored, "r").save_trec(tmp_path / f"{fill}.trec", qids=requests.qids)
        qrels = ranx.Qrels({requests.qids[r]: {s: 1 for s in rel} for r, rel in relevant.items()})
        trec = ranx.Run.from_file(str(path), kind="trec")
        got = ranx.evaluate(qrels, trec, ["mrr@20", "ndcg@20", "recall@5"],
                            make_comparable=True)
        for ours, theirs in (("mrr_at_20", "mrr@20"), ("ndcg_at_20", "ndcg@20"),
                             ("recall_at_5", "recall@5")):
            assert scored.micro[ours] == pytest.approx(got[theirs], abs=1e-12), (fill, ours)
        lines = path.read_text().splitlines()
        scores = {}
        for line in lines:
            qid, _, sid, rank, score, _ = line.split()
            scores.setdefault(qid, []).append(float(score))
        assert all(all(a > b for a, b in zip(v, v[1:])) for v in scores.values())
