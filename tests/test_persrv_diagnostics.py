"""PerSRV's personalisation diagnostics (bench/persrv/diagnostics.py) and the persrv-style
variant (baselines/persrv_style.py) on a corpus the test builds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.registry import make_retriever
from bench.retrieval import Request, leak_safe_view


def view():
    ids = [f"s{i}" for i in range(6)]
    emb = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [0, 0.1, 0.9]],
                   dtype=np.float32)
    stickers = pd.DataFrame({"sticker_id": ids, "image": None,
                             "ocr_text": ["happy face"] * 6})
    clicks = pd.DataFrame({"user_id": ["u", "u", "v", "v", "v"],
                           "query": ["happy", "happy face", "happy", "face", "happy face"],
                           "sticker_id": ["s0", "s2", "s0", "s1", "s4"],
                           "ts": [1, 2, 1, 2, 3]})
    return leak_safe_view(stickers, clicks, embeddings=emb)


def test_persrv_diagnostics_show_re_finding():
    r = make_retriever("persrv", {"n_clusters": 5}).fit(view())
    d0 = r.diagnostics()
    assert d0["clustered_users"] == 2 and d0["clusters_per_user_mean"] == pytest.approx(2.5)
    # u: 2 stickers -> 2 singletons; v: 3 stickers, k=3 -> 3 singletons: all radius 0
    assert d0["singleton_cluster_share"] == 1.0 and d0["zero_radius_share"] == 1.0
    assert d0["radius_p90"] == 0.0 and d0["history_stickers_median"] == pytest.approx(2.5)
    assert "boosted_share" not in d0            # no search yet
    r.search([Request("u", "happy")], 6)
    d = r.diagnostics()
    # of the 6 returned stickers only u's own s0 and s2 are covered by a radius-0 cluster
    assert d["boosted_share"] == pytest.approx(2 / 6)
    assert d["boost_own_share"] == 1.0 and d["boost_new_share"] == 0.0
    r.search([Request("cold", "happy")], 6)     # users without clusters are not counted
    assert r.diagnostics()["boosted_share"] == pytest.approx(2 / 6)


def test_persrv_style_boosts_every_candidate_and_mostly_new_ones():
    r = make_retriever("persrv-style", {}).fit(view())
    assert (r.min_radius, r.rerank_weight) == (2.0, 1.0)
    run = r.search([Request("u", "happy")], 6)
    d = r.diagnostics()
    assert d["radius_p50"] == 2.0 and d["zero_radius_share"] == 0.0
    assert d["boosted_share"] == 1.0 and d["boost_own_share"] == pytest.approx(2 / 6)
    ranked = [sid for sid, _ in run[Request("u", "happy")]]
    # equal BM25 scores: u's styles (x: s0, s1; y: s2, s3) rank above the z style (s4, s5)
    assert set(ranked[:4]) == {"s0", "s1", "s2", "s3"}
    assert make_retriever("persrv-no-personalization", {}).fit(view()).diagnostics() == {}
