"""persrv-bench perf: the command end to end at a small size, and its measuring parts."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.perf import MemorySampler, StageClock, timed_methods
from bench.perf.references import _is_top_k_of, agreement, okapi_idf, under_okapi_formula
from bench.perf.workloads import build_workload, zipf_words
from tests.conftest import make_tiny_frames

STAGES = ("index", "utility", "clusters", "recall", "rerank", "results", "metrics")


@pytest.mark.slow
def test_perf_command_small(tmp_path, isolated_cache):
    out = tmp_path / "perf"
    res = CliRunner().invoke(cli, [
        "perf", "--size", "3000", "--requests", "200", "--naive-sample", "5",
        "--rank-bm25-sample", "20", "--scaling", "1000,2000", "--no-tracking",
        "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "perf.json").read_text(encoding="utf-8"))
    for key in ("config", "machine", "load_start", "load_end", "dataset", "retrievers",
                "pipeline", "rank_bm25", "peers", "naive", "sweep", "help", "targets",
                "scaling", "process_peak_rss_mb"):
        assert key in result, key
    shape = result["dataset"]
    assert shape["stickers"] == 3000 and shape["workload"] == "zipf"
    assert 0 < shape["requests"] <= 200
    # distinct test queries: counted on the requests run, printed, split by words per query
    ds = build_workload("zipf", 3000, 0)  # the cached build
    from bench.data.splits import split_interactions
    reqs = split_interactions(ds.interactions).requests("test").requests[:200]
    assert shape["distinct_queries"] == len({r.query for r in reqs}) > 10
    assert f"{shape['distinct_queries']:,} distinct test queries" in res.output
    assert sum(shape["query_words"].values()) == shape["distinct_queries"]
    assert set(shape["query_words"]) <= {"1", "2", "3"}
    assert 0 < shape["with_ocr_text"] < 3000 and shape["topics"] == 60

    recs = result["retrievers"]
    assert list(recs)[:2] == ["bm25", "persrv"]
    assert {"persrv-no-personalization", "persrv-no-utility", "persrv-bm25"} <= set(recs)
    for name, rec in recs.items():
        assert rec["e2e_s"] > 0 and rec["search_s"] > 0 and rec["peak_rss_mb"] > 0
        assert rec["requests"] == result["dataset"]["requests"]
        for stage, row in rec["stages"].items():
            assert stage in STAGES and row["seconds"] > 0 and row["calls"] >= 1
    assert set(recs["persrv"]["stages"]) == set(STAGES)
    assert set(recs["bm25"]["stages"]) == {"index", "recall", "metrics"}
    # recall pools belong to a fitted retriever (issue 25): persrv-no-personalization computes
    # its own, so its timings do not depend on persrv having run first
    assert recs["persrv-no-personalization"]["recall_shared"] is False
    assert result["pipeline"]["retrievers_s"] == pytest.approx(
        sum(r["e2e_s"] for r in recs.values()))

    rb = result["rank_bm25"]
    assert rb["speedup_search"] > 0 and rb["speedup_end_to_end"] > 0
    assert rb["rank_bm25_search_extrapolated_s"] >= rb["rank_bm25_search_sample_s"]
    ident = rb["identity"]
    assert ident["queries"] > 0
    assert ident["identical_up_to_ties"] == ident["queries"], ident
    assert ident["okapi_idf_max_abs_diff"] < 1e-9
    nv = result["naive"]
    assert nv["sample_requests"] == 5 and nv["speedup"] > 0 and nv["extrapolated_s"] > 0
    assert nv["agreement"]["identical_up_to_ties"] == 5

    assert result["sweep"]["trial_s"] > 0 and result["sweep"]["n_clusters"] == 7
    assert 0 < result["help"]["median_s"] < 10
    targets = result["targets"]
    assert set(targets) == {"pipeline_s", "peak_rss_gb", "rank_bm25_speedup",
                            "rank_bm25_identical", "sweep_trial_s", "help_s", "bm25_fastest"}
    peers = result["peers"]["peers"]
    assert set(peers) == {"bm25s-numba", "tantivy"}
    for name, p in peers.items():
        assert "error" not in p, (name, p)
        assert p["index_s"] > 0 and p["search_s"] > 0 and p["ratio"] > 0
        assert p["agreement"]["queries"] == shape["distinct_queries"]
    # same formula (bm25s) or nearly (tantivy's lossy norms) on the same tokens: the top k
    # differ only where ties at the k-th score are broken in another order
    assert peers["bm25s-numba"]["agreement"]["mean_overlap_at_k"] > 0.9
    assert peers["tantivy"]["agreement"]["mean_overlap_at_k"] > 0.9
    assert targets["bm25_fastest"]["measured"] == pytest.approx(min(
        [rb["speedup_end_to_end"]] + [p["ratio"] for p in peers.values()]))
    assert targets["rank_bm25_identical"]["met"] is True
    assert all(t["paper_scale"] is False for t in targets.values())

    sizes = [p["size"] for p in result["scaling"]]
    assert sizes == [1000, 2000] and all("error" not in p for p in result["scaling"])
    assert all(p["peak_rss_mb"] > 0 and p["total_s"] > 0 for p in result["scaling"])
    # requests at the paper's density (12,568 per 543,098 stickers), not the main run's cap
    assert [p["requests"] for p in result["scaling"]] == [23, 46]
    assert (out / "scaling.png").stat().st_size > 1000
    md = (out / "perf.md").read_text(encoding="utf-8")
    assert "## Targets" in md and "## Scaling" in md and "extrapolated" in md
    assert "| **exponent** (log-log slope) |" in md
    assert "| persrv |" in md and "load average" in md
    assert "| tantivy |" in md and "| bm25s-numba |" in md and "Workload **zipf**" in md
    assert (out / "perf.md").read_text(encoding="utf-8") in res.output


@pytest.mark.slow
def test_perf_concepts_workload_and_compare(tmp_path, isolated_cache):
    """--workload concepts measures the synthetic builder's dataset; --compare OLD.json adds
    before/after per stage."""
    args = ["perf", "--workload", "concepts", "--size", "2000", "--requests", "150",
            "--naive-sample", "0", "--rank-bm25-sample", "0", "--no-peers", "--no-sweep",
            "--scaling", "none", "--retrievers", "bm25,persrv", "--no-tracking"]
    first = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    old = json.loads((tmp_path / "a" / "perf.json").read_text(encoding="utf-8"))
    shape = old["dataset"]
    assert shape["workload"] == "concepts" and shape["name"] == "synthetic-en-2000"
    assert 0 < shape["distinct_queries"] <= 46 * 6  # 46 concepts, ~5 query phrases each
    assert f"{shape['distinct_queries']:,} distinct test queries" in first.output
    assert list(old["retrievers"]) == ["bm25", "persrv"]
    assert all(t["paper_scale"] is False for t in old["targets"].values())
    second = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "b"), "--compare",
                                             str(tmp_path / "a" / "perf.json")])
    assert second.exit_code == 0, second.output
    md = (tmp_path / "b" / "perf.md").read_text(encoding="utf-8")
    assert "## Before / after per stage" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| persrv |") and "→" in ln)
    assert row.count("→") == 8 and "(same)" in row  # 7 stages + end to end; same M-MRR
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    res = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "c"), "--compare", str(bad)])
    assert res.exit_code != 0 and "not a perf.json" in str(res.exception or res.output)


def test_zipf_workload_is_seeded_and_diverse(isolated_cache):
    words = zipf_words(5000, 0)
    assert len(set(words.tolist())) == 5000 and all(w.isalpha() for w in words[:50])
    a = build_workload("zipf", 2000, 0)
    b = build_workload("zipf", 2000, 0)  # from the cache
    assert a.root == b.root and a.fingerprint == b.fingerprint
    assert a.meta["builder_params"]["n_words"] == 50_000
    st = a.stickers
    assert st["ocr_text"].notna().mean() == pytest.approx(0.6, abs=0.05)
    assert st["gt_topic"].nunique() == 40 and len(st["embedding"].iloc[0]) == 32
    q = a.interactions["query"]
    assert q.nunique() > 100 and q.str.split().str.len().between(1, 3).all()


def test_agreement_overlap_at_k():
    ag = agreement([["a", "b"], [], ["x"]], [["b", "a"], [], ["y", "z"]])
    assert ag == {"queries": 3, "mean_overlap_at_k": pytest.approx((1 + 1 + 0) / 3),
                  "identical": 1}


def test_okapi_rescale_gives_rank_bm25_scores():
    """The bm25s index rescaled row by row holds rank-bm25's BM25Okapi scores, including the
    floor of a term in more than half of the documents."""
    from rank_bm25 import BM25Okapi

    from baselines.bm25 import field_texts
    from bench.retrieval import TrainView
    from bench.registry import make_retriever
    stickers, clicks = make_tiny_frames()
    stickers = stickers.drop(columns=["embedding"])
    stickers.loc[:9, "text"] += " common"  # in 10 of 15 documents: negative idf, floored
    view = TrainView(stickers=stickers, clicks=clicks)
    bm25 = make_retriever("bm25", {"fields": "text,queries"}).fit(view)
    docs = bm25.tokenizer_.batch(field_texts(view, "text,queries"))
    ref = BM25Okapi([docs[i] for i in bm25.doc_rows_], k1=bm25.k1, b=bm25.b)
    assert ref.idf["common"] == pytest.approx(0.25 * ref.average_idf)
    rows = [bm25.vocab_[t] for t in ref.idf]
    idf = okapi_idf(np.diff(bm25.index_.indptr), bm25.index_.shape[1])
    np.testing.assert_allclose(idf[rows], [ref.idf[t] for t in ref.idf], rtol=1e-12)
    same = under_okapi_formula(bm25)
    dense = same.index_.toarray()
    for query in (["common"], ["happy", "common"], ["so", "happy", "happy"]):
        counts = np.zeros(dense.shape[0])
        for t in query:
            counts[bm25.vocab_[t]] += 1
        np.testing.assert_allclose(counts @ dense, ref.get_scores(query), rtol=1e-6, atol=1e-6)
    # and the search path ranks by those scores
    from bench.retrieval import Request
    req = Request("u0", "happy common")
    got = [sid for sid, _ in same.search([req], 5)[req]]
    want = np.argsort(-ref.get_scores(["happy", "common"]), kind="stable")[:5]
    assert got == bm25.sticker_ids_[bm25.doc_rows_[want]].tolist()


def test_is_top_k_of_allows_only_ties():
    exact = {1: 3.0, 2: 2.0, 3: 2.0 + 1e-9, 4: 1.0}
    assert _is_top_k_of(exact, [1, 3, 2], 3, 1e-6)
    assert _is_top_k_of(exact, [1, 2, 3], 3, 1e-6)   # a tie within tolerance, either order
    assert not _is_top_k_of(exact, [1, 2, 4], 3, 1e-6)  # 3 is better than 4
    assert not _is_top_k_of(exact, [2, 1, 3], 3, 1e-6)  # out of order
    assert _is_top_k_of({}, [], 3, 1e-6)


def test_stage_clock_time_memory_and_method_wrappers():
    class Thing:
        def work(self, n):
            return np.ones(n, dtype=np.uint8).sum()

    with MemorySampler(interval=0.005) as sampler:
        clock = StageClock(sampler)
        thing = Thing()
        with timed_methods(thing, clock, "thing", (("build", "work"), ("absent", "nope"))) as w:
            assert w == ["work"]
            assert thing.work(64 << 20) == 64 << 20
            thing.work(10)
            twin = copy.copy(thing)
        assert "work" not in thing.__dict__  # wrappers removed after the block
        twin.__dict__.pop("work", None)
    row = clock.of("thing")["build"]
    assert row["calls"] == 2 and row["seconds"] > 0
    assert row["peak_rss_mb"] >= 60  # the 64 MB array was resident during the stage


def test_make_requests_equals_a_pandas_groupby_on_the_quickstart_shape():
    """The array pass of make_requests gives the groupby's requests (order included) and
    relevant sets on the quickstart's clicks (1,000 stickers, 300 users, attrs carried)."""
    from bench.data.simulate import simulate_clicks, simulator_config
    from bench.data.splits import make_requests, split_interactions
    from bench.data.synthetic import synthetic_stickers, vocabulary
    from bench.retrieval import Request
    stickers, _ = synthetic_stickers(1000, "en", 6, 0)
    vocab = vocabulary("en")
    queries = dict(zip(stickers["sticker_id"], (vocab[c][1] for c in stickers["gt_topic"])))
    cfg = simulator_config({"n_users": 300}, seed=0, group_col="gt_style", topic_col="gt_topic")
    clicks = simulate_clicks(stickers, queries, cfg)
    assert clicks.attrs["heldout_queries"]
    splits = split_interactions(clicks, heldout_queries=set(clicks.attrs["heldout_queries"]))
    for frame in (splits.train, splits.validation, splits.test, clicks):
        df = frame.sort_values(["user_id", "ts"], kind="stable")
        expected = {Request(str(u), str(q)): set(ids.astype(str)) for (u, q), ids in
                    df.groupby(["user_id", "query"], sort=False)["sticker_id"]}
        got = make_requests(frame)
        assert got.requests == list(expected) and got.relevant == expected
    assert len(splits.requests("test")) == 300
    ints = pd.DataFrame({"user_id": ["b", "a", "a", "b"], "query": ["x", "y", "y", "x"],
                         "sticker_id": [3, 1, 2, 3], "ts": [1, 2, 1, 0]})
    got = make_requests(ints)
    assert got.requests == [Request("a", "y"), Request("b", "x")]
    assert got.relevant[Request("a", "y")] == {"1", "2"}


def test_default_retrievers_are_the_pipeline_of_the_target():
    from bench.perf.measure import default_retrievers
    assert default_retrievers() == ["bm25", "persrv", "persrv-no-personalization",
                                    "persrv-no-description", "persrv-no-utility", "persrv-bm25",
                                    "persrv-no-ocr", "persrv-no-queries"]


@pytest.mark.parametrize("mode,weight,never_lower", [("multiply", 0.3, True),
                                                     ("multiply", -0.4, False),
                                                     ("sum", 0.5, False), ("sum", 0.2, True)])
def test_standardized_rerank_equals_scoring_the_whole_pool(mode, weight, never_lower):
    """The pruned standardised re-rank (only pool entries whose upper bound reaches the k-th
    lower bound are scored) gives bit-identical ids and scores to scoring every pooled sticker
    and taking the top k (ties by pool position), on random pools with ties, padding and
    users without clusters (pools wider than WHOLE_POOL; narrower ones are scored whole)."""
    from bench.persrv.clustering import ClusterConfig
    from bench.persrv.rerank import top_k_entries
    from bench.persrv.standardized import (StandardizedClusters, _standardized_scores,
                                           rerank_standardized)
    rng = np.random.default_rng(7)
    from bench.persrv.standardized import WHOLE_POOL
    n_st, d, P, nq, nu, k = 900, 8, WHOLE_POOL + 88, 70, 9, 10
    emb = rng.normal(size=(n_st, d)).astype(np.float32)
    ncl = rng.integers(0, 4, size=nu)
    offs = np.r_[0, np.cumsum(ncl)]
    cl = StandardizedClusters(user_ids=np.array([f"u{i}" for i in range(nu)]), offsets=offs,
                              centroids=rng.normal(size=(offs[-1], d)).astype(np.float32),
                              radii=(rng.random(offs[-1]) * 4).astype(np.float32),
                              sizes=np.ones(offs[-1], dtype=np.int64), config=ClusterConfig(),
                              mean=rng.normal(size=(nu, d)) * 0.1,
                              scale=rng.random((nu, d)) + 0.5)
    pool_ids = np.stack([rng.permutation(n_st)[:P] for _ in range(nq)]).astype(np.int32)
    pool_sc = -np.sort(-np.round(rng.gamma(2.0, 1.0, (nq, P)), 1).astype(np.float32), axis=1)
    pool_ids[:5, 300:] = -1
    pool_sc[:5, 300:] = -np.inf
    pool_ids[5, 4:] = -1          # fewer valid entries than k
    pool_sc[5, 4:] = -np.inf
    users = rng.integers(-1, nu, size=nq)
    ids, scores = rerank_standardized(pool_ids, pool_sc, users, emb, cl, weight=weight,
                                      mode=mode, k=k, never_lower=never_lower)
    todo = np.flatnonzero((users >= 0) & (cl.n_clusters[np.maximum(users, 0)] > 0))
    assert 0 < len(todo) < nq
    final = _standardized_scores(pool_ids[todo], pool_sc[todo], users[todo], emb, cl,
                                 float(weight), mode, never_lower)
    pos, want_scores = top_k_entries(final, np.broadcast_to(np.arange(P), final.shape), k)
    want_ids = np.where(pos >= 0, pool_ids[todo][np.arange(len(todo))[:, None],
                                                   np.maximum(pos, 0)], -1)
    assert np.array_equal(ids[todo, :want_ids.shape[1]], want_ids)
    assert np.array_equal(scores[todo, :want_ids.shape[1]], want_scores)
    assert (ids[5, 4:] == -1).all() and np.isneginf(scores[5, 4:]).all()
    rest = np.setdiff1d(np.arange(nq), todo)
    assert np.array_equal(ids[rest], pool_ids[rest, :k])
    # a pool of one request scored alone gives the same result (no dependence on the block)
    i = int(todo[0])
    one = rerank_standardized(pool_ids[i:i + 1], pool_sc[i:i + 1], users[i:i + 1], emb, cl,
                              weight=weight, mode=mode, k=k, never_lower=never_lower)
    assert np.array_equal(one[0][0], ids[i]) and np.array_equal(one[1][0], scores[i])
    # pools up to WHOLE_POOL wide are scored whole with the BLAS product, as before
    small = rerank_standardized(pool_ids[:, :100], pool_sc[:, :100], users, emb, cl,
                                weight=weight, mode=mode, k=k, never_lower=never_lower)
    final = _standardized_scores(pool_ids[todo, :100], pool_sc[todo, :100], users[todo], emb,
                                 cl, float(weight), mode, never_lower, blas=True)
    pos, want_scores = top_k_entries(final, np.broadcast_to(np.arange(100), final.shape), k)
    assert np.array_equal(small[1][todo, :want_scores.shape[1]], want_scores)


def test_scaling_exponents_are_log_log_slopes():
    from bench.perf.render import scaling_table
    from bench.perf.scaling import fit_exponents

    def point(n, stages):
        return {"size": n, "requests": n // 50, "clicks": 2 * n, "load_s": 1e-5 * n,
                "total_s": 3e-7 * n ** 1.5, "rss_loaded_mb": 0.01 * n, "peak_rss_mb": 5 * n ** 0.5,
                "bm25": {"stages": {"index": {"seconds": 2e-5 * n}, "recall": {"seconds": 0.5}}},
                "persrv": {"stages": stages}}
    pts = [point(n, {"recall": {"seconds": 1e-9 * n ** 2}}) for n in (10_000, 100_000, 1_000_000)]
    pts.append({"size": 3_000_000, "error": "killed"})  # a failed point is left out
    slopes = fit_exponents(pts)
    assert slopes["load s"] == pytest.approx(1.0) and slopes["bm25 index"] == pytest.approx(1.0)
    assert slopes["bm25 search"] == pytest.approx(0.0, abs=1e-9)
    assert slopes["persrv recall"] == pytest.approx(2.0)
    assert slopes["bm25 + persrv s"] == pytest.approx(1.5)
    assert slopes["peak RSS MB"] == pytest.approx(0.5)
    assert slopes["persrv rerank"] is None  # never measured
    table = scaling_table(pts)
    assert len(table) == 2 + 3 + 1 and table[2].startswith("| 10,000 | 200 | 20,000 |")
    assert "**2.00**" in table[-1] and "**1.50**" in table[-1]


def test_zipf_users_and_requests_grow_with_the_corpus_past_the_paper():
    from bench.perf.config import (DEFAULT_SCALING, PAPER_REQUESTS, PAPER_STICKERS,
                                   paper_density_requests, zipf_users)
    assert DEFAULT_SCALING[0] == 54_310 and DEFAULT_SCALING[-1] == 5_430_980
    assert zipf_users(1_000) == 100 and zipf_users(40_000) == 1_000
    assert zipf_users(PAPER_STICKERS) == PAPER_REQUESTS == paper_density_requests(PAPER_STICKERS)
    assert zipf_users(5_430_980) == paper_density_requests(5_430_980) == 125_680
    sizes = range(400_000, 700_000, 1_000)
    assert all(zipf_users(a) <= zipf_users(b) for a, b in zip(sizes, sizes[1:]))
