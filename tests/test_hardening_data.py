"""Issue 26, class 4: stale or silently wrong data.

Built datasets are keyed by the source's content; ids the TREC/TSV files cannot carry are
refused at load; timestamps are range-checked; tied timestamps are ordered by a rule, not by
row order; numbers in TREC files are parsed strictly."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from bench.config import DatasetSpec
from bench.data.format import load_dataset, write_dataset
from bench.data.splits import split_interactions
from bench.errors import DatasetError
from bench.evaluate import read_qrels, read_trec_run


def _stickers(ids=("s1", "s2", "s3")) -> pd.DataFrame:
    return pd.DataFrame({"sticker_id": list(ids), "image": None,
                         "text": [f"text {i}" for i in range(len(ids))]})


def _clicks(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "query", "sticker_id", "ts"])


GOOD = [("u1", "hi", "s1", 1), ("u1", "yo", "s2", 2), ("u1", "hi", "s3", 3),
        ("u2", "hi", "s1", 1), ("u2", "yo", "s2", 2), ("u2", "ok", "s3", 3)]


# ----------------------------------------------------------------------- content-keyed builds

def test_an_edited_source_csv_is_built_again(tmp_path, isolated_cache, caplog):
    from bench.data.resolve import resolve_dataset
    csv = tmp_path / "clicks.csv"
    csv.write_text("uid,query,docid\n7,happy,d1\n7,sad,d2\n8,happy,d2\n", encoding="utf-8")
    spec = DatasetSpec(builder="persrv-csv", source=str(csv))
    caplog.set_level(logging.INFO, logger="bench.data.resolve")
    first = resolve_dataset(spec)
    caplog.clear()
    assert resolve_dataset(spec).fingerprint == first.fingerprint
    assert "reusing dataset built earlier" in caplog.text
    # same path, same size, other content (and the same modification time)
    stat = csv.stat()
    csv.write_text("uid,query,docid\n7,happy,d1\n7,sad,d2\n8,angry,d2\n", encoding="utf-8")
    import os
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.clear()
    again = resolve_dataset(spec)
    assert "reusing" not in caplog.text
    assert "angry" in set(again.interactions["query"]) and again.fingerprint != first.fingerprint


# ------------------------------------------------------------------------------ ids at load

@pytest.mark.parametrize("column,value,match", [
    ("sticker_id", "s 1", "whitespace, which a TREC"),
    ("sticker_id", "", "empty or whitespace-only"),
    ("sticker_id", "   ", "empty or whitespace-only"),
    ("user_id", "u1 ", "starts or ends with whitespace"),
    ("user_id", "\tu1", "starts or ends with whitespace"),
    ("user_id", "u\x1b[31m1", "control character"),
    ("user_id", "", "empty or whitespace-only"),
])
def test_ids_the_trec_files_cannot_carry_are_refused(tmp_path, column, value, match):
    rows = [list(r) for r in GOOD]
    stickers = _stickers()
    if column == "sticker_id":
        stickers.loc[1, "sticker_id"] = value
        rows[1][2] = value
    else:
        rows[4][0] = value
    with pytest.raises(DatasetError, match=match) as info:
        write_dataset(tmp_path / "ds", stickers, _clicks(rows), {"name": "x"})
    assert info.value.column == column and info.value.row == (1 if column == "sticker_id"
                                                              else 4)


def test_user_ids_with_inner_spaces_stay_one_user_everywhere(tmp_path):
    """An inner space is allowed in a user id (TSV column); the requests file reads it back."""
    from bench.evaluate import read_users, write_users
    from bench.data.splits import make_requests
    rows = [("ann lee" if u == "u1" else u, q, s, t) for u, q, s, t in GOOD]
    ds = write_dataset(tmp_path / "ds", _stickers(), _clicks(rows), {"name": "x"})
    requests = make_requests(ds.interactions)
    write_users(requests, tmp_path / "requests.tsv")
    assert set(read_users(tmp_path / "requests.tsv").values()) == {"ann lee", "u2"}


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 1.5, 1e300])
def test_float_id_columns_must_hold_whole_finite_numbers(tmp_path, value):
    ds = write_dataset(tmp_path / "ds", _stickers(), _clicks(GOOD), {"name": "x"})
    clicks = ds.interactions.copy()
    clicks["user_id"] = [1.0, 1.0, 1.0, 2.0, value, 2.0]
    clicks.to_parquet(tmp_path / "ds" / "interactions.parquet", index=False)
    with pytest.raises(DatasetError, match="expected a string id") as info:
        load_dataset(tmp_path / "ds")
    assert info.value.row == 4 and info.value.column == "user_id"


# ------------------------------------------------------------------------------ timestamps

@pytest.mark.parametrize("ts", [
    pd.Series([1, 2, 3, 1, 2, 2 ** 63 + 5], dtype="uint64"),
    pd.Series([1, 2, 3, 1, 2, 1e19]),
    pd.Series([1, 2, 3, 1, 2, -1e19]),
    pd.Series([1, 2, 3, 1, 2, np.inf]),
])
def test_timestamps_out_of_int64_are_refused_not_wrapped(tmp_path, ts):
    ds = write_dataset(tmp_path / "ds", _stickers(), _clicks(GOOD), {"name": "x"})
    clicks = ds.interactions.copy()
    clicks["ts"] = ts.to_numpy()
    clicks.to_parquet(tmp_path / "ds" / "interactions.parquet", index=False)
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "ds")
    assert info.value.row == 5 and info.value.column == "ts"
    with pytest.raises(DatasetError):  # a builder cannot write it either
        write_dataset(tmp_path / "ds2", _stickers(), clicks, {"name": "x"})


def test_persrv_csv_refuses_a_timestamp_over_int64(tmp_path):
    from bench.data.builders import build_dataset
    csv = tmp_path / "t.csv"
    csv.write_text(f"uid,query,docid,ts\nu,a,d1,1\nu,b,d2,{2 ** 63 + 5}\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="does not fit int64") as info:
        build_dataset("persrv-csv", csv, tmp_path / "out", {})
    assert info.value.column == "ts" and info.value.row == 3  # the CSV's line


# ----------------------------------------------------------------------------------- ties

def test_tied_timestamps_are_ordered_by_rule_not_by_row_order(tmp_path, caplog):
    tied = [("u1", "hi", "s1", 1), ("u1", "yo", "s2", 5), ("u1", "ok", "s3", 5),
            ("u1", "hi", "s2", 5), ("u2", "hi", "s1", 1), ("u2", "yo", "s2", 2),
            ("u2", "ok", "s3", 3), ("u2", "hi", "s3", 3)]
    loaded = []
    for name, rows in (("a", tied), ("b", tied[::-1]), ("c", tied[3:] + tied[:3])):
        write_dataset(tmp_path / name, _stickers(), _clicks(rows), {"name": name})
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loaded.append(load_dataset(tmp_path / name))
        assert "5 clicks share a timestamp" in caplog.text
    first = loaded[0]
    assert first.meta["tied_clicks"] == 5
    u1 = first.interactions[first.interactions["user_id"] == "u1"]
    assert list(zip(u1["ts"], u1["query"], u1["sticker_id"])) == [
        (1, "hi", "s1"), (5, "hi", "s2"), (5, "ok", "s3"), (5, "yo", "s2")]
    splits = [split_interactions(ds.interactions) for ds in loaded]
    for other in splits[1:]:
        for part in ("train", "validation", "test"):
            pd.testing.assert_frame_equal(getattr(splits[0], part).reset_index(drop=True),
                                          getattr(other, part).reset_index(drop=True))


# ----------------------------------------------------------------------- strict TREC numbers

@pytest.mark.parametrize("score", ["1_000", "\uff15", "nan", "NaN", "0x10", "1e", "--1", "1,5",
                                   "\u0665"])
def test_trec_scores_are_parsed_strictly(tmp_path, score):
    run = tmp_path / "run.trec"
    run.write_text(f"q0 Q0 s1 1 2.5 t\nq0 Q0 s2 2 {score} t\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2") as info:
        read_trec_run(run)
    assert info.value.column == "score"


def test_trec_numbers_that_are_fine(tmp_path):
    run = tmp_path / "run.trec"
    run.write_text("q0 Q0 a 1 1e3 t\nq0 Q0 b 2 -0.5 t\nq0 Q0 c 3 +7 t\nq0 Q0 d 4 -inf t\n"
                   "q0 Q0 e 5 .25 t\n", encoding="utf-8")
    assert read_trec_run(run) == {"q0": ["a", "c", "e", "b", "d"]}
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 a 1\nq0 0 b 0\n", encoding="utf-8")
    assert read_qrels(qrels) == {"q0": {"a"}}
    qrels.write_text("q0 0 a \uff11\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="ASCII digits"):
        read_qrels(qrels)
