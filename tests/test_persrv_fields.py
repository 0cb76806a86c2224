"""Multi-field BM25 recall (bench/persrv/fields.py): Elasticsearch score fidelity and the pool."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

import bench.persrv.fields as fields_mod
from bench.persrv.fields import MultiFieldBM25, pack_keys, top_k_csr, unpack_keys
from bench.run_context import RunContext
from bench.text import Tokenizer

OCR = ["happy cat", "cat cat cat sleeping on the sofa", None, "good morning", "", "angry cat",
       "!!!", "dog"]
QUERIES = ["so happy", "", "sleepy cat", "", "morning coffee", "", "", ""]
DESC = ["a cartoon cat smiling happily", "a cat asleep", "a cat yawning in bed",
        "sunrise and coffee cup", "a red heart", None, "happy happy dog", ""]
BOOSTS = {"ocr": 1.0, "queries": 0.5, "description": 1.0}
CLICKS = np.array([3, np.nan, 1, 10, np.nan, np.nan, 2, np.nan])  # u(d); NaN = never clicked


def lucene_field_score(docs: list[list[str]], query: list[str], k1=1.2, b=0.75,
                       k1_plus_one=False) -> list[float]:
    """Lucene >= 8 BM25 of one field for every doc, from raw counts, in plain Python floats.

    N = documents with at least one token (Lucene's docCount), avgdl over those documents,
    n = those containing the term; every query token occurrence is a clause of its own."""
    kept = [d for d in docs if d]
    n_docs = len(kept)
    avgdl = sum(len(d) for d in kept) / n_docs if n_docs else 0.0
    df = Counter(t for d in kept for t in set(d))
    out = []
    for d in docs:
        s = 0.0
        tf = Counter(d)
        for t in query:
            if not d or tf[t] == 0:
                continue
            idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
            part = tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
            s += idf * part * ((k1 + 1) if k1_plus_one else 1.0)
        out.append(s)
    return out


def expected_scores(query: str, boosts=BOOSTS, utility=True, **kw) -> list[float | None]:
    """sum_f boost_f * BM25_f + sqrt(0.3 * u) (u = 1.05 when missing); None = no text match."""
    tok = Tokenizer()
    texts = {"ocr": OCR, "queries": QUERIES, "description": DESC}
    q = tok(query)
    total = [0.0] * len(OCR)
    matched = [False] * len(OCR)
    for f, boost in boosts.items():
        if boost == 0:
            continue
        field = lucene_field_score([tok(t) for t in texts[f]], q, **kw)
        for i, s in enumerate(field):
            total[i] += boost * s
            matched[i] |= s > 0
    out = []
    for i, s in enumerate(total):
        if not matched[i]:
            out.append(None)
            continue
        u = 1.05 if math.isnan(CLICKS[i]) else CLICKS[i]
        out.append(s + (math.sqrt(0.3 * u) if utility else 0.0))
    return out


def util_boost() -> np.ndarray:
    return np.sqrt(0.3 * np.where(np.isnan(CLICKS), 1.05, CLICKS))


def fit(boosts=BOOSTS, **kw) -> MultiFieldBM25:
    return MultiFieldBM25(boosts, tokenizer=Tokenizer(), **kw).fit(
        {"ocr": OCR, "queries": QUERIES, "description": DESC})


QUERY_SET = ["happy cat", "cat", "morning coffee", "sleepy", "happy happy", "zebra",
             "cat cat dog", ""]


@pytest.mark.parametrize("k1_plus_one", [False, True])
def test_scores_equal_lucene_formula_float64(k1_plus_one):
    """Weights in float64: every matching document's score to 1e-9 of the formula."""
    model = fit(dtype=np.float64, k1_plus_one=k1_plus_one)
    mat = model.score_matrix(QUERY_SET, doc_boost=util_boost()).toarray()
    matched = (model.score_matrix(QUERY_SET).toarray() > 0)
    for qi, q in enumerate(QUERY_SET):
        want = expected_scores(q, k1_plus_one=k1_plus_one)
        for d, w in enumerate(want):
            if w is None:
                assert not matched[qi, d], (q, d)
            else:
                assert matched[qi, d], (q, d)
                assert mat[qi, d] == pytest.approx(w, rel=1e-9, abs=1e-12), (q, d)


def test_search_pool_float32_scores_order_and_exclusions():
    """The float32 pool: scores to 1e-6 relative, best first, ties by position, and only
    documents with a text match (utility alone never admits a document)."""
    model = fit()
    boost = util_boost()
    boost[4] = 1000.0  # a huge utility on a document most queries do not match
    ids, scores = model.search(QUERY_SET, pool=8, doc_boost=boost)
    assert ids.dtype == np.int32 and scores.dtype == np.float32 and ids.shape == (8, 8)
    for qi, q in enumerate(QUERY_SET):
        want = expected_scores(q)
        want = [(s + (1000.0 - util_boost()[4]) if d == 4 else s) if s is not None else None
                for d, s in enumerate(want)]
        ranked = sorted(((s, d) for d, s in enumerate(want) if s is not None),
                        key=lambda x: (-x[0], x[1]))
        got = [(float(s), int(d)) for d, s in zip(ids[qi], scores[qi]) if d >= 0]
        assert [d for _, d in got] == [d for _, d in ranked], q
        for (gs, _), (ws, _) in zip(got, ranked):
            assert gs == pytest.approx(ws, rel=1e-6), q
        n = len(got)
        assert (ids[qi, n:] == -1).all() and np.isneginf(scores[qi, n:]).all()
        if want[4] is None:  # the huge utility alone does not admit it
            assert 4 not in [d for _, d in got], q
    assert 4 not in ids[QUERY_SET.index("cat")] and ids[QUERY_SET.index("morning coffee"), 0] == 4
    # "zebra" and "" match nothing: empty pools
    assert (ids[QUERY_SET.index("zebra")] == -1).all()
    assert (ids[QUERY_SET.index("")] == -1).all()


def test_repeated_query_tokens_count_per_occurrence():
    model = fit(dtype=np.float64)
    m = model.score_matrix(["cat", "cat cat"]).toarray()
    assert np.allclose(m[1], 2 * m[0]) and m[0].max() > 0


def test_zero_boost_field_is_not_queried_and_boosts_swap_without_refit():
    model = fit({"ocr": 1.0, "queries": 0.0, "description": 1.0})
    ids, _ = model.search(["sleepy"], pool=8)  # "sleepy" is only in the queries field
    assert (ids == -1).all()
    on = model.with_boosts({"queries": 0.5})
    assert on.weights_ is model.weights_
    ids, scores = on.search(["sleepy"], pool=8)
    assert ids[0, 0] == 2 and ids[0, 1] == -1
    assert scores[0, 0] == pytest.approx(expected_scores("sleepy", utility=False)[2], rel=1e-6)
    ref = fit({"ocr": 1.0, "queries": 0.5, "description": 1.0})
    for q in QUERY_SET:
        a, b = on.search([q], 8), ref.search([q], 8)
        assert (a[0] == b[0]).all() and np.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="not in this index"):
        model.with_boosts({"keywords": 1.0})
    with pytest.raises(ValueError, match="boost"):
        MultiFieldBM25({"ocr": -1.0})


def test_pool_cut_and_ties_by_position():
    texts = ["red ball", "blue ball", "red ball", "green ball", "red ball"]
    model = MultiFieldBM25({"t": 1.0}).fit({"t": texts})
    ids, scores = model.search(["red"], pool=2)
    assert ids.tolist() == [[0, 2]] and scores[0, 0] == scores[0, 1]
    ids, _ = model.search(["red", "ball", "red"], pool=10)
    assert ids[0, :4].tolist() == [0, 2, 4, -1]
    assert ids[1, :5].tolist() == [0, 1, 2, 3, 4]   # equal scores: sticker order
    assert (ids[2] == ids[0]).all()                  # repeated query, same row


def test_doc_count_ignores_empty_fields():
    """A document without tokens in a field is not part of that field's N and avgdl."""
    model = fit()
    ocr = model.counts_["ocr"]
    assert ocr.doc_count == 6            # None, "" are not counted ("!!!" is one symbol token)
    assert ocr.avgdl == pytest.approx((2 + 7 + 2 + 2 + 1 + 1) / 6)


def test_blocks_and_threads_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    docs = {f: [" ".join(rng.choice(words, size=rng.integers(0, 9))) for _ in range(400)]
            for f in ("a", "b")}
    queries = [" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(80)]
    boost = rng.random(400).astype(np.float32)
    ref = MultiFieldBM25({"a": 1.0, "b": 0.7}, n_threads=1).fit(docs).search(queries, 25, boost)
    monkeypatch.setattr(fields_mod, "MAX_BLOCK_POSTINGS", 40)
    monkeypatch.setattr(fields_mod, "MAX_BLOCK_QUERIES", 3)
    small = MultiFieldBM25({"a": 1.0, "b": 0.7}, n_threads=2).fit(docs).search(queries, 25, boost)
    assert (small[0] == ref[0]).all() and np.array_equal(small[1], ref[1])
    # and against a dense brute force
    model = MultiFieldBM25({"a": 1.0, "b": 0.7}).fit(docs)
    dense = model.score_matrix(queries).toarray()
    for i in range(len(queries)):
        hit = np.flatnonzero(dense[i] > 0)
        s = (dense[i, hit] + boost[hit]).astype(np.float32)
        order = hit[np.lexsort((hit, -s))][:25]
        assert ref[0][i, :len(order)].tolist() == order.tolist()


def test_top_k_csr_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    m = sp.random(50, 300, density=0.2, format="csr", random_state=2, dtype=np.float32)
    m.data = np.round(m.data * 5).astype(np.float32) + 1  # many ties
    for k in (1, 7, 60, 400):
        pos, sc = top_k_csr(m, k)
        dense = m.toarray()
        for r in range(50):
            hit = np.flatnonzero(dense[r])
            order = hit[np.lexsort((hit, -dense[r, hit]))][:k]
            assert pos[r, :len(order)].tolist() == order.tolist()
            assert (pos[r, len(order):] == -1).all()
            assert np.array_equal(sc[r, :len(order)], dense[r, order])
    keys = pack_keys(np.array([-2.5, 0.0, -0.0, 3.0, np.float32(1e-30)], np.float32),
                     np.arange(5))
    p, s = unpack_keys(np.sort(keys))
    assert p.tolist()[:2] == [3, 4] and s.tolist()[0] == 3.0 and s.tolist()[-1] == -2.5
    del rng


def test_field_counts_are_cached_by_content_within_a_run_context():
    ctx = RunContext()
    a = fit(context=ctx)
    b = fit({"ocr": 2.0, "description": 1.0, "queries": 0.0}, context=ctx)
    assert a.counts_["ocr"] is b.counts_["ocr"]
    assert ctx.hits["bm25-field-counts"] >= 1 and ctx.seconds["bm25-field-counts"] > 0
    c = MultiFieldBM25({"ocr": 1.0}, tokenizer=Tokenizer(stem="english"),
                       context=ctx).fit({"ocr": OCR})
    assert c.counts_["ocr"] is not a.counts_["ocr"]
    # no context, or another run's: nothing shared
    assert fit().counts_["ocr"] is not a.counts_["ocr"]
    assert fit(context=RunContext()).counts_["ocr"] is not a.counts_["ocr"]
    ctx.clear()
    assert fit(context=ctx).counts_["ocr"] is not a.counts_["ocr"]


def test_errors():
    with pytest.raises(RuntimeError, match="fit"):
        MultiFieldBM25({"a": 1.0}).search(["x"], 5)
    with pytest.raises(ValueError, match="no texts for field"):
        MultiFieldBM25({"a": 1.0}).fit({"b": ["x"]})
    with pytest.raises(ValueError, match="different numbers"):
        MultiFieldBM25({"a": 1.0, "b": 1.0}).fit({"a": ["x"], "b": ["x", "y"]})
    model = MultiFieldBM25({"a": 1.0}).fit({"a": ["x y", "y"]})
    with pytest.raises(ValueError, match="one value per sticker"):
        model.search(["x"], 5, doc_boost=np.ones(3))
    empty = MultiFieldBM25({"a": 1.0}).fit({"a": [None, ""]})
    assert (empty.search(["x"], 3)[0] == -1).all()


def test_vectorised_field_counts_equal_per_document_counts():
    """field_counts (bench.bm25, vectorised tokenisation + one CSR build) == count_terms over
    Tokenizer.batch: same vocabulary order, term counts and lengths."""
    from bench.bm25.index import count_terms, field_counts
    from bench.text import Tokenizer
    rng = np.random.default_rng(4)
    words = ["cat", "Dog", "the", ":)", "中文", "naïve", "x_1", "hi!"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 6))) for _ in range(200)] + [None]
    tok = Tokenizer(stopwords="english")
    a = field_counts(texts, tok)
    b = count_terms(tok.batch(texts))
    assert a.vocab == b.vocab and a.dl.tolist() == b.dl.tolist()
    assert (a.tf != b.tf).nnz == 0 and np.array_equal(a.tf.indices, b.tf.indices)
