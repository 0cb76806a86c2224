"""bench/progress.py: periodic one-line progress when stderr is not a terminal, tqdm on one,
nothing under PERSRV_BENCH_QUIET; and the stages that use it (feature cache, OCR, embeddings)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import progress as progress_mod
from bench.features.cache import FeatureCache
from bench.progress import Progress, encode_with_progress, track


@pytest.fixture(autouse=True)
def _not_quiet(monkeypatch):
    monkeypatch.delenv("PERSRV_BENCH_QUIET", raising=False)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bench.progress"]


def test_periodic_lines_every_ten_percent_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="bench.progress")
    with Progress(1000, "OCR", "stickers", rate_unit="img", delay_s=0) as bar:
        for _ in range(10):
            bar.update(100)
    lines = _lines(caplog)
    # one line at each 10% mark up to 90%, then the closing line
    assert len(lines) == 10, lines
    assert lines[0].startswith("OCR: 100/1000 stickers (10%), ") and " img/s" in lines[0]
    assert "s left" in lines[3] and lines[3].startswith("OCR: 400/1000 stickers (40%)")
    assert lines[-1].startswith("OCR: 1000/1000 stickers (100%)") and "done in" in lines[-1]


def test_interval_lines_and_unknown_total(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="bench.progress")
    clock = iter(np.arange(0.0, 1000.0, 11.0))  # every call: 11 s later
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: float(next(clock)))
    with Progress(None, "BM25 index", "docs", delay_s=0) as bar:
        bar.update(5)
        bar.update(5)
    lines = _lines(caplog)
    assert lines[0] == "BM25 index: 5 docs, 0.45 docs/s" and len(lines) == 3
    assert lines[-1].startswith("BM25 index: 10 docs") and lines[-1].endswith("done in 33 s")


def test_short_stage_prints_nothing(caplog):
    caplog.set_level(logging.INFO, logger="bench.progress")
    assert list(track(range(50), "quick", "items")) == list(range(50))  # default delay 2 s
    assert _lines(caplog) == []


def test_quiet_silences_lines_and_bars(caplog, monkeypatch, capsys):
    caplog.set_level(logging.INFO, logger="bench.progress")
    monkeypatch.setenv("PERSRV_BENCH_QUIET", "1")
    monkeypatch.setattr(progress_mod, "_stderr_is_terminal", lambda: True)
    with Progress(10, "OCR", "stickers", delay_s=0) as bar:
        bar.update(10)
    assert _lines(caplog) == [] and bar._bar is None
    assert capsys.readouterr().err == ""


def test_terminal_gets_a_tqdm_bar(caplog, monkeypatch, capsys):
    caplog.set_level(logging.INFO, logger="bench.progress")
    monkeypatch.setattr(progress_mod, "_stderr_is_terminal", lambda: True)
    with Progress(10, "embed", "stickers", delay_s=0) as bar:
        assert bar._bar is not None
        bar.update(10)
    assert _lines(caplog) == []  # the bar instead of log lines
    assert "embed" in capsys.readouterr().err


def test_encode_with_progress_keeps_order(caplog):
    caplog.set_level(logging.INFO, logger="bench.progress")
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)

    texts = [f"t{i:03d}" for i in range(25)]
    out = encode_with_progress(encode, texts, "dense-text: encoding", chunk=10, delay_s=0)
    assert calls == [10, 10, 5] and out.shape == (25, 2)
    assert out[:, 1].tolist() == list(range(10)) * 2 + list(range(5))
    assert _lines(caplog)[-1].startswith("dense-text: encoding: 25/25 texts (100%)")


def test_feature_cache_reports_through_the_helper(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="bench.progress")
    monkeypatch.setattr(progress_mod, "DELAY_S", 0.0)
    cache = FeatureCache(tmp_path / "cache")
    ids = [f"s{i}" for i in range(40)]

    def fn(chunk):
        return pd.DataFrame({"sticker_id": chunk, "value": [len(s) for s in chunk]})

    key = cache.key(dataset_fingerprint="fp", extractor="test")
    cache.compute(key, ids, fn, chunk_size=10, progress="OCR (paddle)", rate_unit="img")
    lines = _lines(caplog)
    assert lines[0].startswith("OCR (paddle): 10/40 stickers (25%)") and "img/s" in lines[0]
    assert lines[-1].startswith("OCR (paddle): 40/40 stickers (100%)")
    caplog.clear()
    cache.compute(cache.key(dataset_fingerprint="fp2", extractor="test"), ids, fn,
                  chunk_size=10, progress=None)  # no label: silent
    assert _lines(caplog) == []


def test_embedding_without_cache_reports(tmp_path, caplog, monkeypatch):
    from bench.features.encoders import embed_stickers, make_encoder
    caplog.set_level(logging.INFO, logger="bench.progress")
    monkeypatch.setattr(progress_mod, "DELAY_S", 0.0)
    for i in range(4):
        Image.new("RGBA", (32, 32), (i * 60, 10, 10, 255)).save(tmp_path / f"{i}.png")
    stickers = pd.DataFrame({"sticker_id": list("abcd"), "image": [f"{i}.png" for i in range(4)]})
    embed_stickers(stickers, tmp_path, make_encoder("style-stats"), None, workers=1,
                   chunk_size=2)
    assert _lines(caplog)[-1].startswith("embed (style-stats): 4/4 stickers (100%)")
    caplog.clear()
    embed_stickers(stickers, tmp_path, make_encoder("style-stats"), None, workers=1,
                   progress=False)
    assert _lines(caplog) == []
