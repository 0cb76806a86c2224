"""``fusion``: RRF / CombSUM / CombMNZ against hand computations and against ranx on the same runs;
inputs built through the registry; labels of configured retrievers resolved to their specs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bench.registry as registry_mod
from baselines.fusion import fuse_frame, resolve_inputs, runs_frame
from bench.config import RetrieverSpec
from bench.errors import ConfigError
from bench.params import Configurable, RetrieverParams, param
from bench.registry import make_retriever
from bench.retrieval import Request, Run, TrainView

REQ = Request("u1", "hi")
REQ2 = Request("u2", "bye")
#: Two fixed input lists per request (best first): the hand-computed cases below.
LISTS = {
    "A": {REQ: [("a", 3.0), ("b", 2.0), ("c", 1.0)], REQ2: [("x", 1.0)]},
    "B": {REQ: [("b", 10.0), ("d", 5.0)], REQ2: [("y", 4.0), ("x", 2.0)]},
}


SEARCHES: list[str] = []


class Fixed(Configurable):
    """Test input: returns the fixed lists of LISTS[which] (no learning)."""

    class Params(RetrieverParams):
        which: str = param("A", refit="fit")

    def fit(self, train):
        self.fitted_on_ = len(train.clicks)
        return self

    def search(self, requests, k):
        SEARCHES.append(self.which)
        return Run({r: LISTS[self.which].get(r, [])[:k] for r in requests})


@pytest.fixture
def fixed(monkeypatch):
    registry_mod._load_all()
    monkeypatch.setitem(registry_mod._REGISTRY, "fixed-lists", Fixed)
    Fixed.name = "fixed-lists"
    return [{"name": "fixed-lists", "params": {"which": "A"}, "label": "A"},
            {"name": "fixed-lists", "params": {"which": "B"}, "label": "B"}]


def view() -> TrainView:
    st = pd.DataFrame({"sticker_id": list("abcdxy"), "image": None})
    cl = pd.DataFrame([("u1", "hi", "a", 1)], columns=["user_id", "query", "sticker_id", "ts"])
    return TrainView(stickers=st, clicks=cl)


def fused(inputs, k=10, **params):
    r = make_retriever("fusion", {"inputs": inputs, **params}).fit(view())
    return r.search([REQ, REQ2], k)


def test_rrf_equals_the_hand_computation(fixed):
    run = fused(fixed, method="rrf", rrf_k=60.0)
    # a: 1/61; b: 1/62 (A) + 1/61 (B); c: 1/63; d: 1/62 (B)
    want = {"b": 1 / 62 + 1 / 61, "a": 1 / 61, "d": 1 / 62, "c": 1 / 63}
    assert [s for s, _ in run[REQ]] == ["b", "a", "d", "c"]
    assert dict(run[REQ]) == pytest.approx(want, rel=1e-12)
    # u2: x is rank 1 in A and rank 2 in B, y rank 1 in B
    assert [s for s, _ in run[REQ2]] == ["x", "y"]
    assert dict(run[REQ2]) == pytest.approx({"x": 1 / 61 + 1 / 62, "y": 1 / 61})


def test_weighted_rrf_and_k(fixed):
    run = fused(fixed, method="rrf", rrf_k=0.0, weights=[1.0, 3.0])
    # a: 1/1; b: 1/2 + 3/1; c: 1/3; d: 3/2
    assert dict(run[REQ]) == pytest.approx({"b": 3.5, "d": 1.5, "a": 1.0, "c": 1 / 3})
    assert [s for s, _ in run[REQ]] == ["b", "d", "a", "c"]


def test_combsum_and_combmnz_equal_the_hand_computation(fixed):
    # min-max: A: a=1, b=0.5, c=0; B: b=1, d=0
    run = fused(fixed, method="combsum", normalize="min-max")
    assert dict(run[REQ]) == pytest.approx({"b": 1.5, "a": 1.0, "c": 0.0, "d": 0.0})
    assert [s for s, _ in run[REQ]] == ["b", "a", "c", "d"]   # c and d tie: sticker id order
    mnz = fused(fixed, method="combmnz", normalize="min-max")
    assert dict(mnz[REQ]) == pytest.approx({"b": 3.0, "a": 1.0, "c": 0.0, "d": 0.0})
    raw = fused(fixed, method="combsum", normalize="none", weights=[2.0, 1.0])
    assert dict(raw[REQ]) == pytest.approx({"b": 14.0, "a": 6.0, "d": 5.0, "c": 2.0})
    # z-score: A: mean 2, std sqrt(2/3); B: mean 7.5, std 2.5
    z = fused(fixed, method="combsum", normalize="z-score")
    sd = np.sqrt(2 / 3)
    assert dict(z[REQ]) == pytest.approx({"a": 1 / sd, "b": 0.0 + 1.0, "c": -1 / sd, "d": -1.0})


def test_k_cuts_and_inputs_are_fitted_on_the_view(fixed):
    r = make_retriever("fusion", {"inputs": fixed}).fit(view())
    assert [x.fitted_on_ for x in r.retrievers_] == [1, 1]
    assert r.input_labels_ == "A,B"
    assert [s for s, _ in r.search([REQ], 2)[REQ]] == ["b", "a"]
    # search-only changes reuse the fitted inputs
    other = r.with_params(method="combmnz", weights=[1.0, 2.0])
    assert other.retrievers_ is r.retrievers_
    # a sweep trial re-fuses the inputs' cached lists: no input searches again
    SEARCHES.clear()
    r.search([REQ, REQ2], 3)
    other.search([REQ, REQ2], 3)
    r.with_params(method="combsum").search([REQ, REQ2], 3)
    assert SEARCHES == ["A", "B"]


def test_bad_inputs_are_one_line_errors(fixed):
    with pytest.raises(ConfigError, match="weights has 1 values for 2 inputs"):
        fused(fixed, weights=[1.0])
    with pytest.raises(ConfigError, match=r"inputs.0 \(nope\).*unknown retriever 'nope'"):
        fused(["nope"])
    with pytest.raises(ConfigError, match="appear twice"):
        fused(["popularity", "popularity"])
    with pytest.raises(ConfigError, match="method"):
        make_retriever("fusion", {"method": "borda"})


def test_real_retrievers_compose():
    v = TrainView(stickers=pd.DataFrame({"sticker_id": ["s0", "s1", "s2"], "image": None}),
                  clicks=pd.DataFrame([("u", "q", "s2", 1), ("v", "q", "s2", 2),
                                       ("u", "r", "s1", 3)],
                                      columns=["user_id", "query", "sticker_id", "ts"]))
    r = make_retriever("fusion", {"inputs": ["popularity", "user-history"]}).fit(v)
    run = r.search([Request("u", "q")], 3)
    # popularity: s2, s1, s0; user-history of u (s2 then s1 by recency... s1 more recent):
    # s1, s2, s0 -> s1 and s2 get 1/61 + 1/62 each: tie broken by id
    assert [s for s, _ in run[Request("u", "q")]] == ["s1", "s2", "s0"]


def test_resolve_inputs_maps_configured_labels_to_their_specs():
    specs = [RetrieverSpec(name="bm25", label="bm25-ocr", params={"fields": ["ocr_text"]}),
             RetrieverSpec(name="persrv", params={"pool": 50}),
             RetrieverSpec(name="fusion", label="fused", params={})]
    out = resolve_inputs(["bm25-ocr", "persrv", "popularity",
                          {"name": "bm25-ocr", "weight": 2.0}], specs)
    assert out == [
        {"name": "bm25", "params": {"fields": ["ocr_text"]}, "label": "bm25-ocr"},
        {"name": "persrv", "params": {"pool": 50}, "label": "persrv"},
        {"name": "popularity"},
        {"name": "bm25", "params": {"fields": ["ocr_text"]}, "label": "bm25-ocr", "weight": 2.0},
    ]
    make_retriever("fusion", {"inputs": out})  # valid parameters
    with pytest.raises(ConfigError, match="itself a fusion"):
        resolve_inputs(["fused"], specs)


def _random_runs(rng, n_req=6, n_docs=30, n_runs=3):
    requests = [Request(f"u{i}", f"q{i}") for i in range(n_req)]
    runs = []
    for _ in range(n_runs):
        run = Run()
        for req in requests:
            docs = rng.choice(n_docs, size=rng.integers(1, 15), replace=False)
            scores = rng.permutation(1000)[:len(docs)] / 7.0 + 0.5  # distinct: unambiguous ranks
            order = np.argsort(-scores)
            run[req] = [(f"d{docs[i]}", float(scores[i])) for i in order]
        runs.append(run)
    return requests, runs


@pytest.mark.parametrize("method,norm,ranx_method,ranx_norm,weights", [
    ("rrf", "none", "rrf", None, None),
    ("combsum", "min-max", "sum", "min-max", None),
    ("combmnz", "min-max", "mnz", "min-max", None),
    ("combsum", "z-score", "sum", "zmuv", None),
    ("combsum", "min-max", "wsum", "min-max", [0.5, 2.0, 1.0]),
    ("combmnz", "none", "mnz", None, None),
])
def test_agrees_with_ranx_fuse(method, norm, ranx_method, ranx_norm, weights):
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    requests, runs = _random_runs(rng)
    w = np.asarray(weights or [1.0, 1.0, 1.0])
    ours = fuse_frame(runs_frame(runs, requests, 100), w, method, norm, 60.0)
    qid = {req: f"q{i}" for i, req in enumerate(requests)}
    ranx_runs = [ranx.Run({qid[r]: dict(run[r]) for r in requests}) for run in runs]
    params = {"k": 60} if ranx_method == "rrf" else {"weights": list(w)} \
        if ranx_method == "wsum" else {}
    theirs = ranx.fuse(ranx_runs, norm=ranx_norm, method=ranx_method, params=params)
    for i, req in enumerate(requests):
        mine = ours[ours["req"] == i]
        got = dict(zip(mine["sticker_id"], mine["score"]))
        want = theirs.run[qid[req]]
        assert set(got) == set(want)
        assert got == pytest.approx(dict(want), rel=1e-9, abs=1e-12)


def test_config_resolves_fusion_inputs_named_by_label(tmp_path):
    """An input naming another configured retriever's label gets that retriever's parameters
    when the config is loaded (before any work)."""
    import yaml

    from bench.config import load_config
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"path": str(tmp_path)}, "retrievers": [
        {"name": "bm25", "label": "bm25-ocr", "params": {"fields": ["ocr_text"], "k1": 0.9}},
        {"name": "fusion", "params": {"inputs": ["bm25-ocr", "popularity"]}}]}), "utf-8")
    cfg = load_config(path)
    inputs = cfg.retrievers[1].params["inputs"]
    assert inputs[0] == {"name": "bm25", "params": {"fields": ["ocr_text"], "k1": 0.9},
                         "label": "bm25-ocr"}
    assert inputs[1] == {"name": "popularity"}


def test_fitted_dicts_become_metrics_and_curves():
    from types import SimpleNamespace

    from bench.runner import fitted_series, fitted_structures
    fitted = SimpleNamespace(feature_importances_={"bm25": 3.0, "bad": float("nan")},
                             training_curve_={"valid": [0.1, 0.2]}, note_="x", _private={1: 2})
    structures = fitted_structures(fitted)
    assert set(structures) == {"feature_importances", "training_curve"}
    assert fitted_series(structures) == {"feature_importances.bm25": 3.0,
                                         "training_curve.valid": [0.1, 0.2]}
