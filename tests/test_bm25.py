"""BM25 baseline and the shared tokenizer (bench/text.py, baselines/bm25.py)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import baselines.bm25 as bm25_mod
from baselines.bm25 import BM25Retriever, historical_queries, resolve_fields
from bench.errors import ConfigError
from bench.retrieval import Request, TrainView
from bench.registry import describe_retriever, get_params, make_retriever
from bench.text import Tokenizer


def make_train(texts, clicks=None, column="ocr_text", **extra) -> TrainView:
    stickers = pd.DataFrame({"sticker_id": [f"s{i}" for i in range(len(texts))],
                             "image": [None] * len(texts), column: texts, **extra})
    if clicks is None:
        clicks = pd.DataFrame({"user_id": [], "query": [], "sticker_id": [], "ts": []})
    else:
        clicks = pd.DataFrame(clicks, columns=["user_id", "query", "sticker_id", "ts"])
    return TrainView(stickers=stickers, clicks=clicks)


CORPUS = [
    "happy cat dancing",
    "sad dog crying in the rain",
    "happy happy dog",
    None,                                     # no text: not in N nor avgdl (Lucene docCount)
    "good morning coffee",
    "cat cat cat sleeping on a very long sofa all day",
    "angry cat",
    "",
]


def lucene_scores(docs: list[list[str]], query: list[str], k1=1.2, b=0.75) -> np.ndarray:
    """Lucene/Elasticsearch BM25 from raw counts, for documents with at least one token."""
    kept = [d for d in docs if d]
    n_docs = len(kept)
    avgdl = sum(len(d) for d in kept) / n_docs
    df = Counter(t for d in kept for t in set(d))
    out = np.zeros(len(docs))
    for i, d in enumerate(docs):
        if not d:
            continue
        tf = Counter(d)
        for t in query:  # repeated query tokens count again (Lucene merges them into a boost)
            if tf[t] == 0:
                continue
            idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
            out[i] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return out


# ------------------------------------------------------------------------------ (a) formula

@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (0.9, 0.4), (2.0, 1.0)])
def test_bm25s_scores_equal_lucene_formula(k1, b):
    train = make_train(CORPUS)
    tok = Tokenizer()
    docs = tok.batch(CORPUS)
    queries = ["happy cat", "cat", "dog rain", "sofa cat cat", "coffee", "zebra cat"]
    ret = BM25Retriever(fields="ocr_text", k1=k1, b=b).fit(train)
    run = ret.search([Request("u", q) for q in queries], k=100)
    for q in queries:
        expected = lucene_scores(docs, tok(q), k1, b)
        got = dict(run[Request("u", q)])
        want = {f"s{i}": s for i, s in enumerate(expected) if s > 0}
        assert set(got) == set(want), q
        for sid, s in want.items():
            assert got[sid] == pytest.approx(s, rel=1e-5, abs=1e-5), (q, sid)
        scores = [s for _, s in run[Request("u", q)]]
        assert scores == sorted(scores, reverse=True)


def test_ties_broken_by_sticker_order():
    train = make_train(["red ball", "blue ball", "red ball", "green ball", "red ball"])
    run = BM25Retriever(fields="ocr_text").fit(train).search([Request("u", "red")], k=2)
    assert [sid for sid, _ in run[Request("u", "red")]] == ["s0", "s2"]
    full = BM25Retriever(fields="ocr_text").fit(train).search([Request("u", "red")], k=10)
    assert [sid for sid, _ in full[Request("u", "red")]] == ["s0", "s2", "s4"]


def test_blocking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(300)]
    queries = [" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(50)]
    train = make_train(texts)
    reqs = [Request(f"u{i}", q) for i, q in enumerate(queries)]
    ref = BM25Retriever(fields="ocr_text").fit(train).search(reqs, k=15)
    monkeypatch.setattr(bm25_mod, "MAX_BLOCK_POSTINGS", 50)
    small = BM25Retriever(fields="ocr_text", batch_size=3).fit(train).search(reqs, k=15)
    for r in reqs:
        assert small.ids(r) == ref.ids(r)
        assert np.allclose([s for _, s in small[r]], [s for _, s in ref[r]])


# --------------------------------------------------------------------- (b) both backends

def test_backends_agree_where_formulas_rank_alike():
    # rank-bm25's idf ln((N-n+0.5)/(n+0.5)) and Lucene's ln(1+(N-n+0.5)/(n+0.5)) differ in value
    # but both are positive and decreasing in n when n < N/2, and its extra (k1+1) factor is a
    # constant. So a query whose terms all share one document frequency n < N/2 scores
    # idf(n) * sum(tf parts) in both: same ranking. Here N = 10 and every query term has n <= 3.
    texts = ["cat", "cat dog", "cat cat long text here", "dog dog dog", "bird", "fish bird",
             "snake", "frog lizard", "lion tiger dog", "frog"]
    train = make_train(texts)
    tok = Tokenizer()
    df = Counter(t for d in tok.batch(texts) for t in set(d))
    queries = ["cat", "dog", "bird", "frog", "cat cat", "cat dog", "bird frog", "tiger"]
    for q in queries:
        terms = set(tok(q))
        assert all(df[t] < len(texts) / 2 for t in terms)
        assert len({df[t] for t in terms}) == 1, q
    reqs = [Request("u", q) for q in queries]
    a = BM25Retriever(fields="ocr_text", backend="bm25s").fit(train).search(reqs, k=5)
    b = BM25Retriever(fields="ocr_text", backend="rank-bm25").fit(train).search(reqs, k=5)
    for r in reqs:
        assert a.ids(r) == b.ids(r), r.query
        assert a.ids(r), r.query


def test_rank_bm25_drops_nonpositive_scores():
    # "cat" is in 3 of 4 documents: rank-bm25's idf is negative, floored at 0.25 * mean idf > 0
    # only if the mean is positive; whatever it is, only positive scores are returned.
    train = make_train(["cat", "cat dog", "cat", "fish"])
    run = BM25Retriever(fields="ocr_text", backend="rank-bm25").fit(train) \
        .search([Request("u", "cat"), Request("u", "fish")], k=10)
    assert all(s > 0 for s in [s for r in run for _, s in run[r]])
    assert run.ids(Request("u", "fish")) == ["s3"]


# ------------------------------------------------------------------------------ (c) tokenizer

def test_tokenizer_unicode_lowercasing():
    tok = Tokenizer()
    assert tok("Hello WORLD, Straße!") == ["hello", "world", "strasse"]
    assert tok("ＦＵＬＬ width ①") == ["full", "width", "1"]          # NFKC
    assert tok("ÉCOLE naïve") == ["école", "naïve"]
    assert tok("हिन्दी text") == ["हिन्दी", "text"]                    # combining marks stay
    assert tok("lol😂👍🏽!!") == ["lol", "😂", "👍"]                     # emoji tokens, no modifier
    assert Tokenizer(lowercase=False)("Hello World") == ["Hello", "World"]
    assert tok("") == [] and tok(None) == []


def test_tokenizer_stemming_on_off():
    assert Tokenizer()("running cats") == ["running", "cats"]
    assert Tokenizer(stem="english")("running cats") == ["run", "cat"]
    assert Tokenizer(stem="english", stopwords="english")("the cats are running") == ["cat", "run"]
    with pytest.raises(ValueError, match="stemmer"):
        Tokenizer(stem="klingon")


def test_tokenizer_chinese_modes():
    text = "我今天很开心abc哈哈"
    jieba_tokens = Tokenizer(chinese="jieba")(text)
    assert "今天" in jieba_tokens and "开心" in jieba_tokens and "abc" in jieba_tokens
    assert Tokenizer(chinese="char")(text) == ["我", "今", "天", "很", "开", "心", "abc", "哈", "哈"]
    assert Tokenizer(chinese="none")(text) == ["我今天很开心", "abc", "哈哈"]
    assert "".join(t for t in jieba_tokens if t != "abc") == "我今天很开心哈哈"


def test_tokenizer_batch_matches_call_and_copies():
    tok = Tokenizer(stem="english")
    texts = ["Cats running", None, "cats running", "Cats running"]
    out = tok.batch(texts)
    assert out == [tok(t) for t in texts]
    out[0].append("x")
    assert out[3] == ["cat", "run"]


# ----------------------------------------------------------------------------- (d) edge cases

def test_empty_unknown_queries_and_large_k():
    train = make_train(["happy cat", "sad dog", "cat"])
    for backend in ("bm25s", "rank-bm25"):
        ret = BM25Retriever(fields="ocr_text", backend=backend).fit(train)
        reqs = [Request("u", ""), Request("u", "!!!"), Request("u", "zebra"),
                Request("u", "cat"), Request("v", "cat")]
        run = ret.search(reqs, k=1000)
        assert len(run) == 5
        assert run[reqs[0]] == [] and run[reqs[1]] == [] and run[reqs[2]] == []
        assert run.ids(reqs[3]) == ["s2", "s0"] == run.ids(reqs[4])
        assert ret.search(reqs, k=0)[reqs[3]] == []
        assert len(ret.search([], k=10)) == 0


def test_empty_corpus_and_corpus_without_text():
    for texts in ([], [None, "", "  !! "]):
        for backend in ("bm25s", "rank-bm25"):
            ret = BM25Retriever(fields="ocr_text", backend=backend).fit(make_train(texts))
            run = ret.search([Request("u", "cat")], k=10)
            assert run[Request("u", "cat")] == []


def test_fields_resolution_and_errors():
    train = make_train(["a"], description=["b"], gt_style=["secret"])
    assert resolve_fields("all", train.stickers) == ["ocr_text", "description"]
    assert resolve_fields("ocr_text, queries", train.stickers) == ["ocr_text", "queries"]
    with pytest.raises(ConfigError, match="unknown field 'gt_style'"):
        BM25Retriever(fields=["gt_style"]).fit(train)
    with pytest.raises(ConfigError, match="backend"):
        BM25Retriever(backend="lucene").fit(train)
    # "all" joins every text column, never gt_*
    run = BM25Retriever().fit(train).search([Request("u", "b"), Request("u", "secret")], k=5)
    assert run.ids(Request("u", "b")) == ["s0"] and run.ids(Request("u", "secret")) == []


def test_registered_with_params():
    ret = make_retriever("bm25", {"k1": 0.9, "stem": "english"})
    assert isinstance(ret, BM25Retriever)
    assert get_params(ret) == {"fields": "all", "backend": "native", "k1": 0.9, "b": 0.75,
                               "stem": "english", "chinese": "jieba", "batch_size": 1024,
                               "scoring": "pruned"}
    assert describe_retriever(BM25Retriever).startswith("BM25")


# ------------------------------------------------------------------ (e) historical queries

def test_queries_field_uses_only_train_clicks():
    texts = ["picture one", "picture two", "picture three"]
    clicks = [("u1", "good night", "s0", 1), ("u2", "good night", "s0", 2),
              ("u1", "sleepy", "s0", 3), ("u3", "party time", "s1", 4)]
    train = make_train(texts, clicks)
    assert historical_queries(train.clicks, train.sticker_ids) == \
        ["good night sleepy", "party time", ""]
    ret = BM25Retriever(fields=["queries"]).fit(train)
    run = ret.search([Request("x", "night"), Request("x", "party"), Request("x", "birthday"),
                      Request("x", "picture")], k=10)
    assert run.ids(Request("x", "night")) == ["s0"]
    assert run.ids(Request("x", "party")) == ["s1"]
    assert run.ids(Request("x", "birthday")) == []   # a query no train click carries
    assert run.ids(Request("x", "picture")) == []    # sticker text is not in this field
    # A click that is not in TrainView.clicks (e.g. a test click) changes nothing.
    later = make_train(texts, clicks + [("u9", "birthday", "s2", 9)])
    assert BM25Retriever(fields="queries").fit(later) \
        .search([Request("x", "birthday")], k=10).ids(Request("x", "birthday")) == ["s2"]
    both = BM25Retriever(fields="ocr_text,queries").fit(train)
    assert both.search([Request("x", "three")], k=3).ids(Request("x", "three")) == ["s2"]


def _historical_queries_groupby(clicks, sticker_ids, sep=" "):
    """The former implementation (pandas groupby + str.join per sticker), as the reference."""
    c = clicks[["sticker_id", "query"]].copy()
    if "ts" in clicks:
        c = c.iloc[np.argsort(clicks["ts"].to_numpy(), kind="stable")]
    c = c.dropna().astype({"sticker_id": str, "query": str})
    c = c[c["query"].str.strip() != ""].drop_duplicates(["sticker_id", "query"])
    joined = c.groupby("sticker_id", sort=False)["query"].agg(sep.join)
    return joined.reindex(pd.Index(list(sticker_ids), dtype=object)).fillna("").tolist()


@pytest.mark.parametrize("sep", [" ", " | ", "\x1e"])
def test_historical_queries_numpy_grouping_equals_groupby(sep):
    rng = np.random.default_rng(3)
    words = ["cat", "dog", "good night", " ", "", "a\x1eb", "a\x1fb", "\x1d", "\x00x", None]
    n = 400
    clicks = pd.DataFrame({
        "user_id": rng.integers(0, 9, n).astype(str),
        "query": [words[i] for i in rng.integers(0, len(words), n)],
        "sticker_id": [f"s{i}" if i < 30 else None for i in rng.integers(0, 32, n)],
        "ts": rng.integers(0, 50, n)})          # many equal timestamps: stable order matters
    ids = [f"s{i}" for i in range(35)]          # s30..s34 never clicked
    got = historical_queries(clicks, ids, sep=sep)
    assert got == _historical_queries_groupby(clicks, ids, sep=sep)
    assert got[30:] == [""] * 5 and any(got)
    no_ts = clicks.drop(columns=["ts"])
    assert historical_queries(no_ts, ids, sep=sep) == _historical_queries_groupby(no_ts, ids, sep)


# ------------------------------------------------------------ (f) the one BM25 core (native)

def _random_texts(rng, n, ascii_only=False):
    words = ["cat", "Cat", "dogs", "running", "the", "a_b", "x1", ":)", "!!!", "hi!", "(ok)",
             "Straße", "ＡＢＣ", "中文测试", "😀👍🏽", "naïve", "и", "\t", "\x1c", "zq0sepx"]
    if ascii_only:
        words = [w for w in words if w.isascii()]
    out = []
    for _ in range(n):
        m = int(rng.integers(0, 7))
        out.append(None if m == 0 and rng.random() < 0.3 else
                   " ".join(words[i] for i in rng.integers(0, len(words), m)))
    return out


@pytest.mark.parametrize("tok", [Tokenizer(), Tokenizer(stem="english", stopwords="english"),
                                 Tokenizer(lowercase=False, chinese="char")], ids=repr)
def test_tokenize_to_codes_equals_batch(tok):
    from bench.text import tokenize_to_codes
    rng = np.random.default_rng(0)
    for ascii_only in (True, False):
        texts = _random_texts(rng, 300, ascii_only) + [float("nan"), "", "the the"]
        docs = tok.batch(texts)
        codes, lengths, terms = tokenize_to_codes(tok, texts)
        flat = [t for d in docs for t in d]
        assert lengths.tolist() == [len(d) for d in docs]
        assert np.asarray(terms, dtype=object)[codes].tolist() == flat
        assert terms == list(dict.fromkeys(flat))       # first-occurrence order
    # any callable works too (run per text)
    codes, lengths, terms = tokenize_to_codes(str.split, ["a b a", "", "b c"])
    assert [terms[c] for c in codes] == ["a", "b", "a", "b", "c"] and lengths.tolist() == [3, 0, 2]


def test_ascii_fast_pattern_agrees_with_tokenizer_pattern():
    import random

    from bench.text import _ascii_pattern, _patterns
    rnd = random.Random(0)
    alphabet = "aZ1_ !?.:;)(-'\"\t\n\x0b\x1c\x1f@#$%^&*~`"
    for _ in range(5000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 14)))
        assert _ascii_pattern().findall(s) == _patterns()[0].findall(s), repr(s)


def test_native_backend_equals_bm25s_ranks_and_scores():
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(80)]
    p = 1.0 / np.arange(1, 81)
    p /= p.sum()
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 9), p=p)) for _ in range(600)]
    queries = list(dict.fromkeys(" ".join(rng.choice(words, size=rng.integers(1, 4), p=p))
                                 for _ in range(150))) + ["zzz", "w1 w1"]
    train = make_train(texts)
    reqs = [Request("u", q) for q in queries]
    for k1, b in ((1.2, 0.75), (0.5, 1.0)):
        nat = BM25Retriever(fields="ocr_text", k1=k1, b=b).fit(train)
        ref = BM25Retriever(fields="ocr_text", backend="bm25s", k1=k1, b=b).fit(train)
        assert nat.backend == "native" and nat.vocab_ == ref.vocab_
        assert np.array_equal(nat.doc_rows_, ref.doc_rows_)
        np.testing.assert_allclose(nat.index_.toarray(), ref.index_.toarray(), rtol=1e-6)
        run_n, run_r = nat.search(reqs, 25), ref.search(reqs, 25)
        for r in reqs:
            assert run_n.ids(r) == run_r.ids(r), r.query
            np.testing.assert_allclose([s for _, s in run_n[r]], [s for _, s in run_r[r]],
                                       rtol=1e-6)


# ------------------------------------------------------- (g) pruned (MaxScore) == exhaustive

def _zipf_weights(rng, n_terms, n_docs, tied):
    """A terms x documents float32 CSR with Zipfian postings; ``tied``: few distinct weights."""
    from scipy import sparse
    p = 1.0 / np.arange(1, n_terms + 1) ** 1.1
    p /= p.sum()
    nnz = int(rng.integers(0, 4 * n_docs))
    rows, cols = rng.choice(n_terms, size=nnz, p=p), rng.integers(0, n_docs, nnz)
    levels = np.float32([0.25, 0.5, 0.75, 1.0, 1.5]) if tied else rng.random(9).astype(np.float32)
    w = sparse.csr_matrix((rng.choice(levels, size=nnz), (rows, cols)), shape=(n_terms, n_docs))
    w.sum_duplicates()  # repeated (term, doc) pairs add up: more distinct values, still ties
    q_of = np.repeat(np.arange(60), rng.integers(0, 6, 60))  # empty rows included
    q = sparse.csr_matrix((np.ones(q_of.size, np.float32),
                           (q_of, rng.choice(n_terms, size=q_of.size, p=p))),
                          shape=(60, n_terms))
    q.sum_duplicates()  # a repeated term: value 2, 3...
    return w.astype(np.float32), q


def _assert_identical(got, want):
    assert np.array_equal(got[0], want[0])
    assert np.array_equal(got[1].view(np.uint32), want[1].view(np.uint32))  # bit for bit


@pytest.mark.parametrize("seed", range(6))
def test_pruned_kernel_equals_exhaustive_bitwise(seed):
    from bench.bm25 import pruned
    from bench.bm25.scoring import search_blocks
    rng = np.random.default_rng(seed)
    for tied in (True, False):
        w, q = _zipf_weights(rng, int(rng.integers(1, 50)), int(rng.integers(1, 300)), tied)
        prepared = pruned.PrunedIndex(w)
        assert pruned.usable(prepared, q)
        for k in (1, 5, 20, 100):
            want = search_blocks(q, w, k, positive_only=True, threads=1)
            for threads in (1, 2):
                _assert_identical(pruned.search(prepared, q, k, threads=threads), want)
    hits = (want[0] >= 0).sum(axis=1)
    assert (hits < 100).any()                             # k beyond the matching documents
    assert (want[0][np.diff(q.indptr) == 0] == -1).all()  # empty queries: nothing


def test_pruned_kernel_ties_keep_the_earliest_documents():
    from scipy import sparse

    from bench.bm25 import pruned
    # term 0 in every document with one weight, term 1 in documents 3 and 7: all tied on term 0
    w = sparse.csr_matrix((np.float32([1.0] * 10 + [0.5, 0.5]),
                           ([0] * 10 + [1, 1], list(range(10)) + [3, 7])), shape=(2, 10))
    q = sparse.csr_matrix(np.float32([[1, 0], [1, 1], [0, 2]]))
    pos, scores = pruned.search(pruned.PrunedIndex(w), q, 4)
    assert pos.tolist() == [[0, 1, 2, 3], [3, 7, 0, 1], [3, 7, -1, -1]]
    assert scores[1].tolist() == [1.5, 1.5, 1.0, 1.0] and scores[2, 2] == -np.inf
    # a negative weight breaks the bounds: not usable (the retriever falls back to exhaustive)
    neg = sparse.csr_matrix(np.float32([[1.0, -0.5]]))
    assert not pruned.usable(pruned.PrunedIndex(neg), sparse.csr_matrix(np.float32([[1.0]])))


def test_pruned_retriever_equals_exhaustive_on_zipf_corpus():
    rng = np.random.default_rng(11)
    words = [f"w{i}" for i in range(120)]
    p = 1.0 / np.arange(1, 121)
    p /= p.sum()
    # short documents from a small vocabulary: many documents share a score
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 5), p=p)) for _ in range(800)]
    queries = list(dict.fromkeys(" ".join(rng.choice(words, size=rng.integers(1, 4), p=p))
                                 for _ in range(200)))
    queries += ["", "!!!", "zebra", "zebra w0", "w0 w0 w1", "w119 w118 w0 w1 w2 w3"]
    train = make_train(texts)
    reqs = [Request("u", q) for q in queries]
    for backend in ("native", "bm25s"):
        fast = BM25Retriever(fields="ocr_text", backend=backend).fit(train)
        slow = BM25Retriever(fields="ocr_text", backend=backend, scoring="exhaustive").fit(train)
        assert fast.scoring == "pruned"
        for k in (1, 5, 20, 100, 1000):
            a, b = fast.search(reqs, k), slow.search(reqs, k)
            for r in reqs:
                assert a[r] == b[r], (backend, k, r.query)   # ids and scores, in order
        assert a[reqs[-6]] == [] and a[reqs[-4]] == []
        assert a[reqs[-3]] == slow.search([reqs[-3]], 1000)[reqs[-3]] != []
    # a copy holding other weights is searched with its own bounds (perf's rank-bm25 check)
    import copy
    other = copy.copy(fast)
    other.index_ = fast.index_.copy()
    other.index_.data = (other.index_.data * np.float32(3.0)).astype(np.float32)
    got = other.search(reqs[:5], 5)
    assert [s for _, s in got[reqs[0]]] == pytest.approx(
        [3 * s for _, s in fast.search(reqs[:1], 5)[reqs[0]]], rel=1e-6)
    with pytest.raises(ConfigError, match="scoring"):
        BM25Retriever(scoring="wand").fit(train)
