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


# ==================================================================== hardening (issue 17)
# Each test below fails on the code before issue 17 (7e84d1f) and passes after.

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


# ---------------------------------------------------------------------- builders stay inside

EMOJI_CSV = ("hexcode,emoji,label,group,subgroup,tags,keywords\n"
             "1F600,😀,grinning face,smileys,face-smiling,face|grin|happy,happy|joy\n"
             "1F622,😢,crying face,smileys,face-concerned,cry|sad|tear,sad|tears\n")


def _emoji_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "images" / "noto").mkdir(parents=True)
    (src / "emoji.csv").write_text(EMOJI_CSV, encoding="utf-8")
    for hx in ("1F600", "1F622"):
        Image.new("RGBA", (8, 8), "red").save(src / "images" / "noto" / f"{hx}.png")
    (tmp_path / "secret.txt").write_text("the secret\n", encoding="utf-8")
    return src


def test_emoji_builder_refuses_a_symlinked_image_leading_out_of_the_source(tmp_path, capsys):
    src = _emoji_source(tmp_path)
    (src / "images" / "noto" / "1F622.png").unlink()
    os.symlink(tmp_path / "secret.txt", src / "images" / "noto" / "1F622.png")
    code, _, err = run_main(capsys, "datasets", "build", "emoji-styles", "--source", str(src),
                            "--out", str(tmp_path / "out"), "--param", "n_users=5")
    assert_one_line_error(code, err, "1F622.png", "source file leads outside", str(src))
    assert not (tmp_path / "out" / "images" / "noto" / "1F622.png").exists()


def test_emoji_builder_refuses_a_symlinked_readme_leading_out_of_the_source(tmp_path, capsys):
    src = _emoji_source(tmp_path)
    os.symlink(tmp_path / "secret.txt", src / "README.md")
    code, _, err = run_main(capsys, "datasets", "build", "emoji-styles", "--source", str(src),
                            "--out", str(tmp_path / "out"), "--param", "n_users=5")
    assert_one_line_error(code, err, "README.md", "source file leads outside")
    assert not (tmp_path / "out" / "SOURCE-README.md").exists()


def test_emoji_builder_refuses_a_style_that_climbs_out_and_deletes_nothing(tmp_path, capsys):
    src = _emoji_source(tmp_path)
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "1F600.png").write_bytes(b"keep me")
    (tmp_path / "a" / "b" / "x").mkdir(parents=True)  # where OUT/images/../../x points
    (tmp_path / "a" / "b" / "x" / "1F600.png").write_bytes(b"keep me too")
    out = tmp_path / "a" / "b" / "out"
    code, _, err = run_main(capsys, "datasets", "build", "emoji-styles", "--source", str(src),
                            "--out", str(out), "--param", "styles=../../x")
    assert_one_line_error(code, err, "'../../x' is not a style folder name")
    assert (victim / "1F600.png").read_bytes() == b"keep me"
    assert (tmp_path / "a" / "b" / "x" / "1F600.png").read_bytes() == b"keep me too"


def test_copy_image_never_reads_or_deletes_outside_its_folders(tmp_path):
    from bench.data.source_io import copy_image
    from bench.errors import DatasetError
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(b"a")
    (tmp_path / "victim.png").write_bytes(b"keep")
    with pytest.raises(DatasetError, match="output file leads outside"):
        copy_image(src / "a.png", out / "images" / ".." / ".." / "victim.png", source=src, out=out)
    assert (tmp_path / "victim.png").read_bytes() == b"keep"
    with pytest.raises(DatasetError, match="source file leads outside"):
        copy_image(src / ".." / "victim.png", out / "v.png", source=src, out=out)
    out.mkdir()
    os.symlink(tmp_path, out / "images")  # a symlinked folder inside --out leading out of it
    with pytest.raises(DatasetError, match="output folder leads outside"):
        copy_image(src / "a.png", out / "images" / "victim.png", source=src, out=out)
    assert (tmp_path / "victim.png").read_bytes() == b"keep"
    copy_image(src / "a.png", out / "ok" / "a.png", source=src, out=out)
    assert (out / "ok" / "a.png").read_bytes() == b"a"


def test_sticker_queries_builder_refuses_an_id_that_climbs_out(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "secret.gif").write_bytes(b"GIF89a secret")
    (tmp_path / "q.csv").write_bytes(SQ_HEADER + b'../secret.gif,"hello, hi"\n'
                                     + b'ok.gif,"bye"\n')
    code, _, err = run_main(capsys, "datasets", "build", "sticker-queries", "--source",
                            str(tmp_path / "q.csv"), "--out", str(tmp_path / "out"),
                            "--param", f"images={tmp_path / 'imgs'}")
    assert_one_line_error(code, err, "leads outside")
    assert not list((tmp_path / "out").rglob("secret.gif")) if (tmp_path / "out").exists() \
        else True


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


# -------------------------------------------------------------------- bounds checked before work

def test_yaml_alias_bomb_is_refused_fast_with_a_short_message(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 30)
                     + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size < 2000
    t0 = time.perf_counter()
    code, _, err = run_main(capsys, "run", str(path))
    assert time.perf_counter() - t0 < 5
    line = assert_one_line_error(code, err, "bomb.yaml", "240 YAML aliases (more than 200)")
    assert len(line) < 300


def test_yaml_over_one_megabyte_is_refused(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 120_000, encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(path))
    assert_one_line_error(code, err, "big.yaml", "larger than 1000 kB")


@pytest.mark.parametrize("extra", [{"seed": "y" * 10_000}, {"z" * 10_000: 1},
                                   {"ks": ["w" * 10_000]}])
def test_config_errors_echo_at_most_a_short_excerpt(extra, tiny_dataset, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, **extra)
    code, _, err = run_main(capsys, "run", str(cfg))
    line = assert_one_line_error(code, err, "c.yaml")
    assert len(line) < 400, len(line)


def test_huge_k_is_capped_by_the_corpus(tiny_dataset, tmp_path, capsys, isolated_cache):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, ks=[15, 1_000_000_000],
                       retrievers=[{"name": "bm25"}, {"name": "random"}])
    t0 = time.perf_counter()
    code, _, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    assert time.perf_counter() - t0 < 60
    table = pd.read_csv(next((tmp_path / "out").glob("*/results.csv"))).set_index("retriever")
    for metric in ("m_mrr", "recall", "ndcg", "mrr"):
        np.testing.assert_allclose(table[f"{metric}_at_1000000000"], table[f"{metric}_at_15"])
    assert table.loc["random", "recall_at_1000000000"] == 1.0


def test_per_request_allocates_only_as_deep_as_the_longest_ranking():
    import tracemalloc

    from bench.metrics import per_request
    rankings = {i: [f"s{j}" for j in range(10)] for i in range(2000)}
    relevant = {i: {"s0", "s3"} for i in range(2000)}
    tracemalloc.start()
    frame = per_request(rankings, relevant, ks=[5, 10**9])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20  # 2000 requests x 10**9 would be terabytes
    assert frame["m_mrr_at_1000000000"].iloc[0] == pytest.approx(1 + 1 / 4)
    assert frame["recall_at_1000000000"].eq(1.0).all()


# ------------------------------------------------------------------- TREC readers: BOM, empty

def _trec_pair(tmp_path: Path, bom: bool) -> tuple[Path, Path]:
    prefix = "\ufeff" if bom else ""
    run = tmp_path / ("bom.run" if bom else "plain.run")
    run.write_text(prefix + "q1 Q0 a 1 2.0 t\nq1 Q0 b 2 1.0 t\nq2 Q0 c 1 1.0 t\n",
                   encoding="utf-8")
    qrels = tmp_path / ("bom.qrels" if bom else "plain.qrels")
    qrels.write_text(prefix + "q1 0 a 1\nq2 0 d 1\n", encoding="utf-8")
    return run, qrels


def test_bom_in_trec_files_is_stripped_with_a_warning(tmp_path, caplog):
    from bench.evaluate import evaluate_files
    plain = evaluate_files(*_trec_pair(tmp_path, bom=False), ks=[1, 5])
    with_bom = evaluate_files(*_trec_pair(tmp_path, bom=True), ks=[1, 5])
    assert with_bom["macro"] == plain["macro"] and plain["macro"]["m_mrr_at_5"] == 0.5
    assert with_bom["n_requests"] == 2 and with_bom["n_run_only"] == 0
    assert caplog.text.count("byte-order mark (BOM); ignored") == 2


def test_empty_run_file_is_warned_about(tmp_path, capsys, caplog):
    run, qrels = _trec_pair(tmp_path, bom=False)
    run.write_text("", encoding="utf-8")
    code, out, err = run_main(capsys, "evaluate", "--run", str(run), "--qrels", str(qrels),
                              "--k", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["m_mrr_at_1"] == 0.0
    assert "holds no ranked results: every request scores 0" in caplog.text + err


# ------------------------------------------------------------------ names that would be paths

@pytest.mark.parametrize("field, value", [("name", "../escaped"), ("name", "/tmp/abs"),
                                          ("label", "../../escaped"), ("label", "a/b")])
def test_names_and_labels_that_are_not_one_folder_are_refused(field, value, tiny_dataset,
                                                              tmp_path, capsys, isolated_cache):
    extra = {"name": value} if field == "name" else \
        {"retrievers": [{"name": "bm25", "label": value}]}
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, **extra)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, repr(value), "cannot be used as a folder name")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- secrets

def test_resolved_config_yaml_masks_tracking_credentials(tiny_dataset, tmp_path, capsys,
                                                         isolated_cache):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path,
                       tracking={"enabled": False, "uri": "http://alice:s3cret@mlflow:5000"})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    written = next((tmp_path / "out").glob("*/config.yaml")).read_text(encoding="utf-8")
    assert "s3cret" not in written and "http://***@mlflow:5000" in written
    assert "s3cret" not in out + err


def test_mlflow_view_run_lines_never_print_credentials(tmp_path, monkeypatch, capsys):
    """MLflow's own "🏃 View run ... at: <url>" lines (printed when a run ends on an HTTP
    server) are silenced when the URI holds credentials."""
    from mlflow.entities import Run, RunData, RunInfo

    from bench.tracking import Tracker
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    tracker = Tracker("http://alice:s3cret@127.0.0.1:9")
    service = tracker.client._tracking_client
    info = RunInfo(run_id="r1", experiment_id="1", user_id="u", status="RUNNING",
                   start_time=0, end_time=None, lifecycle_stage="active", run_name="demo")
    monkeypatch.setattr(service.store, "get_run", lambda run_id: Run(info, RunData()))
    capsys.readouterr()
    service._log_url("r1")
    out = capsys.readouterr().out
    assert "s3cret" not in out and "View run" not in out
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    plain = Tracker("http://127.0.0.1:9")  # no credentials: MLflow's link stays
    monkeypatch.setattr(plain.client._tracking_client.store, "get_run",
                        lambda run_id: Run(info, RunData()))
    plain.client._tracking_client._log_url("r1")
    assert "View run demo at: http://127.0.0.1:9/#/experiments/1/runs/r1" in \
        capsys.readouterr().out


# --------------------------------------------------------------------- a malicious checkpoint

def test_malicious_checkpoint_is_refused_in_one_line_without_running_it(tmp_path):
    import pickle

    from bench.errors import BenchError
    from bench.vlm.train import check_checkpoint
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "last.ckpt"
    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(BenchError) as info:
        check_checkpoint(ckpt)
    assert not marker.exists()
    msg = str(info.value)
    assert "\n" not in msg and str(ckpt) in msg and "--no-resume" in msg
    import torch
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "ok.ckpt")
    check_checkpoint(tmp_path / "ok.ckpt")  # plain tensors load
