"""Retriever parameters declared once (bench/params.py, issue 25): for every registered retriever
and each of its declared parameters, ``with_params(p=v)`` on a fitted retriever ranks exactly as a
fresh ``fit`` with ``p=v``; the alternative value ``v`` is derived from the declaration (type,
allowed values, range), so a parameter added later is covered without editing this file."""

from __future__ import annotations

import math
import typing
from typing import Any

import annotated_types
import numpy as np
import pytest

from bench.params import (Configurable, RetrieverParams, param, supports_with_params,
                          validate_params, with_defaults)
from bench.registry import declared_params, make_retriever, registry
from bench.retrieval import Request, leak_safe_view

from conftest import make_tiny_frames

#: Registered retrievers another issue converts to bench.params (issue 29: dense-clip).
PENDING = {"dense-clip"}

#: Values a declaration alone cannot suggest (free strings, or a value that needs this data):
#: the first candidate other than the retriever's default is used.
OVERRIDES: dict[str, list[Any]] = {
    "fields": [["ocr_text", "queries"]],     # a list instead of "all"
    "stem": ["english"],
    "text_columns": ["title", "all"],        # one named column instead of "auto"
    "utility_components": ["queries", "popularity,users"],
    "model": [],                              # the default model's own directory (set below)
    "device": ["cpu"],
    "n_clusters": [2, 3],                     # users here click few distinct stickers
    "pool": [3, 4],                           # a pool narrower than k
    "hdbscan_min_samples": [2],
    "inputs": [["popularity", "query-lookup", "user-history"]],   # fusion: other inputs
    "weights": [[1.0, 2.0, 1.0]],                                 # fusion: one per input
    "drop_features": [["history"]],                               # ltr: a feature group
    "dense_model": [],                                            # ltr: as "model" (set below)
}


def alternative(model: type[RetrieverParams], name: str, default: Any) -> Any:
    """A valid value other than ``default`` derived from the declaration of ``name``."""
    candidates = [v for v in OVERRIDES.get(name, ()) if v != default]
    if candidates:
        return candidates[0]
    info = model.model_fields[name]
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is typing.Literal:
        return next(v for v in typing.get_args(ann) if v != default)
    kinds = set(args) if args else {ann}
    bound = {kind: getattr(m, kind) for m in info.metadata for kind in ("ge", "gt", "le", "lt")
             if isinstance(m, getattr(annotated_types, kind.capitalize()))}
    lo, hi = bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt"))
    if ann is bool:
        return not default
    if int in kinds:
        base = default if default is not None else (lo if lo is not None else 1)
        value = base + 1
        return value if hi is None or value <= hi else base - 1
    if float in kinds:
        value = default / 2 if default else 0.5
        if lo is not None:
            value = max(value, lo)
        if hi is not None:
            value = min(value, hi)
        assert value != default and math.isfinite(value)
        return value
    raise AssertionError(f"{model.__qualname__}.{name}: no alternative value derivable from "
                         f"{ann!r}; add one to OVERRIDES")


def make_train_view():
    """15 stickers with every text field PerSRV and bm25 read, utility columns, embeddings."""
    stickers, clicks = make_tiny_frames()
    emb = np.stack([np.asarray(e, dtype=np.float32) for e in stickers["embedding"]])
    stickers = stickers.drop(columns=["embedding"])
    stickers["ocr_text"] = stickers["text"]
    stickers["description"] = [f"a {sid.split('-')[1]} drawing" for sid in stickers["sticker_id"]]
    stickers["keywords"] = [sid.split("-")[0] for sid in stickers["sticker_id"]]
    stickers["title"] = [sid.replace("-", " ") for sid in stickers["sticker_id"]]
    rng = np.random.default_rng(1)
    for col in ("clicks_per_doc", "unique_users_per_doc", "versatility"):
        stickers[col] = rng.integers(1, 20, len(stickers)).astype(float)
    return leak_safe_view(stickers, clicks, embeddings=emb, meta={"fingerprint": "params-test"})


def ranked(retriever, requests, k: int = 8):
    run = retriever.search(requests, k)
    return [[sid for sid, _ in run[r]] for r in requests], \
        [[score for _, score in run[r]] for r in requests]


@pytest.fixture(scope="module")
def view():
    return make_train_view()


@pytest.fixture(scope="module")
def requests_(view):
    pairs = view.clicks[["user_id", "query"]].drop_duplicates().itertuples(index=False)
    reqs = [Request(str(u), str(q)) for u, q in pairs]
    return reqs + [Request("stranger", "cat"), Request("u0", "no such words")]


def test_every_builtin_retriever_declares_its_parameters():
    missing = [n for n, cls in registry().items()
               if n not in PENDING and cls.__module__.startswith("baselines")
               and declared_params(cls) is None]
    assert not missing, f"retrievers without a Params declaration: {missing}"
    assert supports_with_params(registry()["persrv"])
    assert supports_with_params(make_retriever("bm25"))

    class Legacy:
        def __init__(self, a: int = 1):
            self.a = a
    assert not supports_with_params(Legacy)


@pytest.mark.parametrize("name", [n for n in registry() if n not in PENDING])
def test_with_params_ranks_as_a_fresh_fit_for_every_parameter(name, view, requests_):
    cls = registry()[name]
    model = declared_params(cls)
    if model is None or not cls.__module__.startswith("baselines"):
        pytest.skip(f"{name} is a plugin registered by another test, not a built-in retriever")
    if name in ("dense-text", "ltr"):
        pytest.importorskip("sentence_transformers")
        from baselines.dense_text import resolve_model
        try:
            OVERRIDES["model"] = OVERRIDES["dense_model"] = [resolve_model("default")[0]]
        except Exception as exc:  # the bundled model package is not installed
            pytest.skip(str(exc))
    base = make_retriever(name).fit(view)
    before = ranked(base, requests_)
    checked = []
    for pname, default in model.defaults().items():
        value = alternative(model, pname, default)
        validate_params(cls, {pname: value})  # the derived value is itself valid
        got = base.with_params(**{pname: value})
        want = make_retriever(name, {pname: value}).fit(view)
        assert got.get_params()[pname] == value
        g_ids, g_scores = ranked(got, requests_)
        w_ids, w_scores = ranked(want, requests_)
        assert g_ids == w_ids, f"{name}: with_params({pname}={value!r}) ranks differently"
        for g, w in zip(g_scores, w_scores):
            assert g == pytest.approx(w, rel=1e-5, abs=1e-6), (name, pname, value)
        assert ranked(base, requests_) == before, f"{name}: with_params({pname}) changed the base"
        checked.append(pname)
    assert checked == model.names()


def test_refit_groups_come_from_the_declaration():
    from baselines.persrv import PerSRV
    groups = {g: PerSRV.Params.in_group(g) for g in PerSRV.Params.REFIT_GROUPS}
    assert {"rerank_weight", "rerank_mode", "rerank_never_lower", "pool_per_k"} <= groups["search"]
    assert {"n_clusters", "seed", "geometry", "personalization"} <= groups["clusters"]
    assert {"k1", "b", "stem", "chinese", "text_columns"} <= groups["index"]
    assert groups["threads"] == {"n_threads"}
    assert set().union(*groups.values()) == set(PerSRV.Params.model_fields)
    with pytest.raises(TypeError, match="refit group 'nowhere'"):
        class Bad(RetrieverParams):
            x: int = param(1, refit="nowhere")


def test_variants_change_defaults_only():
    from baselines.persrv import PerSRV
    ref = registry()["persrv-reference"]
    assert ref.Params.defaults()["geometry"] == "standardized"
    assert ref.Params.defaults()["pool_per_k"] == 5
    assert PerSRV.Params.defaults()["geometry"] == "cosine"
    for n in PerSRV.Params.model_fields:
        assert ref.Params.refit_group(n) == PerSRV.Params.refit_group(n)
    with pytest.raises(TypeError, match="no parameter"):
        with_defaults(PerSRV.Params, n_cluster=3)
    from bench.persrv.clustering import DEFAULT_N_CLUSTERS, ClusterConfig
    assert PerSRV.Params.defaults()["n_clusters"] == ClusterConfig().n_clusters \
        == DEFAULT_N_CLUSTERS


def test_generic_with_params_refits_on_the_same_view(view, requests_):
    """A retriever without its own with_params (Configurable's) refits on the remembered view
    for a ``fit`` parameter and shares the fitted state for a ``search`` parameter."""
    bm25 = make_retriever("bm25").fit(view)
    assert isinstance(bm25, Configurable) and bm25.fitted_view() is view
    exhaustive = bm25.with_params(scoring="exhaustive")       # search group: state shared
    assert exhaustive.index_ is bm25.index_
    refit = bm25.with_params(k1=0.5)                            # fit group: refitted
    assert refit.index_ is not bm25.index_ and refit.fitted_view() is view
    assert bm25.with_params(k1=1.2) is bm25                     # nothing changed
    unfitted = make_retriever("bm25").with_params(k1=0.5)
    assert unfitted.fitted_view() is None and not hasattr(unfitted, "index_")


def test_n_threads_reaches_the_standardized_rerank(view, requests_, monkeypatch):
    """The slip of issue 25: persrv-reference ignored n_threads."""
    import baselines.persrv as persrv_mod
    seen = []
    real = persrv_mod.rerank_standardized

    def spy(*args, **kwargs):
        seen.append(kwargs.get("n_threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(persrv_mod, "rerank_standardized", spy)
    make_retriever("persrv-reference", {"n_threads": 3}).fit(view).search(requests_, 5)
    assert seen and set(seen) == {3}
