"""PerSRV end to end and its ablations (baselines/persrv.py) on a tiny hand-made TrainView."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from baselines.persrv import PerSRV
from baselines.persrv_variants import (PerSRVBM25, PerSRVNoOCR, PerSRVNoPersonalization,
                                       PerSRVNoUtility)
from bench.errors import ConfigError
from bench.retrieval import Request, TrainView
from bench.registry import describe_retriever, get_params, make_retriever


def style_vec(style: int, angle_deg: float, content: float) -> list[float]:
    """Style A (0) along e0, style B (1) along e1, plus a content part in dims 2-3."""
    v = np.zeros(4)
    v[style] = 1.0
    a = math.radians(angle_deg)
    v[2], v[3] = content * math.cos(a), content * math.sin(a)
    return v.tolist()


STICKERS = [  # sticker_id, ocr_text, description, style, angle, content
    ("cat-A", "cat", "a cat", 0, 45, 0.1),
    ("cat-B", "cat", "a cat", 1, 45, 0.1),
    ("sparkle", "sparkle sparkle", "a shiny star", 0, 10, 0.3),
    ("rainbow", None, "a rainbow over hills", 1, 20, 0.3),
    ("thanks", "", "a bowing person", 0, 30, 0.3),
    ("hello-1", "hello", "a waving hand", 1, 40, 0.3),
    ("hello-2", "hello", "a waving hand", 1, 50, 0.3),
    ("dog-A", "dog", "a dog", 0, 0, 0.3),
    ("sun-A", "sun", "a sun", 0, 90, 0.3),
    ("moon-A", "moon", "a moon", 0, 180, 0.3),
    ("tree-A", "tree", "a tree", 0, 270, 0.3),
    ("dog-B", "dog", "a dog", 1, 0, 0.3),
    ("sun-B", "sun", "a sun", 1, 90, 0.3),
    ("moon-B", "moon", "a moon", 1, 180, 0.3),
    ("tree-B", "tree", "a tree", 1, 270, 0.3),
]
TRAIN_CLICKS = [
    ("ua", "doggo", "dog-A", 1), ("ua", "sunny", "sun-A", 2), ("ua", "night", "moon-A", 3),
    ("ua", "forest", "tree-A", 4),
    ("ub", "doggo", "dog-B", 1), ("ub", "sunny", "sun-B", 2), ("ub", "night", "moon-B", 3),
    ("ub", "forest", "tree-B", 4),
    ("uc", "thanks a lot", "thanks", 1),
    ("ud", "greeting", "hello-2", 1), ("ue", "greeting", "hello-2", 2),
    ("uf", "greeting", "hello-2", 3),
]
TEST_CLICKS = [("ua", "congrats", "sparkle", 9)]  # never shown to the retriever


def make_view(embeddings=True, clicks=TRAIN_CLICKS) -> TrainView:
    stickers = pd.DataFrame({"sticker_id": [s[0] for s in STICKERS], "image": None,
                             "ocr_text": [s[1] for s in STICKERS],
                             "description": [s[2] for s in STICKERS],
                             "gt_style": [s[3] for s in STICKERS]})
    emb = np.array([style_vec(*s[3:]) for s in STICKERS], dtype=np.float32) if embeddings \
        else None
    return TrainView(stickers=stickers.drop(columns="gt_style"),
                     clicks=pd.DataFrame(clicks, columns=["user_id", "query", "sticker_id", "ts"]),
                     embeddings=emb)


def ids(retriever, user: str, query: str, k: int = 10) -> list[str]:
    return retriever.search([Request(user, query)], k).ids(Request(user, query))


def test_registered_variants_change_only_defaults():
    for name in ("persrv", "persrv-no-personalization", "persrv-no-utility", "persrv-no-ocr",
                 "persrv-no-queries", "persrv-no-description", "persrv-bm25"):
        r = make_retriever(name)
        assert isinstance(r, PerSRV) and r.name == name and describe_retriever(type(r))
    full = get_params(PerSRV())
    assert full["queries_boost"] == 0.5 and full["pool"] == 5000 and full["rerank_weight"] == 0.3
    diff = {k for k, v in get_params(PerSRVBM25()).items() if full[k] != v}
    assert diff == {"utility", "personalization"}
    assert {k for k, v in get_params(PerSRVNoOCR()).items() if full[k] != v} == {"ocr_boost"}
    assert get_params(make_retriever("persrv-no-ocr", {"n_clusters": 2}))["n_clusters"] == 2
    with pytest.raises(ConfigError, match="no parameter"):
        make_retriever("persrv", {"n_cluster": 2})


def test_field_ablations():
    view = make_view()
    full = make_retriever("persrv").fit(view)
    assert ids(full, "x", "sparkle")[:1] == ["sparkle"]
    assert ids(full, "x", "rainbow") == ["rainbow"]
    assert ids(full, "x", "thanks") == ["thanks"]            # only via a train-click query
    assert ids(make_retriever("persrv-no-ocr").fit(view), "x", "sparkle") == []
    assert ids(make_retriever("persrv-no-description").fit(view), "x", "rainbow") == []
    assert ids(make_retriever("persrv-no-queries").fit(view), "x", "thanks") == []
    assert ids(make_retriever("persrv-no-ocr").fit(view), "x", "rainbow") == ["rainbow"]


def test_historical_queries_come_from_train_clicks_only():
    view = make_view()
    full = PerSRV().fit(view)
    assert "congrats" not in " ".join(full.field_texts(view)["queries"])
    assert ids(full, "ua", "congrats") == []
    leaky = PerSRV().fit(make_view(clicks=TRAIN_CLICKS + TEST_CLICKS))
    assert ids(leaky, "ua", "congrats") == ["sparkle"]        # what the guard prevents


def test_utility_breaks_text_ties_toward_popular_stickers():
    view = make_view()
    # hello-1 and hello-2 have the same text; hello-2 has 3 train clicks (not under "hello")
    assert ids(PerSRVBM25().fit(view), "x", "hello")[:2] == ["hello-1", "hello-2"]
    assert ids(PerSRVNoPersonalization().fit(view), "x", "hello")[:2] == ["hello-2", "hello-1"]
    r = PerSRVNoPersonalization().fit(view)
    hit = dict(r.search([Request("x", "hello")], 5)[Request("x", "hello")])
    bm = dict(PerSRVBM25().fit(view).search([Request("x", "hello")], 5)[Request("x", "hello")])
    assert hit["hello-2"] - bm["hello-2"] == pytest.approx(math.sqrt(0.3 * 3), rel=1e-6)
    assert hit["hello-1"] - bm["hello-1"] == pytest.approx(math.sqrt(0.3 * 1.05), rel=1e-6)


def test_personalization_reorders_toward_the_users_style():
    view = make_view()
    plain = PerSRVNoPersonalization().fit(view)
    assert ids(plain, "ua", "cat")[:2] == ids(plain, "ub", "cat")[:2] == ["cat-A", "cat-B"]
    # one cluster per user over four style-A (or B) clicks covers the same-style cat sticker
    full = PerSRV(n_clusters=1).fit(view)
    assert ids(full, "ua", "cat")[:2] == ["cat-A", "cat-B"]
    assert ids(full, "ub", "cat")[:2] == ["cat-B", "cat-A"]
    assert ids(full, "new-user", "cat")[:2] == ["cat-A", "cat-B"]  # no history: not re-ranked
    got = dict(full.search([Request("ub", "cat")], 2)[Request("ub", "cat")])
    base = dict(plain.search([Request("ub", "cat")], 2)[Request("ub", "cat")])
    assert got["cat-A"] == pytest.approx(base["cat-A"])       # not covered: unchanged
    assert got["cat-B"] > base["cat-B"] * 1.29                   # ~ * (1 + 0.3 cos), cos ~ 1
    # k = 5 singleton clusters of radius 0 cover nothing new; min_radius widens them
    assert ids(PerSRV().fit(view), "ub", "cat")[:2] == ["cat-A", "cat-B"]
    assert ids(PerSRV(min_radius=0.1).fit(view), "ub", "cat")[:2] == ["cat-B", "cat-A"]
    assert ids(PerSRVNoUtility(n_clusters=1).fit(view), "ub", "cat")[:2] == ["cat-B", "cat-A"]


def test_no_embeddings_disables_personalization_with_a_warning(caplog):
    view = make_view(embeddings=False)
    with caplog.at_level(logging.WARNING):
        r = PerSRV(n_clusters=1).fit(view)
    assert "no image embeddings" in caplog.text and r.clusters_ is None
    assert ids(r, "ub", "cat")[:2] == ["cat-A", "cat-B"]


def test_recall_personalize_and_with_params_reuse_state():
    view = make_view()
    reqs = [Request("ua", "cat"), Request("ub", "cat"), Request("uc", "hello sun"),
            Request("zz", "dog")]
    base = PerSRV(n_clusters=5).fit(view)
    pool = base.recall(reqs)
    assert len(pool) == 3 and base.recall(reqs) is pool      # cached per query
    a, s = base.personalize(pool, reqs, 4)
    run = base.search(reqs, 4)
    for i, r in enumerate(reqs):
        assert run.ids(r) == [base.sticker_ids_[j] for j in a[i] if j >= 0]
    trial = base.with_params(n_clusters=1, rerank_weight=0.5)
    assert trial.index_ is base.index_ and trial._recall is base._recall
    assert trial.clusters_ is not base.clusters_ and base.n_clusters == 5
    assert trial.user_points_ is base.user_points_              # points not re-gathered
    fresh = PerSRV(n_clusters=1, rerank_weight=0.5).fit(view)
    for r in reqs:
        got, want = trial.search([r], 5)[r], fresh.search([r], 5)[r]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want])
    # personalize with explicit clusters/weight/mode, without refitting anything
    alt = base.personalize(pool, reqs, 4, clusters=trial.clusters_, weight=0.5)
    ref = trial.personalize(pool, reqs, 4)
    assert np.array_equal(alt[0], ref[0])
    # boosts change: the index weights are shared, only the query side changes
    no_ocr = base.with_params(ocr_boost=0.0)
    assert no_ocr.index_.weights_ is base.index_.weights_ and no_ocr._recall is not base._recall
    assert ids(no_ocr, "x", "sparkle") == []
    assert ids(base, "x", "sparkle")[:1] == ["sparkle"]      # the original is untouched
    back = PerSRVNoOCR().fit(view).with_params(ocr_boost=1.0)  # field not indexed: refit
    assert ids(back, "x", "sparkle")[:1] == ["sparkle"]
    util = base.with_params(utility=False)
    assert util.doc_boost_ is None and util.index_ is base.index_
    assert ids(util, "x", "hello")[:2] == ["hello-1", "hello-2"]
    stemmed = base.with_params(stem="english")
    assert stemmed.index_ is not base.index_
    with pytest.raises(ConfigError, match="no parameter .n_cluster.. Did you mean .n_clusters."):
        base.with_params(n_cluster=3)
    with pytest.raises(ConfigError, match="cluster_algorithm=.dbscan.: Input should be .kmeans., .hdbscan."):
        base.with_params(cluster_algorithm="dbscan")


def test_k_larger_than_pool_and_edge_requests():
    view = make_view()
    r = PerSRV(pool=2).fit(view)
    assert len(ids(r, "ua", "a", k=6)) == 6                  # pool grows to k
    assert len(ids(r, "ua", "a", k=2)) == 2
    assert ids(r, "ua", "") == [] and ids(r, "ua", "zebra") == []
    assert len(r.search([], 5)) == 0
    with pytest.raises(RuntimeError, match="fit"):
        PerSRV().search([Request("u", "q")], 5)


@pytest.mark.parametrize("algorithm", ["hdbscan", "agglomerative", "gmm"])
def test_other_cluster_algorithms_end_to_end(algorithm):
    r = PerSRV(cluster_algorithm=algorithm, n_clusters=1, min_radius=0.1).fit(make_view())
    assert ids(r, "ub", "cat")[:2] == ["cat-B", "cat-A"]


def test_no_searchable_field_returns_empty_rankings():
    """persrv-no-queries on a dataset whose only text is the historical queries: nothing to
    search, so every ranking is empty (not a crash)."""
    import pandas as pd

    from bench.retrieval import Request, TrainView

    from bench.registry import make_retriever
    stickers = pd.DataFrame({"sticker_id": ["a", "b", "c"], "image": [None] * 3})
    clicks = pd.DataFrame({"user_id": ["u", "u"], "query": ["cat", "dog"],
                           "sticker_id": ["a", "b"], "ts": [1, 2]})
    r = make_retriever("persrv-no-queries").fit(TrainView(stickers=stickers, clicks=clicks))
    run = r.search([Request("u", "cat"), Request("v", "dog")], 10)
    assert run[Request("u", "cat")] == [] and run[Request("v", "dog")] == []


def test_persrv_csv_extra_text_columns_are_not_searched_unless_asked(tmp_path):
    """persrv-csv keeps emotion/keyword/type/JSON fields as metadata: PerSRV's ``text`` field
    skips them by default (the reference queries only OCR, queries and description)."""
    import json

    from bench.data.builders import build_dataset
    from bench.retrieval import leak_safe_view
    src = tmp_path / "src"
    src.mkdir()
    (src / "clicks.csv").write_text("uid,query,docid\nu1,hello,d1\nu2,hello,d1\n",
                                    encoding="utf-8")
    rows = [{"docid": "d1", "paddleocr": "hello", "llava34b_image_desc": "a waving hand"},
            {"docid": "d2", "paddleocr": "", "llava34b_image_emotions": "angry",
             "type": "angry", "vec": {"angry": 1}}]
    (src / "st.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n",
                                  encoding="utf-8")
    ds = build_dataset("persrv-csv", src / "clicks.csv", tmp_path / "out",
                       {"stickers": str(src / "st.jsonl")})
    assert sorted(ds.meta["metadata_text_columns"]) == ["llava34b_image_emotions", "type", "vec"]
    view = leak_safe_view(ds.stickers, ds.interactions, meta=ds.meta)
    angry = Request("u1", "angry")
    default = PerSRV(personalization=False).fit(view)
    assert "text" not in default.index_.fields
    assert default.text_field_columns(view) == []
    assert default.search([angry], 5)[angry] == []          # nothing searchable says "angry"
    opted = PerSRV(personalization=False, text_columns="type").fit(view)
    assert opted.text_field_columns(view) == ["type"]
    assert [s for s, _ in opted.search([angry], 5)[angry]][:1] == ["d2"]
    every = PerSRV(personalization=False, text_columns="all").fit(view)
    assert sorted(every.text_field_columns(view)) == ["llava34b_image_emotions", "type", "vec"]
    with pytest.raises(ConfigError, match="text_columns names nope"):
        PerSRV(text_columns="nope").fit(view)
    # without the meta key (every other dataset) "auto" keeps today's behaviour: all columns
    plain = leak_safe_view(ds.stickers, ds.interactions, meta={})
    assert sorted(PerSRV().text_field_columns(plain)) == ["llava34b_image_emotions", "type", "vec"]


def test_persrv_reference_is_persrv_with_the_reference_parameters():
    from baselines.persrv_variants import REFERENCE_PARAMS
    ref = make_retriever("persrv-reference")
    assert isinstance(ref, PerSRV)
    diff = {k for k, v in get_params(ref).items() if get_params(PerSRV())[k] != v}
    assert diff == set(REFERENCE_PARAMS) == {"utility_components", "pool_per_k", "text_boost",
                                             "rerank_never_lower", "geometry"}
    view = make_view()
    ref.fit(view)
    assert ref.clusters_.mean.shape[1] == 4                 # standardised per user
    req = Request("ua", "dog")
    run = ref.search([req], 2)
    # pool = 5 x k = 10 recalled stickers; the user's own style (A) first, never lowered
    assert [s for s, _ in run[req]] == ["dog-A", "dog-B"]
    pool = ref.with_params(pool=10, pool_per_k=0).recall([req])
    assert pool.ids.shape[1] == 10
    base = dict(zip(*[[ref.sticker_ids_[i] for i in pool.ids[0]], pool.scores[0].tolist()]))
    assert all(score >= base[sid] - 1e-6 for sid, score in run[req])
