"""Work shared within a run is owned by the run (bench/run_context.py, issue 25): no retriever
reuses another's work through a process-wide cache, so per-retriever timings do not depend on
the order of the config's retrievers."""

from __future__ import annotations

import numpy as np
import pytest

from bench.registry import make_retriever
from bench.retrieval import Request, leak_safe_view
from bench.run_context import LRUCache, RunContext

from conftest import make_tiny_frames


def test_lru_cache_drops_the_least_recently_used():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    with pytest.raises(ValueError):
        LRUCache(0)


def test_cached_computes_once_times_it_and_clears():
    ctx = RunContext()
    calls = []

    def compute():
        calls.append(1)
        return object()

    first = ctx.cached("thing", ("k",), compute)
    assert ctx.cached("thing", ("k",), compute) is first and len(calls) == 1
    assert ctx.hits == {"thing": 1} and ctx.seconds["thing"] >= 0
    assert set(ctx.stage_seconds()) == {"shared_thing_seconds"}
    with ctx:
        pass                              # leaving the run drops every entry
    assert ctx.cached("thing", ("k",), compute) is not first and len(calls) == 2


def _view():
    stickers, clicks = make_tiny_frames()
    emb = np.stack([np.asarray(e, dtype=np.float32) for e in stickers["embedding"]])
    stickers = stickers.drop(columns=["embedding"]).rename(columns={"text": "ocr_text"})
    return leak_safe_view(stickers, clicks, embeddings=emb)


def test_each_view_gets_its_own_context():
    a, b = _view(), _view()
    assert isinstance(a.context, RunContext) and a.context is not b.context
    ctx = RunContext()
    stickers, clicks = make_tiny_frames()
    assert leak_safe_view(stickers, clicks, context=ctx).context is ctx


def test_persrv_shares_fields_within_a_run_and_recall_only_with_its_own_copies():
    view = _view()
    reqs = [Request("u0", "cat"), Request("u1", "good night")]
    full = make_retriever("persrv").fit(view)
    plain = make_retriever("persrv-no-personalization").fit(view)
    # tokenized fields: computed once per run (the second fit reuses them)
    assert full.index_.counts_["ocr"] is plain.index_.counts_["ocr"]
    assert view.context.hits.get("bm25-field-counts", 0) >= 1
    # recall pools: never shared between separately fitted retrievers ...
    full.search(reqs, 5)
    assert full._recall is not plain._recall and not plain._recall.where
    # ... but shared with the with_params copies of one fit
    trial = full.with_params(rerank_weight=0.9)
    assert trial._recall is full._recall and set(trial._recall.where) == {"cat", "good night"}
    # another run: nothing carried over
    other = make_retriever("persrv").fit(_view())
    assert other.index_.counts_["ocr"] is not full.index_.counts_["ocr"]
