"""The seeded user simulator (bench/data/simulate.py)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from bench.data.simulate import SimulatorConfig, simulate_clicks, simulator_config
from bench.data.splits import click_groups, split_interactions
from bench.errors import ConfigError, DatasetError

STYLES = ["flat", "line", "3d"]
TOPICS = {f"t{t}": [f"t{t} q{j}" for j in range(5)] for t in range(6)}


def corpus(per_cell: int = 5):
    rows = [{"sticker_id": f"{t}-{s}-{i}", "gt_style": s, "gt_topic": t}
            for t in TOPICS for s in STYLES for i in range(per_cell)]
    items = pd.DataFrame(rows)
    return items, {r["sticker_id"]: TOPICS[r["gt_topic"]] for r in rows}


def simulate(**kw):
    items, queries = corpus()
    cfg = SimulatorConfig(**{"n_users": 200, **kw})
    return items, simulate_clicks(items, queries, cfg)


def test_columns_types_and_user_count():
    items, clicks = simulate()
    assert list(clicks.columns) == ["user_id", "query", "sticker_id", "ts"]
    assert clicks["ts"].dtype == np.int64
    assert clicks["user_id"].nunique() == 200
    assert set(clicks["sticker_id"]) <= set(items["sticker_id"])
    # each query is one of the clicked item's own queries
    topic = clicks["sticker_id"].str.split("-").str[0]
    assert all(q.startswith(t + " ") for q, t in zip(clicks["query"], topic))
    # time strictly increases within each user
    assert (clicks.groupby("user_id")["ts"].diff().dropna() > 0).all()
    stats = clicks.attrs["simulator_stats"]
    assert stats["clicks"] == len(clicks) and stats["users"] == 200


def test_same_seed_same_clicks_other_seed_differs():
    _, a = simulate(seed=3)
    _, b = simulate(seed=3)
    _, c = simulate(seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_every_user_has_enough_click_groups_for_splits():
    _, clicks = simulate(min_groups_per_user=3, groups_per_user=5)
    df = clicks.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    groups = pd.Series(click_groups(df)).groupby(df["user_id"]).max() + 1
    assert (groups >= 3).mean() > 0.97  # only unresolved same-query neighbours may merge
    splits = split_interactions(clicks)
    assert splits.test["user_id"].nunique() >= 0.97 * 200
    assert splits.validation["user_id"].nunique() >= 0.97 * 200


def test_heldout_queries_never_in_history_but_in_test():
    _, clicks = simulate(heldout_query_fraction=0.3, heldout_tail_groups=2)
    held = set(clicks.attrs["heldout_queries"])
    assert len(held) == 9  # 30% of 30 distinct strings
    assert clicks.attrs["simulator_stats"]["history_fallback_groups"] == 0
    splits = split_interactions(clicks)
    assert not held & set(splits.train["query"])
    assert splits.test["query"].isin(held).any()
    unseen = ~splits.test["query"].isin(set(splits.train["query"]))
    assert 0 < unseen.mean() < 1


def test_style_preference_follows_concentration():
    def top_style_share(alpha):
        items, clicks = simulate(style_concentration=alpha, style_noise=0.0, n_users=300)
        style = clicks["sticker_id"].map(dict(zip(items["sticker_id"], items["gt_style"])))
        return style.groupby(clicks["user_id"]).agg(
            lambda s: s.value_counts(normalize=True).iloc[0]).mean()
    concentrated, diffuse = top_style_share(0.05), top_style_share(100.0)
    assert concentrated > 0.9
    assert diffuse < 0.65
    assert concentrated > diffuse + 0.3


def test_multi_click_groups_share_topic_and_query():
    _, clicks = simulate(multi_click_prob=1.0, max_clicks_per_group=3, repeat_query_prob=0.0)
    df = clicks.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    df["group"] = click_groups(df)
    per_group = df.groupby(["user_id", "group"])
    sizes = per_group["sticker_id"].nunique()
    assert sizes.max() >= 2 and sizes.max() <= 3
    assert (per_group["sticker_id"].size() == sizes).all()  # distinct stickers in a group
    topics = per_group["sticker_id"].agg(lambda s: s.str.split("-").str[0].nunique())
    assert (topics == 1).all()
    test = split_interactions(clicks).test
    assert (test.groupby(["user_id", "query"])["sticker_id"].nunique() > 1).any()


def test_single_click_groups_when_multi_click_off():
    _, clicks = simulate(multi_click_prob=0.0)
    stats = clicks.attrs["simulator_stats"]
    assert len(clicks) == stats["groups"] and stats["multi_click_groups"] == 0


def test_repeats_reuse_earlier_query_and_sticker():
    def reuse(p):
        _, clicks = simulate(repeat_query_prob=p, multi_click_prob=0.0, seed=1)
        return clicks.duplicated(["user_id", "query", "sticker_id"]).mean()
    assert reuse(0.6) > reuse(0.0) + 0.2


def test_zipf_popularity_concentrates_clicks():
    def top_share(s):
        _, clicks = simulate(popularity_zipf=s, style_concentration=50.0, topics_per_user=6)
        return clicks["sticker_id"].value_counts(normalize=True).iloc[0]
    assert top_share(2.0) > 3 * top_share(0.0)


def test_items_without_queries_are_never_clicked():
    items, queries = corpus()
    silent = set(items["sticker_id"][::2])
    queries = {k: ([] if k in silent else v) for k, v in queries.items()}
    clicks = simulate_clicks(items, queries, SimulatorConfig(n_users=50))
    assert not set(clicks["sticker_id"]) & silent
    assert clicks.attrs["simulator_stats"]["items_without_queries"] == len(silent)


def test_without_topic_column():
    items, queries = corpus()
    clicks = simulate_clicks(items.drop(columns="gt_topic"), queries,
                             SimulatorConfig(n_users=20, topic_col=None))
    assert clicks["user_id"].nunique() == 20


def test_invalid_config_names_the_knob():
    with pytest.raises(ConfigError, match="style_concentration"):
        SimulatorConfig(style_concentration=0).validate()
    with pytest.raises(ConfigError, match="groups_per_user"):
        SimulatorConfig(groups_per_user=2, min_groups_per_user=3).validate()
    with pytest.raises(ConfigError, match="unknown simulator parameter.*bogus"):
        simulator_config({"bogus": 1})
    assert simulator_config({"n_users": 5}, n_users=7, seed=2).n_users == 5


def test_missing_columns_and_no_queries_raise():
    items, queries = corpus()
    with pytest.raises(DatasetError, match="gt_pack"):
        simulate_clicks(items, queries, SimulatorConfig(group_col="gt_pack"))
    with pytest.raises(DatasetError, match="no sticker has any query"):
        simulate_clicks(items, {}, SimulatorConfig(n_users=3))


def test_paper_scale_users_in_seconds():
    n = 100_000
    rng = np.random.default_rng(0)
    topic = rng.integers(40, size=n)
    qlists = [[f"c{t} q{j}" for j in range(5)] for t in range(40)]
    items = pd.DataFrame({"sticker_id": [f"s{i}" for i in range(n)],
                          "gt_style": rng.integers(6, size=n).astype(str), "gt_topic": topic})
    queries = dict(zip(items["sticker_id"], (qlists[t] for t in topic)))
    start = time.perf_counter()
    clicks = simulate_clicks(items, queries, SimulatorConfig(n_users=12_568))
    assert time.perf_counter() - start < 15
    assert clicks["user_id"].nunique() == 12_568
    assert 80_000 < len(clicks) < 200_000


def test_user_chunks_and_fresh_query_lists(monkeypatch):
    """Many user blocks give the same kind of output; a mapping that builds a new list per
    lookup (so id() could be reused) still gives every item its own queries."""
    import bench.data.simulate as sim

    class Fresh(dict):
        def get(self, key, default=None):
            value = super().get(key, default)
            return list(value) if value is not None else None

    items, queries = corpus()
    monkeypatch.setattr(sim, "_CHUNK_CELLS", 7)  # 2 users per block
    clicks = simulate_clicks(items, Fresh(queries), SimulatorConfig(n_users=9, seed=5))
    assert clicks["user_id"].nunique() == 9
    topic = clicks["sticker_id"].str.split("-").str[0]
    assert all(q.startswith(t + " ") for q, t in zip(clicks["query"], topic))


def quickstart_clicks(seed: int = 0):
    """The quickstart's users (experiments/quickstart.yaml: 1,000 synthetic stickers, 300
    simulated users) without rendering images."""
    from bench.data.synthetic import synthetic_stickers, vocabulary
    stickers, _ = synthetic_stickers(1000, "en", 6, seed)
    vocab = vocabulary("en")
    queries = dict(zip(stickers["sticker_id"], (vocab[c][1] for c in stickers["gt_topic"])))
    cfg = simulator_config({"n_users": 300}, seed=seed, group_col="gt_style", topic_col="gt_topic")
    return simulate_clicks(stickers, queries, cfg), cfg


def test_heldout_queries_are_recovered_from_the_clicks():
    from bench.data.simulate import heldout_queries_of
    clicks, cfg = quickstart_clicks()
    used = set(clicks.attrs["heldout_queries"]) & set(clicks["query"])
    found = heldout_queries_of(clicks, cfg.to_dict())
    # every used held-out string, plus open strings that happen to occur only in tail groups
    assert used <= found and len(found - used) <= 3
    assert heldout_queries_of(clicks, None) == frozenset()
    assert heldout_queries_of(clicks, {**cfg.to_dict(), "heldout_query_fraction": 0}) == frozenset()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unseen_query_share_of_test_equals_validation_on_quickstart(seed, tmp_path):
    """The quickstart's dataset (experiments/quickstart.yaml, without images) through the
    builder, dataset.json and the default protocol: test's unseen-query share is at least
    heldout_query_fraction and within 5 points of validation's; no held-out query in a history."""
    from bench.data.builders import build_dataset
    from bench.data.protocols import protocol_splits
    from bench.data.splits import check_no_leak
    ds = build_dataset("synthetic", None, tmp_path, {"n_stickers": 1000, "n_users": 300,
                                                     "seed": seed, "images": False})
    splits = protocol_splits(ds)
    report = splits.split_report()
    val, test = report["validation_unseen_query_share"], report["test_unseen_query_share"]
    fraction = ds.meta["simulator"]["heldout_query_fraction"]
    assert fraction == 0.2 and report["test_requests"] == report["validation_requests"] == 300
    assert test >= fraction and val >= fraction, report
    assert abs(val - test) <= 0.05, report
    assert ds.meta["simulator"]["stats"]["heldout_tail_groups_drawn"] == 2 * 60  # ceil(0.2 x 300)
    assert check_no_leak(splits, "test").empty and check_no_leak(splits, "validation").empty
    assert not set(splits.history_for("test")["query"]) & splits.heldout_queries
    assert not set(splits.history_for("validation")["query"]) & splits.heldout_queries


def tail_positions(clicks: pd.DataFrame) -> pd.DataFrame:
    """One row per click-group: user_id, query, first sticker, position from the end (0 = last)."""
    df = clicks.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    df["group"] = click_groups(df)
    groups = df.groupby(["user_id", "group"], sort=False).first().reset_index()
    groups["from_end"] = groups.groupby("user_id")["group"].transform("max") - groups["group"]
    return groups


@pytest.mark.parametrize("share", [0.0, 0.35, 1.0])
def test_heldout_request_share_sets_held_out_groups_per_tail_position(share):
    _, clicks = simulate(heldout_query_fraction=0.3, heldout_request_share=share,
                         repeat_query_prob=0.5)
    held = set(clicks.attrs["heldout_queries"])
    groups = tail_positions(clicks)
    for pos in (0, 1):  # test, validation: ceil(share x 200 users) groups each
        at = groups[groups["from_end"] == pos]
        assert len(at) == 200 and at["query"].isin(held).sum() == int(np.ceil(share * 200))
    history = groups[groups["from_end"] >= 2]
    assert not history["query"].isin(held).any()
    # a held-out tail group never repeats an earlier group of its user
    tail_held = groups[(groups["from_end"] < 2) & groups["query"].isin(held)]
    earlier = history.set_index(["user_id", "query"]).index
    assert not tail_held.set_index(["user_id", "query"]).index.isin(earlier).any()
    assert clicks.attrs["simulator_stats"]["heldout_tail_groups_drawn"] == \
        2 * int(np.ceil(share * 200))


def test_heldout_request_share_defaults_to_the_fraction_and_is_validated():
    assert SimulatorConfig(heldout_query_fraction=0.3).request_share == 0.3
    assert SimulatorConfig(heldout_request_share=0.5).request_share == 0.5
    assert simulator_config({"heldout_request_share": "0.4"}).heldout_request_share == 0.4
    assert simulator_config({"heldout_request_share": "none"}).heldout_request_share is None
    with pytest.raises(ConfigError, match="heldout_request_share"):
        simulator_config({"heldout_request_share": 1.5})
    with pytest.raises(ConfigError, match="heldout_request_share"):
        simulator_config({"heldout_request_share": "lots"})


def test_held_out_groups_on_a_corpus_where_few_items_have_held_out_queries():
    """2 of the 30 strings are held out (seed 0: t0 q1, t3 q2), so most tail groups first land on
    an item without one; each held-out tail group still gets one (redraws, then items with one by
    popularity) and never merges with the group before it (validation and test then differ)."""
    items, queries = corpus()
    cfg = SimulatorConfig(n_users=200, heldout_query_fraction=2 / 30, heldout_request_share=0.3)
    clicks = simulate_clicks(items, queries, cfg)
    held = set(clicks.attrs["heldout_queries"])
    assert held == {"t0 q1", "t3 q2"}
    groups = tail_positions(clicks)
    stats = clicks.attrs["simulator_stats"]
    for pos in (0, 1):
        at = groups[groups["from_end"] == pos]
        assert at["query"].isin(held).sum() == 60  # ceil(0.3 x 200)
    assert stats["merged_groups"] == 0 and stats["heldout_item_redraws"] > 0
    assert stats["heldout_popularity_fallbacks"] > 0
    held_topics = {q.split()[0] for q in held}
    tail_held = groups[(groups["from_end"] < 2) & groups["query"].isin(held)]
    assert set(tail_held["sticker_id"].str.split("-").str[0]) <= held_topics


# ------------------------------------------------------------------ content overlap (issue 23.2)

def test_overlap_rates_own_and_other_on_a_known_corpus():
    from bench.data.content_overlap import overlap_rates
    queries = [["happy dog", "sleeping"], ["sad cat"], ["the end"]]
    texts = ["a happy face; sleeps", "a dog", "nothing here"]
    r = overlap_rates(queries, texts)
    # own: "happy dog" (happy), "sleeping" (stem sleep = sleeps), "sad cat" no, "the end" no
    assert r["n"] == 4 and r["own"] == pytest.approx(2 / 4)
    # other: "happy dog" overlaps item 1 ("dog") = 1 of 2 others; the rest none
    assert r["other"] == pytest.approx((1 / 2) / 4)
    # leave-one-out: each query against the item's other queries; a lone query is skipped
    loo = overlap_rates([["happy dog", "happy cat", "sad"], ["lonely"]])
    assert loo["n"] == 3 and loo["own"] == pytest.approx(2 / 3)


def test_plant_overlap_hits_the_target_and_adversarial_changes_nothing():
    from bench.data.content_overlap import overlap_rates, plant_overlap
    queries = [[f"word{i} thing{i}", f"other{i}"] for i in range(400)]
    texts = [f"item {i}" for i in range(400)]
    same, stats = plant_overlap(texts, queries, None, seed=0)
    assert same == texts and stats["natural"] == 0.0
    out, stats = plant_overlap(texts, queries, 0.5, seed=0)
    assert stats["expected"] == pytest.approx(0.5)
    assert overlap_rates(queries, out)["own"] == pytest.approx(stats["achieved"], abs=1e-4)
    assert abs(stats["achieved"] - 0.5) < 0.05
    assert plant_overlap(texts, queries, 0.5, seed=0)[0] == out      # seeded
    assert plant_overlap(texts, queries, 0.5, seed=1)[0] != out


def test_builders_take_content_overlap_and_a_yaml_number_for_heldout_share(tmp_path):
    from bench.data.builders import build_dataset
    from bench.data.content_overlap import REAL_CONTENT_OVERLAP
    params = {"n_stickers": 300, "images": False, "n_users": 100}
    ds = build_dataset("synthetic", None, tmp_path / "cal", params)
    ov = ds.meta["content_overlap"]
    assert ov["target"] == REAL_CONTENT_OVERLAP and ov["natural"] == 0.0
    assert abs(ov["achieved"] - REAL_CONTENT_OVERLAP) < 0.06
    assert "description" in ds.stickers.columns
    adv = build_dataset("synthetic", None, tmp_path / "adv",
                        {**params, "content_overlap": "adversarial",
                         "heldout_request_share": 0.0})   # a YAML number, refused before
    assert "description" not in adv.stickers.columns
    assert adv.meta["simulator"]["heldout_request_share"] == 0.0
    strong = build_dataset("synthetic", None, tmp_path / "strong",
                           {**params, "content_overlap": 0.9})
    assert strong.meta["content_overlap"]["achieved"] > 0.85
    with pytest.raises(ConfigError, match="content_overlap"):
        build_dataset("synthetic", None, tmp_path / "bad", {**params, "content_overlap": "lots"})
