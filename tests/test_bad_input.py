"""Bad input, one test per case (issue 9): either a one-line error that names the input (exit 2,
no traceback) or the input is handled and whatever was skipped is counted where people look.

Covered elsewhere and not repeated here: the loader's structural checks (missing/extra columns,
wrong types, zero-byte/garbage/truncated parquet, bad dataset.json, duplicate ids, unknown
stickers and empty queries with on_invalid="skip") in tests/test_format.py; builder errors that
name line and column (emoji-styles CSV, sticker-queries CSV, PerSRV JSON lines) in
tests/test_data_builders.py; top-level config typos in tests/test_cli.py and tests/test_config.py.
This file adds what the command line shows for those cases and the cases those files do not have.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bench.data.format import write_dataset
from bench.retrieval import Request, TrainView
from bench.registry import make_retriever

from conftest import make_tiny_frames, run_main

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------- helpers


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout,
                          env={**os.environ, "PERSRV_BENCH_QUIET": "1"})


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2, stderr is exactly one ``error: ...`` line holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tiny_view(extra_clicks: pd.DataFrame | None = None, embeddings: bool = True) -> TrainView:
    """TrainView over the conftest tiny corpus (15 stickers, 12 users), all clicks as history."""
    stickers, clicks = make_tiny_frames()
    emb = np.stack([np.asarray(e, dtype=np.float32) for e in stickers["embedding"]])
    if extra_clicks is not None:
        clicks = pd.concat([clicks, extra_clicks], ignore_index=True)
    return TrainView(stickers=stickers.drop(columns=["embedding", "gt_style", "gt_topic"]),
                     clicks=clicks, embeddings=emb if embeddings else None)


def write_config(path: Path, dataset: Path | str, tmp_path: Path, **extra) -> Path:
    raw = {"name": "bad-input", "dataset": {"path": str(dataset)},
           "retrievers": [{"name": "bm25"}, {"name": "popularity"}],
           "features": {"ocr": False, "encoder": None}, "report": False,
           "output_dir": str(tmp_path / "out"), "tracking": {"enabled": False}}
    for key, value in extra.items():
        raw[key] = value
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def dataset_with(tmp_path: Path, name: str, clicks: pd.DataFrame | None = None) -> Path:
    """The tiny dataset written as ``name``; ``clicks`` (possibly invalid) then replace its
    interactions file, as a hand-edited or foreign dataset would."""
    st, cl = make_tiny_frames()
    write_dataset(tmp_path / name, st, cl, {"name": name})
    if clicks is not None:
        clicks.to_parquet(tmp_path / name / "interactions.parquet", index=False)
    return tmp_path / name


# ----------------------------------------------------------------------- sticker image files

def _bad_image_dataset(root: Path):
    """Two good images, then missing, zero-byte, truncated, non-image, video and no image."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (220, 30, 30)).save(root / "img" / "red.png")
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((20, 40, 220, 255), (16, 16, 48, 48))
    img.save(root / "img" / "blue.png")
    (root / "img" / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PNG")
    (root / "img" / "truncated.png").write_bytes(buf.getvalue()[:70])
    (root / "img" / "text.png").write_text("this is not an image\n", encoding="utf-8")
    (root / "img" / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 64)
    images = {"red": "img/red.png", "blue": "img/blue.png", "missing": "img/missing.png",
              "zero": "img/zero.png", "truncated": "img/truncated.png", "text": "img/text.png",
              "video": "img/clip.webm", "none": None}
    stickers = pd.DataFrame({"sticker_id": list(images), "image": list(images.values()),
                             "text": [f"{k} sticker" for k in images]})
    clicks = pd.DataFrame({"user_id": ["u1"] * 3, "query": ["red", "blue", "red"],
                           "sticker_id": ["red", "blue", "red"], "ts": [1, 2, 3]})
    return write_dataset(root, stickers, clicks, {"name": "bad-images"})


EXPECTED_MISSING = {"no_image": 1, "missing": 1, "empty": 1, "video": 1, "truncated": 1,
                    "unreadable": 1}


def test_bad_image_files_get_zero_embeddings_and_are_counted(tmp_path, caplog):
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    ds = _bad_image_dataset(tmp_path / "ds")
    stickers, emb, report = attach_features(ds, {"ocr": False, "encoder": "style-stats"},
                                            FeatureCache(tmp_path / "cache"), progress=False)
    assert report["embed_missing"] == 6
    assert report["embed_missing_by_reason"] == EXPECTED_MISSING
    norms = dict(zip(stickers["sticker_id"], np.linalg.norm(emb, axis=1)))
    assert norms["red"] == pytest.approx(1.0, abs=1e-5)
    assert norms["blue"] == pytest.approx(1.0, abs=1e-5)
    assert all(norms[s] == 0 for s in ("missing", "zero", "truncated", "text", "video", "none"))
    assert "6 of 8 stickers have no usable image" in caplog.text


@pytest.mark.skipif(not __import__("bench.features.ocr", fromlist=["x"]).tesseract_available(),
                    reason="tesseract not installed")
def test_bad_image_files_get_empty_ocr_text_and_are_counted(tmp_path, caplog):
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    ds = _bad_image_dataset(tmp_path / "ds")
    stickers, _, report = attach_features(ds, {"ocr": {"workers": 1}, "encoder": None},
                                          FeatureCache(tmp_path / "cache"), progress=False)
    assert report["ocr_missing"] == 6 and report["ocr_missing_by_reason"] == EXPECTED_MISSING
    assert report["ocr_computed"] == 8
    text = dict(zip(stickers["sticker_id"], stickers["ocr_text"]))
    assert all(text[s] == "" for s in ("missing", "zero", "truncated", "text", "video", "none"))
    assert "OCR: 6 of 8 stickers have no readable image" in caplog.text


def test_bad_image_files_in_a_run_are_reported_and_kept_with_the_results(tmp_path, capsys,
                                                                       isolated_cache):
    ds = _bad_image_dataset(tmp_path / "ds")
    cfg = write_config(tmp_path / "c.yaml", ds.root, tmp_path,
                       features={"ocr": False, "encoder": "style-stats"},
                       split={"val_groups": 0, "min_train_groups": 1})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    assert "embeddings: 6 stickers without a usable image (no_image=1, missing=1, empty=1, " \
           "video=1, truncated=1, unreadable=1)" in out
    report_file = next((tmp_path / "out").glob("bad-input-*/data_report.json"))
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["features"]["embed_missing_by_reason"] == EXPECTED_MISSING


# ------------------------------------------------------------------- source files of builders

SQ_HEADER = b"sticker_id,labeled_queries\n"
EMOJI_HEADER = b"hexcode,label,group,subgroup,tags,keywords\n"
PERSRV_HEADER = b"uid,query,docid\n"


def _emoji_folder(root: Path, csv: bytes) -> Path:
    (root / "images" / "noto").mkdir(parents=True)
    Image.new("RGBA", (8, 8)).save(root / "images" / "noto" / "1F600.png")
    (root / "emoji.csv").write_bytes(csv)
    return root


# (builder, files {name: bytes}, source, params, words the one-line error must hold)
SOURCE_CASES = {
    "sticker-queries-not-utf8": (
        "sticker-queries", {"q.csv": SQ_HEADER + b'1.gif,"caf\xe9, ok"\n'}, "q.csv", {},
        ["q.csv, row 2", "not valid UTF-8 (byte 0xe9"]),
    "sticker-queries-broken-quote": (
        "sticker-queries", {"q.csv": SQ_HEADER + b'1.gif,"open, quote\n2.gif,x\n'}, "q.csv", {},
        ["q.csv, row 3", "malformed CSV"]),
    "sticker-queries-extra-field": (
        "sticker-queries", {"q.csv": SQ_HEADER + b"1.gif,a,b\n"}, "q.csv", {},
        ["q.csv, row 2", "expected 2 fields"]),
    "sticker-queries-empty-file": (
        "sticker-queries", {"q.csv": b""}, "q.csv", {}, ["q.csv", "file is empty"]),
    "emoji-styles-not-utf8": (
        "emoji-styles", {"emoji.csv": EMOJI_HEADER + b"1F600,grin\xe9,g,s,a,b\n"}, ".", {},
        ["emoji.csv, row 2", "not valid UTF-8"]),
    "emoji-styles-broken-quote": (
        "emoji-styles", {"emoji.csv": EMOJI_HEADER + b'1F600,"grin,g,s,a,b\n'}, ".", {},
        ["emoji.csv, row 2", "malformed CSV"]),
    "emoji-styles-missing-column": (
        "emoji-styles", {"emoji.csv": b"hexcode,label\n1F600,grin\n"}, ".", {},
        ["emoji.csv, row 1, column 'group'", "required column is missing"]),
    "persrv-csv-not-utf8": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,caf\xe9,d1\n"}, "c.csv", {},
        ["c.csv, row 2", "not valid UTF-8"]),
    "persrv-csv-broken-quote": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b'u1,"a\n'}, "c.csv", {},
        ["c.csv, row 2", "malformed CSV"]),
    "persrv-csv-missing-column": (
        "persrv-csv", {"c.csv": b"uid,query\nu1,a\n"}, "c.csv", {},
        ["c.csv, row 1, column 'docid'", "required column is missing"]),
    "persrv-jsonl-malformed": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,a,d1\n",
                       "m.jsonl": b'{"docid": "d1"}\n{"docid": "d2", "paddleocr": "x"\n'},
        "c.csv", {"stickers": "m.jsonl"}, ["m.jsonl, row 2", "malformed JSON"]),
    "persrv-jsonl-not-utf8": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,a,d1\n",
                       "m.jsonl": b'{"docid": "d1", "paddleocr": "caf\xe9"}\n'},
        "c.csv", {"stickers": "m.jsonl"}, ["m.jsonl, row 1", "not valid UTF-8"]),
    "persrv-jsonl-not-an-object": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,a,d1\n", "m.jsonl": b'["d1"]\n'},
        "c.csv", {"stickers": "m.jsonl"}, ["m.jsonl, row 1", "expected a JSON object"]),
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_malformed_source_files_are_one_line_errors(case, tmp_path, capsys):
    builder, files, source, params, needles = SOURCE_CASES[case]
    src = tmp_path / "src"
    if builder == "emoji-styles":
        _emoji_folder(src, files["emoji.csv"])
    else:
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
    args = ["datasets", "build", builder, "--source", str(src / source), "--out",
            str(tmp_path / "out")]
    for key, value in params.items():
        args += ["--param", f"{key}={src / value}"]
    code, _, err = run_main(capsys, *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_non_utf8_csv_from_a_real_process_is_one_line(tmp_path):
    """The same, through ``python -m bench`` (what a user's shell sees)."""
    (tmp_path / "q.csv").write_bytes(SQ_HEADER + b'1.gif,"caf\xe9"\n')
    out = run_cli("datasets", "build", "sticker-queries", "--source", str(tmp_path / "q.csv"),
                  "--out", str(tmp_path / "out"))
    assert out.stdout == ""
    assert_one_line_error(out.returncode, out.stderr, "q.csv, row 2", "not valid UTF-8")


# ------------------------------------------------------------------------------ empty queries

def test_empty_query_is_a_one_line_error_or_skipped_and_counted(tmp_path, capsys):
    st, cl = make_tiny_frames()
    cl.loc[3, "query"] = "   "
    root = dataset_with(tmp_path, "emptyq", clicks=cl)
    code, _, err = run_main(capsys, "datasets", "describe", str(root))
    assert_one_line_error(code, err, "interactions.parquet, row 3, column 'query'",
                          "empty query", "--skip-invalid")
    code, out, err = run_main(capsys, "datasets", "describe", str(root), "--skip-invalid",
                              "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["skipped"] == {"empty_query": 1} and stats["clicks"] == len(cl) - 1


@pytest.mark.parametrize("name", ["bm25", "popularity", "persrv", "persrv-no-personalization"])
def test_empty_and_punctuation_only_requests_return_a_valid_ranking(name):
    view = tiny_view()
    retriever = make_retriever(name).fit(view)
    requests = [Request("u0", q) for q in ("", "   ", "!!! ...", "\t\n")]
    run = retriever.search(requests, 10)
    for r in requests:
        ids = run.ids(r)
        assert len(ids) == len(set(ids)) <= 10
        if name == "popularity":
            assert len(ids) == 10  # the same list for every request
        else:
            assert ids == []  # nothing matches a query without a token


# --------------------------------------------------------------------------- very long queries

LONG = ("so happy " * 1200)[:10_000]


@pytest.mark.parametrize("name", ["bm25", "popularity", "persrv", "persrv-no-personalization",
                                  "random"])
def test_10000_character_query(name):
    assert len(LONG) == 10_000
    retriever = make_retriever(name).fit(tiny_view())
    t0 = time.perf_counter()
    run = retriever.search([Request("u0", LONG), Request("u1", "x" * 10_000)], 5)
    assert time.perf_counter() - t0 < 10
    ids = run.ids(Request("u0", LONG))
    assert len(ids) == len(set(ids)) and 0 < len(ids) <= 5
    if name.startswith(("bm25", "persrv")):
        assert ids[0].startswith("happy-")  # the query's words still count
        assert run.ids(Request("u1", "x" * 10_000)) == []  # one 10,000-letter token: no match


@pytest.mark.slow
def test_dense_text_long_emoji_and_empty_queries(isolated_cache):
    """The transformer's tokenizer truncates a 10,000-character query; emoji-only, mixed-script
    and empty queries are encoded too (dense retrieval always returns k stickers)."""
    retriever = make_retriever("dense-text").fit(tiny_view())
    requests = [Request("u0", q) for q in (LONG, "😂😂", "ok 好的 👍", "", "   ")]
    run = retriever.search(requests, 5)
    for r in requests:
        ids = run.ids(r)
        assert len(ids) == len(set(ids)) == 5
        assert all(np.isfinite(s) for _, s in run[r])
    assert run.ids(requests[0])[0].startswith("happy-")


# ------------------------------------------------------------------- emoji and mixed scripts

def _multiscript_view() -> TrainView:
    stickers = pd.DataFrame({
        "sticker_id": ["lol", "ok", "night", "plain"],
        "image": [None] * 4,
        "text": ["laughing 😂 哈哈哈", "好的 ok 👍", "晚安 good night 🌙", "nothing here"],
    })
    clicks = pd.DataFrame({"user_id": ["a", "a", "b"], "query": ["哈哈", "ok", "晚安"],
                           "sticker_id": ["lol", "ok", "night"], "ts": [1, 2, 3]})
    emb = np.eye(4, dtype=np.float32)
    return TrainView(stickers=stickers, clicks=clicks, embeddings=emb)


@pytest.mark.parametrize("name", ["bm25", "persrv", "persrv-no-personalization", "popularity"])
@pytest.mark.parametrize("query, top", [("😂😂", "lol"), ("ok 好的 👍", "ok"), ("🌙", "night"),
                                        ("晚安👍", None)])
def test_emoji_only_and_mixed_script_queries(name, query, top):
    retriever = make_retriever(name).fit(_multiscript_view())
    ids = retriever.search([Request("a", query), Request("stranger", query)], 10).ids(
        Request("a", query))
    assert len(ids) == len(set(ids))
    if name == "popularity":
        assert len(ids) == 4
    elif top is not None:
        assert ids[0] == top
    else:  # "晚安👍" touches two stickers
        assert set(ids[:2]) == {"night", "ok"}


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


# ----------------------------------------------------------------- unknown users (cold start)

@pytest.mark.parametrize("full, plain", [("persrv", "persrv-no-personalization"),
                                         ("persrv-no-utility", "persrv-bm25")])
def test_unknown_user_is_served_unpersonalised(full, plain):
    view = tiny_view()
    a, b = make_retriever(full).fit(view), make_retriever(plain).fit(view)
    queries = ["so happy", "crying", "i love you", "sleepy tired"]
    cold = [Request("never-seen", q) for q in queries]
    ra, rb = a.search(cold, 20), b.search(cold, 20)
    for r in cold:
        assert ra[r] == rb[r] and len(ra[r]) > 0
    # ... while a user with history does get re-ranked (the comparison is not vacuous)
    warm = [Request(f"u{i}", q) for i in range(12) for q in queries]
    wa, wb = a.search(warm, 20), b.search(warm, 20)
    assert any(wa.ids(r) != wb.ids(r) for r in warm)


def test_user_with_a_single_history_click():
    solo = pd.DataFrame({"user_id": ["solo"], "query": ["so happy"],
                         "sticker_id": ["happy-3d"], "ts": [1]})
    view = tiny_view(extra_clicks=solo)
    persrv = make_retriever("persrv").fit(view)
    plain = make_retriever("persrv-no-personalization").fit(view)
    reqs = [Request("solo", "so happy"), Request("solo", "crying")]
    run, base = persrv.search(reqs, 10), plain.search(reqs, 10)
    # one click = one cluster of radius 0: only the clicked sticker itself is boosted
    assert run.ids(reqs[0])[0] == "happy-3d" and base.ids(reqs[0])[0] != "happy-3d"
    assert dict(run[reqs[0]])["happy-3d"] > dict(base[reqs[0]])["happy-3d"]
    assert run[reqs[1]] == base[reqs[1]]


# --------------------------------------------------------------------- k larger than the corpus

@pytest.mark.parametrize("name", ["bm25", "popularity", "random", "persrv",
                                  "persrv-no-personalization", "persrv-bm25"])
def test_k_larger_than_the_corpus(name):
    retriever = make_retriever(name).fit(tiny_view())
    reqs = [Request("u0", "so happy"), Request("u3", "hearts kiss tears crying")]
    run = retriever.search(reqs, 1000)
    for r in reqs:
        ids = run.ids(r)
        assert 0 < len(ids) <= 15 and len(ids) == len(set(ids))
        scores = [s for _, s in run[r]]
        assert scores == sorted(scores, reverse=True)
    if name in ("popularity", "random"):
        assert all(len(run.ids(r)) == 15 for r in reqs)


def test_run_with_cutoffs_beyond_the_corpus(tiny_dataset, tmp_path, capsys, isolated_cache):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, ks=[1, 100],
                       retrievers=[{"name": "bm25"}, {"name": "persrv"}, {"name": "random"}])
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    table = pd.read_csv(next((tmp_path / "out").glob("*/results.csv")))
    assert list(table["status"]) == ["ok"] * 3
    table = table.set_index("retriever")
    assert table.loc["random", "recall_at_100"] == 1.0  # the whole corpus is ranked
    assert table[["m_mrr_at_100", "recall_at_100", "ndcg_at_100"]].notna().all().all()


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


# ------------------------------------------------------------------------------ config typos

@pytest.mark.parametrize("extra, needles", [
    ({"seeed": 1}, ["unknown key 'seeed'"]),
    ({"split": {"test_group": 1}}, ["unknown key 'split.test_group'"]),
    ({"retrievers": [{"name": "bm25", "parms": {}}]}, ["unknown key 'retrievers.0.parms'"]),
    ({"retrievers": [{"name": "bm25"}, {"name": "bm52"}]},
     ["retrievers.1 (bm52): unknown retriever 'bm52'", "Did you mean 'bm25'?"]),
    ({"retrievers": [{"name": "persrv", "params": {"n_cluster": 3}}]},
     ["retrievers.0 (persrv)", "no parameter 'n_cluster'", "Did you mean 'n_clusters'?"]),
    ({"features": {"ocr": {"psmm": 6}}}, ["features.ocr.psmm: unknown key"]),
    ({"features": {"encoder": "clip"}}, ["features.encoder", "unknown encoder 'clip'"]),
])
def test_config_typo_is_named_before_any_work(extra, needles, tiny_dataset, tmp_path, capsys,
                                              monkeypatch):
    import bench.runner as runner

    def boom(*a, **k):
        raise AssertionError("the dataset must not be loaded")

    monkeypatch.setattr(runner, "prepare", boom)
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, **extra)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_dataset_builder_param_typo_is_named(tmp_path, capsys):
    code, _, err = run_main(capsys, "datasets", "build", "synthetic", "--out",
                            str(tmp_path / "o"), "--param", "n_sticker=10")
    assert_one_line_error(code, err, "unknown parameter 'n_sticker'", "n_stickers")
    assert not (tmp_path / "o").exists()


def test_config_typo_from_a_real_process(tiny_dataset, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path,
                       retrievers=[{"name": "bm25", "params": {"k_1": 1.5}}])
    out = run_cli("run", str(cfg))
    assert_one_line_error(out.returncode, out.stderr, "no parameter 'k_1'", "Did you mean 'k1'?")
