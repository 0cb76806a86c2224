"""Bad input, datasets (bench/data: format, integrity, resolve): duplicate ids, unknown stickers,
empty corpora, image paths, fingerprints, bad UTF-8: either a one-line error that names the
input (exit 2, no traceback) or the input is handled and what was skipped is counted (issue 9;
split from tests/test_bad_input.py by area in issue 25)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.data.format import write_dataset
from bench.retrieval import Request, TrainView
from bench.registry import make_retriever

from conftest import make_tiny_frames, run_main

from bad_input_helpers import (assert_one_line_error, write_config, dataset_with, SQ_HEADER,
                               EMOJI_HEADER, PERSRV_HEADER, _emoji_folder)


# ------------------------------------------------------------------------ duplicate sticker ids

def test_duplicate_sticker_ids_are_a_one_line_error(tmp_path, capsys):
    """(The loader itself: tests/test_format.py::test_duplicate_sticker_ids; the builders:
    test_data_builders.py sticker-queries and JSON-lines cases.)"""
    root = dataset_with(tmp_path, "dups")
    st = pd.read_parquet(root / "stickers.parquet")
    st.loc[4, "sticker_id"] = st.loc[1, "sticker_id"]
    st.to_parquet(root / "stickers.parquet", index=False)
    code, _, err = run_main(capsys, "datasets", "describe", str(root))
    assert_one_line_error(code, err, "stickers.parquet, row 4, column 'sticker_id'",
                          f"duplicate sticker id {st.loc[1, 'sticker_id']!r} (first seen at row 1)")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, "duplicate sticker id")
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------- clicks on unknown stickers

def _unknown_sticker_dataset(tmp_path: Path) -> tuple[Path, int]:
    st, cl = make_tiny_frames()
    bad = cl.sample(5, random_state=0).index
    cl.loc[bad, "sticker_id"] = "no-such-sticker"
    return dataset_with(tmp_path, "unknown", clicks=cl), len(cl)


def test_clicks_on_unknown_stickers_error_by_default(tmp_path, capsys):
    root, _ = _unknown_sticker_dataset(tmp_path)
    code, _, err = run_main(capsys, "datasets", "describe", str(root))
    line = assert_one_line_error(code, err, "interactions.parquet", "column 'sticker_id'",
                                 "'no-such-sticker'", "5 such rows in total", "--skip-invalid")
    assert "click on a sticker id that is not in stickers.parquet" in line
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, "no-such-sticker")


def test_clicks_on_unknown_stickers_skipped_and_counted(tmp_path, capsys, isolated_cache):
    root, n = _unknown_sticker_dataset(tmp_path)
    code, out, _ = run_main(capsys, "datasets", "describe", str(root), "--skip-invalid", "--json")
    stats = json.loads(out)
    assert code == 0 and stats["skipped"] == {"unknown_sticker": 5} and stats["clicks"] == n - 5
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    code, out, err = run_main(capsys, "run", str(cfg), "-o", "dataset.on_invalid=skip")
    assert code == 0, err
    assert "skipped invalid clicks: unknown_sticker=5" in out
    report = json.loads(next((tmp_path / "out").glob("*/data_report.json")).read_text())
    assert report["dataset_skipped"] == {"unknown_sticker": 5}


# ----------------------------------------------------------------------------- an empty corpus

def _empty_frames():
    st = pd.DataFrame({"sticker_id": pd.Series([], dtype=object),
                       "image": pd.Series([], dtype=object)})
    cl = pd.DataFrame({"user_id": pd.Series([], dtype=object),
                       "query": pd.Series([], dtype=object),
                       "sticker_id": pd.Series([], dtype=object),
                       "ts": pd.Series([], dtype="int64")})
    return st, cl


def test_empty_corpus_loads_but_a_run_is_a_clear_error(tmp_path, capsys):
    st, cl = _empty_frames()
    write_dataset(tmp_path / "empty", st, cl, {"name": "empty"})
    code, out, err = run_main(capsys, "datasets", "describe", str(tmp_path / "empty"), "--json")
    assert code == 0 and json.loads(out)["stickers"] == 0
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "empty", tmp_path)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, "stickers.parquet", "dataset empty has no stickers",
                          "empty corpus")
    assert not (tmp_path / "out").exists()


def test_corpus_emptied_by_skipping_every_click_is_a_clear_error(tmp_path, capsys):
    st, _ = _empty_frames()
    clicks = pd.DataFrame({"user_id": ["u"] * 3, "query": ["a", "b", "c"],
                           "sticker_id": ["x", "y", "z"], "ts": [1, 2, 3]})
    root = tmp_path / "ghost"
    with pytest.raises(Exception, match="not in stickers.parquet"):
        write_dataset(root, st, clicks, {"name": "ghost"})  # written, then refused on load
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    code, _, err = run_main(capsys, "run", str(cfg), "-o", "dataset.on_invalid=skip")
    assert_one_line_error(code, err, "dataset ghost has no stickers")


@pytest.mark.parametrize("builder, files, source, params, needles", [
    ("sticker-queries", {"q.csv": SQ_HEADER}, "q.csv", [], ["q.csv", "empty corpus"]),
    ("emoji-styles", {"emoji.csv": EMOJI_HEADER}, ".", [], ["emoji.csv", "no emoji rows"]),
    ("persrv-csv", {"c.csv": PERSRV_HEADER}, "c.csv", [], ["c.csv", "no valid interaction rows"]),
    ("synthetic", {}, None, ["n_stickers=0"], ["n_stickers = 0: expected >= 1"]),
])
def test_builders_refuse_an_empty_corpus(builder, files, source, params, needles, tmp_path,
                                         capsys):
    src = tmp_path / "src"
    if builder == "emoji-styles":
        _emoji_folder(src, files["emoji.csv"])
    else:
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
    args = ["datasets", "build", builder, "--out", str(tmp_path / "out")]
    args += ["--source", str(src / source)] if source else []
    for p in params:
        args += ["--param", p]
    code, _, err = run_main(capsys, *args)
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("name", ["bm25", "popularity", "random", "persrv", "dense-clip"])
def test_retrievers_fit_an_empty_corpus(name):
    """Through the API (the runner refuses earlier): fit and search do not crash."""
    st, cl = _empty_frames()
    st["text"] = pd.Series([], dtype=object)
    if name == "dense-clip":
        pytest.importorskip("open_clip")
        retriever = make_retriever(name, {"pretrained": None, "model": "ViT-B-32"})
    else:
        retriever = make_retriever(name)
    retriever.fit(TrainView(stickers=st, clicks=cl, embeddings=np.zeros((0, 4), np.float32)))
    run = retriever.search([Request("u", "hello")], 10)
    assert run.ids(Request("u", "hello")) == []


def test_no_requests_is_a_clear_error_before_features(tiny_dataset, tmp_path, capsys,
                                                      monkeypatch):
    import bench.runner as runner

    def boom(*a, **k):
        raise AssertionError("features must not be computed")

    monkeypatch.setattr(runner, "attach_configured_features", boom)
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path,
                       split={"min_train_groups": 50})
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, "interactions.parquet", "has no test requests",
                          "users need at least 52 click-groups")


# ------------------------------------------------------------ one path policy for image paths

def _policy_dataset(tmp_path: Path, image: str, setup=None) -> Path:
    """The tiny dataset whose sticker at row 4 names ``image``; ``setup(root)`` runs first."""
    st, cl = make_tiny_frames()
    root = tmp_path / "ds"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "img" / "ok.png")
    (tmp_path / "secret.txt").write_text("the secret\n", encoding="utf-8")
    if setup is not None:
        setup(root)
    st["image"] = ["img/ok.png"] * len(st)
    st.loc[4, "image"] = image
    write_dataset(root, st.assign(image=["img/ok.png"] * len(st)), cl, {"name": "policy"})
    table = pd.read_parquet(root / "stickers.parquet").assign(image=st["image"])
    table.to_parquet(root / "stickers.parquet", index=False)  # as a hand-edited dataset would
    return root


def _link(name: str, target: str):
    def setup(root: Path) -> None:
        os.symlink(root.parent / target if target else root.parent, root / "img" / name)
    return setup


POLICY_CASES = {
    "dot-dot": ("../secret.txt", None, "leaves the dataset directory"),
    "dot-dot-inside": ("img/../../secret.txt", None, "leaves the dataset directory"),
    "absolute": ("{tmp}/secret.txt", None, "is an absolute path"),
    "symlinked-file": ("img/link.png", _link("link.png", "secret.txt"),
                       "is a symlink to a file outside the dataset directory"),
    "symlinked-folder": ("img/up/secret.txt", _link("up", ""),
                         "symlinked folder that leads outside"),
}


@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_image_paths_leaving_the_dataset_are_refused_naming_the_row(case, tmp_path):
    from bench.data.format import load_dataset
    from bench.errors import DatasetError
    image, setup, why = POLICY_CASES[case]
    root = _policy_dataset(tmp_path, image.format(tmp=tmp_path), setup)
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert info.value.row == 4 and info.value.column == "image"
    assert "stickers.parquet, row 4, column 'image'" in str(info.value) and why in str(info.value)


@pytest.mark.parametrize("case", ["dot-dot", "symlinked-file"])
def test_image_paths_leaving_the_dataset_skipped_are_counted_and_never_read(case, tmp_path,
                                                                            caplog):
    from bench.data.format import load_dataset
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    image, setup, _ = POLICY_CASES[case]
    root = _policy_dataset(tmp_path, image, setup)
    ds = load_dataset(root, on_invalid="skip")
    assert ds.skipped == {"image_outside_dataset": 1}
    assert pd.isna(ds.stickers.loc[4, "image"])
    assert ds.stickers["image"].eq("img/ok.png").sum() == len(ds.stickers) - 1
    assert "1 image paths leave the dataset directory" in caplog.text
    _, emb, report = attach_features(ds, {"ocr": False, "encoder": "style-stats"},
                                     FeatureCache(tmp_path / "cache"), progress=False)
    assert report["embed_missing_by_reason"] == {"no_image": 1}
    assert np.linalg.norm(emb[4]) == 0


def test_image_path_outside_the_dataset_in_a_run_is_one_line(tmp_path, capsys, isolated_cache):
    root = _policy_dataset(tmp_path, "../secret.txt")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    code, out, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, "stickers.parquet, row 4, column 'image'",
                          "'../secret.txt' leaves the dataset directory", "--skip-invalid")
    assert not (tmp_path / "out").exists()


def test_writing_a_dataset_with_an_outside_image_path_is_refused(tmp_path):
    from bench.errors import DatasetError
    st, cl = make_tiny_frames()
    (tmp_path / "secret.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="row 0, column 'image'"):
        write_dataset(tmp_path / "ds", st.assign(image=["../secret.png"] + [None] * 14), cl, {})


# ------------------------------------------------------------------------------- integrity

def _images_dataset(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    rows = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        Image.new("RGB", (16, 16), colour).save(root / "img" / f"s{i}.png")
        rows.append({"sticker_id": f"s{i}", "image": f"img/s{i}.png", "text": f"{colour} cat"})
    clicks = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "query": ["cat", "red", "blue"],
                           "sticker_id": ["s0", "s0", "s1"], "ts": [1, 2, 3]})
    write_dataset(root, pd.DataFrame(rows), clicks, {"name": "imgs"})
    return root


def test_dataset_json_records_a_files_digest(tmp_path):
    meta = json.loads((_images_dataset(tmp_path / "ds") / "dataset.json").read_text())
    assert len(meta["files_digest"]) == 16 and len(meta["fingerprint"]) == 16


def test_changed_images_with_a_kept_dataset_json_do_not_reuse_cached_features(tmp_path, caplog):
    from bench.data.format import load_dataset
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    root = _images_dataset(tmp_path / "ds")
    cache = FeatureCache(tmp_path / "cache")
    features = {"ocr": False, "encoder": "style-stats"}
    before = load_dataset(root)
    _, emb_before, _ = attach_features(before, features, cache, progress=False)
    meta_before = json.loads((root / "dataset.json").read_text())
    Image.new("RGB", (16, 16), "black").save(root / "img" / "s2.png")  # dataset.json kept
    after = load_dataset(root)
    assert after.fingerprint != before.fingerprint
    assert after.meta["stale_fingerprint"] == before.fingerprint
    assert "the files changed since dataset.json was written" in caplog.text
    _, emb_after, report = attach_features(after, features, cache, progress=False)
    assert not np.allclose(emb_after[2], emb_before[2])  # recomputed from the new pixels
    meta = json.loads((root / "dataset.json").read_text())  # refreshed for the next load
    assert meta["fingerprint"] == after.fingerprint != meta_before["fingerprint"]
    assert "stale_fingerprint" not in load_dataset(root).meta


def test_touched_but_unchanged_files_keep_the_fingerprint_quietly(tmp_path, caplog):
    from bench.data.format import load_dataset
    root = _images_dataset(tmp_path / "ds")
    fp = load_dataset(root).fingerprint
    digest = json.loads((root / "dataset.json").read_text())["files_digest"]
    os.utime(root / "img" / "s1.png", ns=(1, 1))  # a copy without -p: new mtimes, same bytes
    caplog.clear()
    ds = load_dataset(root)
    assert ds.fingerprint == fp and "stale_fingerprint" not in ds.meta
    assert "changed" not in caplog.text
    assert json.loads((root / "dataset.json").read_text())["files_digest"] != digest


def test_a_built_dataset_changed_after_the_build_is_rebuilt(tmp_path, isolated_cache, caplog):
    from bench.config import DatasetSpec
    from bench.data.resolve import resolve_dataset
    spec = DatasetSpec(builder="synthetic", params={"n_stickers": 30, "n_users": 6, "seed": 1},
                       out=str(tmp_path / "built"))
    first = resolve_dataset(spec)
    image = next((tmp_path / "built").rglob("*.png"))
    original = image.read_bytes()
    Image.new("RGB", (8, 8), "black").save(image)
    again = resolve_dataset(spec)
    assert "changed after it was built; building it again" in caplog.text
    assert image.read_bytes() == original and again.fingerprint == first.fingerprint


# ------------------------------------------------------------- decoding errors in parquet files

def _bad_utf8(root: Path, file: str, column: str, row: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pq.read_table(root / file)
    raw = [None if v is None else v.encode() for v in table.column(column).to_pylist()]
    raw[row] = b"caf\xe9"
    table = table.set_column(table.schema.get_field_index(column), column,
                             pa.array(raw, pa.binary()).view(pa.string()))
    pq.write_table(table, root / file)


@pytest.mark.parametrize("file, column, row", [("interactions.parquet", "query", 5),
                                               ("stickers.parquet", "text", 3),
                                               ("stickers.parquet", "sticker_id", 7)])
def test_invalid_utf8_in_a_parquet_string_column_names_file_row_and_column(
        file, column, row, tiny_dataset, tmp_path, capsys):
    _bad_utf8(tiny_dataset, file, column, row)
    code, _, err = run_main(capsys, "datasets", "describe", str(tiny_dataset))
    assert_one_line_error(code, err, f"{file}, row {row}, column {column!r}",
                          "not valid UTF-8")
