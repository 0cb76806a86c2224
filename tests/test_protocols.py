"""bench.data.protocols: simulated-users and leave-one-query-out splits on small fixtures."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.config import load_config
from bench.data.format import Dataset
from bench.data.protocols import FIELD_USER, protocol_splits
from bench.data.splits import check_no_leak
from bench.errors import ConfigError, DatasetError
from bench.retrieval import Request


def loqo_dataset(queries=None, column="gt_queries") -> Dataset:
    queries = queries or {"s1": "happy, joy, glad", "s2": "sad, blue", "s3": "ok", "s4": "",
                          "s5": '["wow", "omg", "Wow"]'}
    stickers = pd.DataFrame({"sticker_id": list(queries), "image": None,
                             column: list(queries.values())})
    clicks = pd.DataFrame({"user_id": ["u"], "query": ["x"], "sticker_id": ["s1"], "ts": [1]})
    return Dataset(stickers, clicks, {"name": "fixture"})


def test_leave_one_query_out_one_request_per_sticker_rest_is_the_field():
    splits = protocol_splits(loqo_dataset(), {"name": "leave-one-query-out", "seed": 0})
    test = splits.requests("test")
    # s1 (3 queries), s2 (2), s5 (2 after de-duplication) are tested; s3 (1), s4 (0) are not
    assert sorted(r.user_id for r in test.requests) == ["loqo-s1", "loqo-s2", "loqo-s5"]
    for req in test.requests:
        assert test.relevant[req] == {req.user_id.removeprefix("loqo-")}
    assert splits.validation.empty
    # field: every other query, by the one field user; with the test query, all of the sticker's
    assert set(splits.train["user_id"]) == {FIELD_USER}
    everything = pd.concat([splits.train, splits.test])
    assert sorted(everything.groupby("sticker_id")["query"].apply(sorted).items()) == [
        ("s1", ["glad", "happy", "joy"]), ("s2", ["blue", "sad"]), ("s3", ["ok"]),
        ("s5", ["omg", "wow"])]
    assert not set(splits.test["query"] + splits.test["sticker_id"]) & set(
        splits.train["query"] + splits.train["sticker_id"])
    assert splits.report["stickers_tested"] == 3 and splits.report["stickers_below_min_queries"] == 2
    assert splits.report["field_clicks"] == 5 and splits.report["dataset_clicks_not_used"] == 1
    assert check_no_leak(splits, "test").empty


def test_leave_one_query_out_is_seeded():
    ds = loqo_dataset({f"s{i}": ", ".join(f"q{i}-{j}" for j in range(6)) for i in range(30)})
    a = protocol_splits(ds, {"name": "leave-one-query-out", "seed": 1}).test
    b = protocol_splits(ds, {"name": "leave-one-query-out", "seed": 1}).test
    c = protocol_splits(ds, {"name": "leave-one-query-out", "seed": 2}).test
    pd.testing.assert_frame_equal(a, b)
    assert not a["query"].equals(c["query"]) and len(a) == 30


def test_shared_held_out_string_stays_two_requests():
    ds = loqo_dataset({"s1": "thumbs up, good", "s2": "thumbs up, nice"}, column="gt_raw_queries")
    splits = protocol_splits(ds, {"name": "leave-one-query-out", "seed": 0, "min_queries": 2})
    assert splits.report["queries_column"] == "gt_raw_queries"
    test = splits.requests("test")
    assert len(test) == 2 and all(len(rel) == 1 for rel in test.relevant.values())


def test_validation_query_joins_the_field_for_the_test_run():
    ds = loqo_dataset({"s1": "a, b, c", "s2": "d, e"})
    splits = protocol_splits(ds, {"name": "leave-one-query-out", "validation": True})
    assert splits.validation["sticker_id"].tolist() == ["s1"]  # s2 has too few queries
    val_req = splits.requests("validation").requests[0]
    assert val_req.user_id == "loqo-val-s1"
    assert val_req.query not in set(splits.history_for("validation")["query"])
    assert val_req.query in set(splits.history_for("test")["query"])
    assert len(splits.history_for("test")) == 3  # 5 queries - 2 tested


def test_min_queries_and_missing_column():
    ds = loqo_dataset()
    splits = protocol_splits(ds, {"name": "leave-one-query-out", "min_queries": 3})
    assert [r.user_id for r in splits.requests("test").requests] == ["loqo-s1"]
    with pytest.raises(DatasetError, match="queries_column"):
        protocol_splits(loqo_dataset(column="labels"), {"name": "leave-one-query-out"})
    with pytest.raises(DatasetError, match="row 0.*not a JSON list"):
        protocol_splits(loqo_dataset({"s1": "[broken"}), {"name": "leave-one-query-out"})
    with pytest.raises(ConfigError, match="protocol.name"):
        protocol_splits(ds, {"name": "nope"})


def test_simulated_users_is_the_default_and_keeps_held_out_queries_out():
    # tails are each user's last 2 groups; only "secret" never occurs before a tail (held out)
    clicks = pd.DataFrame({"user_id": ["u"] * 3 + ["v"] * 3 + ["w"] * 4,
                           "query": ["a", "secret", "c", "a", "b", "secret", "b", "c", "secret",
                                     "b"],
                           "sticker_id": ["s1", "s2", "s3", "s1", "s2", "s3", "s2", "s3", "s2",
                                          "s1"],
                           "ts": [1, 2, 3, 1, 2, 3, 1, 2, 3, 4]})
    stickers = pd.DataFrame({"sticker_id": ["s1", "s2", "s3"], "image": None})
    ds = Dataset(stickers, clicks, {"name": "sim", "simulator": {
        "heldout_query_fraction": 0.2, "heldout_tail_groups": 2}})
    splits = protocol_splits(ds, None, {"val_groups": 1, "test_groups": 1,
                                        "min_train_groups": 1})
    assert splits.heldout_queries == {"secret"}
    assert splits.report["protocol"] == "simulated-users"
    assert "secret" in set(splits.validation["query"])
    assert "secret" not in set(splits.history_for("test")["query"])
    assert splits.requests("test").requests == [Request("u", "c"), Request("v", "secret"),
                                                Request("w", "b")]
    assert splits.report["heldout_validation_clicks_kept_out_of_test_history"] == 2


def test_loqo_experiment_config_validates():
    cfg = load_config("experiments/sticker_queries_loqo.yaml")
    assert cfg.protocol.name == "leave-one-query-out" and cfg.protocol.min_queries == 2
    assert {"bm25", "dense-text", "popularity", "persrv-no-personalization", "query-lookup",
            "persrv-reference"} <= {r.name for r in cfg.retrievers}


def test_user_split_fractions_examples_and_config():
    """user-split: 100 users -> 70/15/15; an evaluation user's example is its last use of a
    sticker it never used before, everything before it is history, what follows is dropped."""
    from bench.config import validate_config
    rows = []
    for u in range(100):
        # uses: a, b, a (repeat), c, b (repeat): the example is c (the last new sticker)
        for t, sid in enumerate(("a", "b", "a", f"c{u % 7}", "b")):
            rows.append((f"u{u:03d}", f"q{u}-{t}", sid, t))
    clicks = pd.DataFrame(rows, columns=["user_id", "query", "sticker_id", "ts"])
    stickers = pd.DataFrame({"sticker_id": ["a", "b", *[f"c{i}" for i in range(7)]],
                             "image": None})
    ds = Dataset(stickers, clicks, {"name": "users"})
    splits = protocol_splits(ds, {"name": "user-split", "seed": 0})
    rep = splits.report
    assert (rep["train_users"], rep["validation_users"], rep["test_users"]) == (70, 15, 15)
    assert len(splits.validation) == 15 and len(splits.test) == 15
    assert splits.test["sticker_id"].str.startswith("c").all()
    assert (splits.test["ts"] == 3).all()
    # train users keep all 5 uses, evaluation users their 3 uses before the example
    assert len(splits.train) == 70 * 5 + 30 * 3
    assert rep["evaluation_uses_after_example_dropped"] == 30
    assert rep["evaluation_uses_target_in_history"] == 60
    assert check_no_leak(splits, "test").empty and check_no_leak(splits, "validation").empty
    cfg = validate_config({"dataset": {"path": "x"}, "protocol": {"name": "user-split"},
                           "retrievers": [{"name": "random"}]})
    assert cfg.protocol.name == "user-split"
    with pytest.raises(ConfigError, match="protocol.name"):
        validate_config({"dataset": {"path": "x"}, "protocol": {"name": "user-splitt"},
                         "retrievers": [{"name": "random"}]})
