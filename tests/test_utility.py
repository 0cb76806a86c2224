"""Sticker utility from train clicks (bench/persrv/utility.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.persrv.utility import (UtilityConfig, click_counts, parse_components, utility_boost,
                                  utility_values)

CLICKS = pd.DataFrame(
    [("u1", "hi", "a", 1), ("u1", "hi", "a", 2), ("u2", "hello", "a", 3), ("u3", "hi", "a", 4),
     ("u1", "bye", "b", 5), ("u1", "see you", "b", 6), ("u2", "bye", "c", 7)],
    columns=["user_id", "query", "sticker_id", "ts"])
IDS = ["a", "b", "c", "d"]  # d never clicked


def test_click_counts():
    t = click_counts(CLICKS, IDS)
    assert t["popularity"].tolist()[:3] == [4, 2, 1]
    assert t["users"].tolist()[:3] == [3, 1, 1]
    assert t["queries"].tolist()[:3] == [2, 2, 1]
    assert t.loc["d"].isna().all()
    assert click_counts(CLICKS.iloc[:0], IDS).isna().all().all()


def test_components_combine_and_normalize():
    v = lambda **kw: utility_values(CLICKS, IDS, UtilityConfig(**kw))  # noqa: E731
    assert v()[:3].tolist() == [4, 2, 1] and math.isnan(v()[3])
    assert v(components=["users"])[:3].tolist() == [3, 1, 1]
    assert v(components="queries")[:3].tolist() == [2, 2, 1]
    both = ["popularity", "users"]
    assert v(components=both)[:3].tolist() == [7, 3, 2]
    assert v(components=both, combine="mean")[:3].tolist() == [3.5, 1.5, 1]
    assert v(components=both, combine="product")[:3].tolist() == [12, 2, 1]
    assert v(components="popularity,users,queries", combine="max")[:3].tolist() == [4, 2, 1]
    assert np.allclose(v(normalize="log1p")[:3], np.log1p([4, 2, 1]))
    assert np.allclose(v(normalize="minmax")[:3], [1.0, 1 / 3, 0.0])
    assert all(math.isnan(v(components=both, combine=c)[3]) for c in ("sum", "product", "max"))


def test_boost_is_elasticsearch_field_value_factor():
    cfg = UtilityConfig()
    values = utility_values(CLICKS, IDS, cfg)
    boost = utility_boost(values, cfg)
    # DESIGN §7: sqrt(0.3 * u), u = 1.05 for a sticker without a value
    assert np.allclose(boost, [math.sqrt(0.3 * 4), math.sqrt(0.3 * 2), math.sqrt(0.3 * 1),
                               math.sqrt(0.3 * 1.05)])
    u = np.array([1.0, 9.0, np.nan])
    f = lambda m, **kw: utility_boost(u, UtilityConfig(modifier=m, factor=2.0, **kw))  # noqa: E731
    assert np.allclose(f("none"), [2, 18, 2.1])
    assert np.allclose(f("square"), [4, 324, 4.41])
    assert np.allclose(f("log1p"), np.log10([3, 19, 3.1]))     # Elasticsearch: log10(x + 1)
    assert np.allclose(f("log2p"), np.log10([4, 20, 4.1]))
    assert np.allclose(f("ln1p"), np.log([3, 19, 3.1]))
    assert np.allclose(f("ln2p"), np.log([4, 20, 4.1]))
    assert np.allclose(f("ln"), np.log([2, 18, 2.1]))
    assert np.allclose(f("reciprocal"), [0.5, 1 / 18, 1 / 2.1])
    assert np.allclose(f("sqrt", missing=0.0), np.sqrt([2, 18, 0]))


def test_boost_errors_like_elasticsearch():
    with pytest.raises(ValueError, match="negative.*consider ln1p or ln2p"):
        utility_boost(np.array([1.0]), UtilityConfig(modifier="ln"))  # ln(0.3) < 0
    with pytest.raises(ValueError, match="missing is None"):
        utility_boost(np.array([np.nan]), UtilityConfig(missing=None))
    with pytest.raises(ValueError, match="modifier"):
        UtilityConfig(modifier="cube")
    with pytest.raises(ValueError, match="unknown utility component"):
        UtilityConfig(components=["likes"])
    with pytest.raises(ValueError, match="combine"):
        UtilityConfig(combine="median")


def test_component_aliases():
    assert parse_components("clicks+cross_user, query_adaptability") == \
        ("popularity", "users", "queries")
    assert UtilityConfig(components=["popularity", "popularity"]).components == ("popularity",)


def test_precomputed_columns_source():
    stickers = pd.DataFrame({"sticker_id": IDS, "clicks_per_doc": [10, None, 0, 5],
                             "unique_users_per_doc": [3, 1, None, 2],
                             "versatility": [1, 1, 1, None]})
    cfg = UtilityConfig(source="columns")
    got = utility_values(None, ["d", "a", "b", "zz"], cfg, stickers=stickers)
    assert got[:2].tolist() == [5, 10] and math.isnan(got[2]) and math.isnan(got[3])
    both = UtilityConfig(source="columns", components="popularity,users", combine="sum")
    # a component missing for one sticker is skipped; missing all -> NaN
    assert utility_values(None, IDS, both, stickers=stickers)[:3].tolist() == [13, 1, 0]
    with pytest.raises(ValueError, match="no column"):
        utility_values(None, IDS, cfg, stickers=stickers.drop(columns="clicks_per_doc"))
    with pytest.raises(ValueError, match="needs the stickers"):
        utility_values(None, IDS, cfg)
