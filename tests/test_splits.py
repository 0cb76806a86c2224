"""bench.data.splits: chronological per-user splits, click-groups, requests, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.data.splits import SplitConfig, click_groups, make_requests, split_interactions
from bench.retrieval import Request


def frame(rows) -> pd.DataFrame:
    """rows: (user_id, ts, query, sticker_id)."""
    return pd.DataFrame(rows, columns=["user_id", "ts", "query", "sticker_id"])[
        ["user_id", "query", "sticker_id", "ts"]]


# user a: groups [hi hi] [cat] [dog dog] [hi]; b: two groups; c: exactly three groups
ROWS = [
    ("a", 6, "hi", "s6"), ("a", 1, "hi", "s1"), ("a", 4, "dog", "s4"), ("a", 3, "cat", "s3"),
    ("a", 2, "hi", "s2"), ("a", 5, "dog", "s5"),
    ("b", 1, "x", "s1"), ("b", 2, "y", "s2"),
    ("c", 10, "p", "s1"), ("c", 20, "q", "s2"), ("c", 30, "r", "s3"),
]


def clicks_of(df: pd.DataFrame) -> list[tuple]:
    return sorted(df[["user_id", "ts", "query", "sticker_id"]].itertuples(index=False, name=None))


def test_click_groups_are_runs_of_the_same_query():
    df = frame(ROWS).sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    groups = click_groups(df)
    assert groups.tolist() == [0, 0, 1, 2, 2, 3,  # a: hi hi | cat | dog dog | hi
                               0, 1,              # b
                               0, 1, 2]           # c


def test_chronological_split_last_group_test_previous_validation():
    sp = split_interactions(frame(ROWS))
    assert clicks_of(sp.test) == [("a", 6, "hi", "s6"), ("c", 30, "r", "s3")]
    assert clicks_of(sp.validation) == [("a", 4, "dog", "s4"), ("a", 5, "dog", "s5"),
                                        ("c", 20, "q", "s2")]
    assert clicks_of(sp.train) == [("a", 1, "hi", "s1"), ("a", 2, "hi", "s2"),
                                   ("a", 3, "cat", "s3"), ("b", 1, "x", "s1"),
                                   ("b", 2, "y", "s2"), ("c", 10, "p", "s1")]
    assert sp.counts() == {"train": 6, "validation": 3, "test": 2}
    assert list(sp.test.columns) == ["user_id", "query", "sticker_id", "ts"]


def test_users_with_too_little_history_stay_train_only():
    sp = split_interactions(frame(ROWS))
    assert "b" not in set(sp.test["user_id"]) | set(sp.validation["user_id"])
    assert (sp.train["user_id"] == "b").sum() == 2
    strict = split_interactions(frame(ROWS), SplitConfig(min_train_groups=2))
    assert set(strict.test["user_id"]) == {"a"}  # c has 3 groups, now needs 4
    assert (strict.train["user_id"] == "c").sum() == 3


def test_split_config_group_counts():
    sp = split_interactions(frame(ROWS), SplitConfig(val_groups=0, test_groups=2,
                                                     min_train_groups=1))
    assert sp.validation.empty
    assert clicks_of(sp.test) == [("a", 4, "dog", "s4"), ("a", 5, "dog", "s5"),
                                  ("a", 6, "hi", "s6"), ("c", 20, "q", "s2"),
                                  ("c", 30, "r", "s3")]


def test_one_group_user_and_empty_input():
    sp = split_interactions(frame([("z", 1, "q", "s"), ("z", 2, "q", "t")]))
    assert len(sp.train) == 2 and sp.validation.empty and sp.test.empty
    empty = split_interactions(frame([]))
    assert empty.counts() == {"train": 0, "validation": 0, "test": 0}
    assert len(empty.requests("test")) == 0


def test_requests_group_by_user_and_query_with_relevant_sets():
    sp = split_interactions(frame(ROWS))
    val = sp.requests("validation")
    assert val.requests == [Request("a", "dog"), Request("c", "q")]
    assert val.relevant[Request("a", "dog")] == {"s4", "s5"}
    assert val.qids == {Request("a", "dog"): "q0", Request("c", "q"): "q1"}
    assert val.users == {Request("a", "dog"): "a", Request("c", "q"): "c"}
    test = sp.requests("test")
    assert test.relevant == {Request("a", "hi"): {"s6"}, Request("c", "r"): {"s3"}}


def test_make_requests_merges_non_consecutive_groups_and_orders_by_first_click():
    clicks = frame([("u", 5, "hi", "s1"), ("u", 1, "yo", "s0"), ("u", 9, "hi", "s2"),
                    ("u", 7, "cat", "s3"), ("t", 3, "hi", "s1"), ("u", 9, "hi", "s1")])
    reqs = make_requests(clicks)
    assert reqs.requests == [Request("t", "hi"), Request("u", "yo"), Request("u", "hi"),
                             Request("u", "cat")]
    assert reqs.relevant[Request("u", "hi")] == {"s1", "s2"}  # a repeated click counts once
    assert len(reqs) == 4


def test_history_for():
    sp = split_interactions(frame(ROWS))
    assert clicks_of(sp.history_for("validation")) == clicks_of(sp.train)
    assert clicks_of(sp.history_for("test")) == sorted(clicks_of(sp.train)
                                                       + clicks_of(sp.validation))
    with pytest.raises(ValueError, match="unknown evaluation split"):
        sp.history_for("train")


def random_clicks(seed: int = 0, n_users: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 25))
        ts = rng.choice(10_000, size=n, replace=False)  # distinct times within a user
        for t in ts:
            rows.append((f"u{u}", int(t), f"q{rng.integers(0, 4)}", f"s{rng.integers(0, 30)}"))
    df = frame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df["click_id"] = np.arange(len(df))
    return df


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_leakage(seed):
    clicks = random_clicks(seed)
    original = clicks.copy()
    sp = split_interactions(clicks)
    pd.testing.assert_frame_equal(clicks, original)  # input untouched

    ids = {name: set(getattr(sp, name)["click_id"]) for name in ("train", "validation", "test")}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert ids["train"] | ids["validation"] | ids["test"] == set(clicks["click_id"])
    assert len(sp.test) > 0 and len(sp.validation) > 0

    def keys(df):  # a click as (user, sticker, query, ts)
        return set(df[["user_id", "sticker_id", "query", "ts"]].itertuples(index=False,
                                                                           name=None))
    test_keys, val_keys = keys(sp.test), keys(sp.validation)
    assert not test_keys & keys(sp.history_for("validation"))
    assert not test_keys & keys(sp.history_for("test"))
    assert not (test_keys | val_keys) & keys(sp.train)
    assert set(sp.history_for("validation")["click_id"]) == ids["train"]

    # chronological: per user, train < validation < test
    last_train = sp.train.groupby("user_id")["ts"].max()
    for later, earlier in ((sp.validation, sp.train), (sp.test, sp.validation)):
        first_later = later.groupby("user_id")["ts"].min()
        last_earlier = earlier.groupby("user_id")["ts"].max()
        common = first_later.index.intersection(last_earlier.index)
        assert (first_later[common] > last_earlier[common]).all()
    assert set(sp.test["user_id"]) <= set(last_train.index)  # every evaluated user has history

    # each test request is one click-group: one user, one query
    for split in (sp.validation, sp.test):
        assert (split.groupby("user_id")["query"].nunique() == 1).all()


# ------------------------------------------------------------ global_time, reports, leak checks

def test_global_time_one_cutoff_for_everyone():
    from bench.data.splits import SplitConfig
    # sessions start at 1..10 (user a: 1-5, user b: 6-10); 20% test, 20% validation
    rows = [("a", t, f"q{t}", f"s{t}") for t in range(1, 6)] + \
           [("b", t, f"q{t}", f"s{t}") for t in range(6, 11)]
    sp = split_interactions(frame(rows), SplitConfig(mode="global_time", val_fraction=0.2,
                                                     test_fraction=0.2))
    assert sorted(sp.test["ts"]) == [9, 10] and sorted(sp.validation["ts"]) == [7, 8]
    assert sp.train["ts"].max() < sp.validation["ts"].min() <= sp.validation["ts"].max() \
        < sp.test["ts"].min()
    assert sp.report["cutoff_test_ts"] == 9 and sp.report["cutoff_validation_ts"] == 7
    assert sp.report["cold_test_users"] == 0 and sp.report["sessions_cut_by_cutoff"] == 0
    late = split_interactions(frame(rows + [("c", 11, "x", "s1")]),
                              SplitConfig(mode="global_time", val_fraction=0.0,
                                          test_fraction=0.1))
    assert late.validation.empty and late.report["cold_test_users"] == 1


def test_global_time_no_leak_on_random_clicks():
    from bench.data.splits import SplitConfig, check_no_leak
    sp = split_interactions(random_clicks(3), SplitConfig(mode="global_time"))
    for target in ("validation", "test"):
        assert len(getattr(sp, target)) > 0
        assert check_no_leak(sp, target).empty
    assert sp.history_for("test")["ts"].max() < sp.test["ts"].min()


def test_split_config_rejects_unknown_mode_and_bad_fractions():
    from bench.data.splits import SplitConfig
    from bench.errors import ConfigError
    with pytest.raises(ConfigError, match="split.mode"):
        SplitConfig(mode="random")
    with pytest.raises(ConfigError, match="test_fraction"):
        SplitConfig(mode="global_time", test_fraction=0.6, val_fraction=0.5)


def test_users_with_too_few_groups_are_counted_and_warned(caplog):
    with caplog.at_level("WARNING"):
        sp = split_interactions(frame(ROWS))
    assert sp.report["users_too_few_groups"] == 1  # b: two groups, train-only
    assert sp.report["clicks_of_users_too_few_groups"] == 2
    assert sp.report["min_groups_needed"] == 3
    assert "1 users have fewer than 3 click-groups" in caplog.text
    report = sp.split_report()
    assert report["train_clicks"] == 6 and report["test_requests"] == 2


def test_heldout_queries_never_in_history():
    # a: hi | cat | dog | hi ; "dog" and "cat" held out: cat (train) is dropped, dog (validation)
    # stays a validation request but is not history for the test run
    sp = split_interactions(frame(ROWS), heldout_queries={"dog", "cat"})
    assert "cat" not in set(sp.train["query"])
    assert set(sp.validation["query"]) == {"dog", "q"}
    assert "dog" not in set(sp.history_for("test")["query"])
    assert sp.report["heldout_clicks_dropped_from_train"] == 1
    assert sp.report["heldout_validation_clicks_kept_out_of_test_history"] == 2
    assert sp.report["validation_unseen_query_share"] == 1.0  # dog and q unseen in train


def test_planted_leak_is_caught():
    import dataclasses

    from bench.data.splits import SplitLeakError, check_no_leak
    sp = split_interactions(frame(ROWS), heldout_queries={"r"})  # c's test query
    assert check_no_leak(sp, "test").empty and check_no_leak(sp, "validation").empty
    # copy the test query into the validation run's history (train), by another user, earlier
    leak = frame([("b", 0, "r", "s3")])
    planted = dataclasses.replace(sp, train=pd.concat([sp.train, leak], ignore_index=True))
    found = check_no_leak(planted, "test")
    assert found.to_dict("records") == [{"user_id": "c", "query": "r",
                                         "reason": "heldout_query_in_history"}]
    with pytest.raises(SplitLeakError, match="1 test request.*'c'.*'r'"):
        check_no_leak(planted, "test", strict=True)
    # a test click copied verbatim into the history, and a user's own later click in history
    same = dataclasses.replace(sp, validation=pd.concat([sp.validation, sp.test.iloc[:1]]))
    assert set(check_no_leak(same, "test")["reason"]) == {"same_click_in_history",
                                                          "history_after_request"}
