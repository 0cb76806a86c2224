"""bench.data.format.load_dataset on bad input: errors name the file, the row and the column."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.data.format import (INTERACTIONS_FILE, META_FILE, STICKERS_FILE, load_dataset,
                               write_dataset)
from bench.errors import DatasetError


def stickers(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"sticker_id": [f"s{i}" for i in range(n)], "image": [None] * n,
                         "ocr_text": [f"text {i}" for i in range(n)], "gt_style": ["x"] * n})


def clicks() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u1", "u1", "u2"], "query": ["hi", "hi", "bye"],
                         "sticker_id": ["s0", "s1", "s2"], "ts": [1, 2, 3]})


@pytest.fixture
def ds_dir(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, stickers(), clicks(), {"name": "tiny"})
    return root


def put(root, file: str, df: pd.DataFrame) -> None:
    """Overwrite one parquet file of a valid dataset with bad content."""
    df.to_parquet(root / file, index=False)


def error_of(root, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(root, **kwargs)
    return info.value


def assert_names(err: DatasetError, file: str, row: int | None, column: str | None) -> None:
    msg = str(err)
    assert file in msg and err.file is not None and err.file.endswith(file)
    if row is not None:
        assert err.row == row and f"row {row}" in msg
    if column is not None:
        assert err.column == column and repr(column) in msg


# -------------------------------------------------------------------------------------- structure

@pytest.mark.parametrize("file, column", [
    (STICKERS_FILE, "sticker_id"), (STICKERS_FILE, "image"),
    (INTERACTIONS_FILE, "user_id"), (INTERACTIONS_FILE, "query"), (INTERACTIONS_FILE, "ts"),
])
def test_missing_column(ds_dir, file, column):
    df = stickers() if file == STICKERS_FILE else clicks()
    put(ds_dir, file, df.drop(columns=[column]))
    assert_names(error_of(ds_dir), file, None, column)


def test_duplicate_sticker_ids(ds_dir):
    st = stickers(4)
    st.loc[3, "sticker_id"] = "s1"
    put(ds_dir, STICKERS_FILE, st)
    err = error_of(ds_dir)
    assert_names(err, STICKERS_FILE, 3, "sticker_id")
    assert "'s1'" in str(err) and "first seen at row 1" in str(err)


def test_ts_as_strings(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(ts=["1", "2", "x"]))
    assert_names(error_of(ds_dir), INTERACTIONS_FILE, 0, "ts")


def test_ts_with_fractional_or_missing_values(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(ts=[1.0, 2.5, 3.0]))
    assert_names(error_of(ds_dir), INTERACTIONS_FILE, 1, "ts")
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(ts=[1.0, 2.0, 3.0]))  # whole floats are fine
    assert load_dataset(ds_dir).interactions["ts"].dtype == "int64"


def test_query_as_int(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(query=[1, 2, 3]))
    err = error_of(ds_dir)
    assert_names(err, INTERACTIONS_FILE, 0, "query")
    assert "expected a string" in str(err)


def test_missing_query_names_first_bad_row(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(query=["hi", None, None]))
    assert_names(error_of(ds_dir), INTERACTIONS_FILE, 1, "query")


def test_missing_user_id(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(user_id=["u1", None, "u2"]))
    assert_names(error_of(ds_dir), INTERACTIONS_FILE, 1, "user_id")


def test_fractional_numeric_sticker_id(ds_dir):
    put(ds_dir, STICKERS_FILE, stickers().assign(sticker_id=[0.0, 1.5, 2.0]))
    assert_names(error_of(ds_dir), STICKERS_FILE, 1, "sticker_id")


def test_whole_numeric_ids_become_strings(ds_dir):
    put(ds_dir, STICKERS_FILE, stickers().assign(sticker_id=[10, 11, 12]))
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(sticker_id=[10, 11, 12], user_id=[1, 1, 2]))
    ds = load_dataset(ds_dir)
    assert ds.stickers["sticker_id"].tolist() == ["10", "11", "12"]
    assert ds.interactions["user_id"].tolist() == ["1", "1", "2"]


def test_text_column_with_non_string(ds_dir):
    # parquet stores this as a binary column: every value is bytes, the first one is reported
    put(ds_dir, STICKERS_FILE, stickers().assign(ocr_text=pd.Series([b"a", None, b"\x00"],
                                                                    dtype=object)))
    err = error_of(ds_dir)
    assert_names(err, STICKERS_FILE, 0, "ocr_text")
    assert "bytes" in str(err)


# ------------------------------------------------------------------------------------- row errors

def test_click_on_unknown_sticker_errors_then_skips(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(sticker_id=["s0", "nope", "gone"]))
    err = error_of(ds_dir)
    assert_names(err, INTERACTIONS_FILE, 1, "sticker_id")
    assert "2 such rows" in str(err) and "on_invalid='skip'" in str(err)
    ds = load_dataset(ds_dir, on_invalid="skip")
    assert ds.skipped == {"unknown_sticker": 2}
    assert ds.interactions["sticker_id"].tolist() == ["s0"]


def test_empty_query_errors_then_skips(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(query=["hi", "   ", "bye"]))
    assert_names(error_of(ds_dir), INTERACTIONS_FILE, 1, "query")
    ds = load_dataset(ds_dir, on_invalid="skip")
    assert ds.skipped == {"empty_query": 1}
    assert ds.interactions["query"].tolist() == ["hi", "bye"]


def test_skip_counts_both_problems_once_per_kind(ds_dir):
    put(ds_dir, INTERACTIONS_FILE, clicks().assign(query=["", "hi", "bye"],
                                                   sticker_id=["nope", "s1", "nope"]))
    ds = load_dataset(ds_dir, on_invalid="skip")
    assert ds.skipped == {"empty_query": 1, "unknown_sticker": 2}
    assert len(ds.interactions) == 1


# ----------------------------------------------------------------------------------------- files

def test_zero_byte_parquet(ds_dir):
    (ds_dir / STICKERS_FILE).write_bytes(b"")
    err = error_of(ds_dir)
    assert_names(err, STICKERS_FILE, None, None)
    assert "empty" in str(err)


def test_garbage_parquet(ds_dir):
    (ds_dir / INTERACTIONS_FILE).write_bytes(b"this is not parquet at all" * 10)
    err = error_of(ds_dir)
    assert_names(err, INTERACTIONS_FILE, None, None)
    assert "unreadable parquet" in str(err)


def test_truncated_parquet(ds_dir):
    data = (ds_dir / INTERACTIONS_FILE).read_bytes()
    (ds_dir / INTERACTIONS_FILE).write_bytes(data[: len(data) // 2])
    assert "unreadable parquet" in str(error_of(ds_dir))


def test_missing_parquet(ds_dir):
    (ds_dir / STICKERS_FILE).unlink()
    err = error_of(ds_dir)
    assert_names(err, STICKERS_FILE, None, None)
    assert "missing" in str(err)


def test_missing_dataset_json(ds_dir):
    (ds_dir / META_FILE).unlink()
    err = error_of(ds_dir)
    assert_names(err, META_FILE, None, None)
    assert "missing" in str(err)


@pytest.mark.parametrize("content, what", [("{not json", "invalid JSON"),
                                           ("[1, 2]", "JSON object"),
                                           (b"\xff\xfe\x00", "invalid JSON")])
def test_bad_dataset_json(ds_dir, content, what):
    path = ds_dir / META_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = error_of(ds_dir)
    assert_names(err, META_FILE, None, None)
    assert what in str(err)


def test_not_a_directory(tmp_path):
    err = error_of(tmp_path / "nowhere")
    assert "not a directory" in str(err)


# ---------------------------------------------------------------------- round trip, fingerprint

def test_round_trip(tmp_path):
    ds = write_dataset(tmp_path / "a", stickers(), clicks(), {"name": "tiny", "source": "test"})
    again = load_dataset(tmp_path / "a")
    pd.testing.assert_frame_equal(again.stickers, ds.stickers)
    pd.testing.assert_frame_equal(again.interactions, ds.interactions)
    assert again.stickers["sticker_id"].tolist() == ["s0", "s1", "s2"]
    assert again.interactions[["user_id", "query", "sticker_id"]].to_dict("list") == \
        clicks()[["user_id", "query", "sticker_id"]].to_dict("list")
    assert again.interactions["ts"].dtype == "int64"
    assert again.text_columns == ["ocr_text"]  # never gt_*
    meta = json.loads((tmp_path / "a" / META_FILE).read_text())
    assert meta["name"] == "tiny" and meta["source"] == "test"
    assert meta["counts"] == {"stickers": 3, "interactions": 3, "users": 2, "queries": 2,
                              "images": 0}
    assert again.fingerprint == meta["fingerprint"] and len(again.fingerprint) == 16
    assert again.skipped == {}


def test_fingerprint_is_deterministic_and_content_sensitive(tmp_path):
    a = write_dataset(tmp_path / "a", stickers(), clicks(), {"name": "a"})
    b = write_dataset(tmp_path / "b", stickers(), clicks(), {"name": "other name"})
    assert a.fingerprint == b.fingerprint  # content, not directory or metadata
    changed = write_dataset(tmp_path / "c", stickers(), clicks().assign(ts=[1, 2, 4]), {})
    assert changed.fingerprint != a.fingerprint
    renamed = write_dataset(tmp_path / "d", stickers().assign(ocr_text=["x", "y", "z"]),
                            clicks(), {})
    assert renamed.fingerprint != a.fingerprint


def test_fingerprint_covers_image_files(tmp_path):
    fps = []
    for name, pixels in (("a", b"\x01\x02"), ("b", b"\x01\x02"), ("c", b"\x09\x09")):
        root = tmp_path / name
        (root / "img").mkdir(parents=True)
        (root / "img" / "s0.png").write_bytes(pixels)
        st = stickers().assign(image=["img/s0.png", None, None])
        fps.append(write_dataset(root, st, clicks(), {}).fingerprint)
    assert fps[0] == fps[1] != fps[2]
