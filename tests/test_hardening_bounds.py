"""Issue 26, class 6: bounds on work (cutoffs, text length, MLflow retries) and names printed
safely."""

from __future__ import annotations

import logging
import os
import time

import pandas as pd
import pytest
import yaml

from conftest import run_main

from bench.cutoffs import dropped_ks, effective_ks


@pytest.mark.parametrize("ks,n,expected", [
    (range(1, 3001), 15, list(range(1, 16)) + [3000]),  # the depth keeps its name
    ([1, 5, 10, 20], 15, [1, 5, 10, 20]),
    ([1, 5, 10, 20, 50, 100], 15, [1, 5, 10, 20, 100]),
    ([1, 5], 15, [1, 5]),
    ([30, 40, 50], 15, [30, 50]),
    ([3, 3, 2, 4], 1, [2, 4]),
])
def test_effective_ks(ks, n, expected):
    assert effective_ks(ks, n) == expected
    assert sorted(set(effective_ks(ks, n)) | set(dropped_ks(ks, n))) == sorted(set(ks))


def test_a_run_with_3000_cutoffs_on_15_stickers_logs_16(tiny_dataset, tmp_path, isolated_cache,
                                                         capsys, caplog):
    from mlflow.tracking import MlflowClient
    cfg = {"name": "many-ks", "dataset": {"path": str(tiny_dataset)},
           "ks": list(range(1, 3001)), "retrievers": [{"name": "random"}],
           "features": {"ocr": False}, "output_dir": str(tmp_path / "out"), "report": False}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        code, out, err = run_main(capsys, "run", str(tmp_path / "exp.yaml"), "--tracking-uri",
                                  uri)
    seconds = time.perf_counter() - t0
    assert code == 0, err
    assert "ks 16, 17, ..., 2999 (2984 in all) are not computed" in caplog.text
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId"))
    plain = [k for k in child.data.metrics  # m_mrr_at_<k>, not its _tie_aware/_as_returned twins
             if k.startswith("m_mrr_at_") and "__" not in k and k.rsplit("_", 1)[1].isdigit()]
    assert sorted(int(k.rsplit("_", 1)[1]) for k in plain) == list(range(1, 16)) + [3000]
    assert child.data.metrics["m_mrr_at_3000"] == child.data.metrics["m_mrr_at_15"]
    # was ~123k metric rows; now 16 cutoffs x 4 metrics x (filled, tie-aware, as returned) x
    # (macro, micro) + segments: a few hundred, bounded by the corpus, not by the 3000 asked
    assert len(child.data.metrics) < 1000
    folder = next((tmp_path / "out").iterdir())
    assert {"m_mrr_at_15", "m_mrr_at_3000"} <= set(pd.read_csv(folder / "results.csv").columns)
    assert "M-MRR@3000" in out
    assert seconds < 120, seconds  # minutes before the cap, on a loaded 2-core machine


def test_ten_megabyte_text_cells_are_cut_with_a_warning(tmp_path, caplog):
    from bench.data import ids
    from bench.data.format import load_dataset, write_dataset
    huge = "word " * 2_000_000  # 10 MB
    stickers = pd.DataFrame({"sticker_id": ["a", "b"], "image": None, "text": [huge, "short"]})
    clicks = pd.DataFrame({"user_id": ["u", "u"], "query": [huge, "hi"],
                           "sticker_id": ["a", "b"], "ts": [1, 2]})
    with caplog.at_level(logging.WARNING):
        write_dataset(tmp_path / "ds", stickers, clicks, {"name": "big"})
        ds = load_dataset(tmp_path / "ds")
    assert ds.stickers["text"].str.len().tolist() == [ids.MAX_TEXT_CHARS, 5]
    assert ds.interactions["query"].str.len().max() == ids.MAX_TEXT_CHARS
    assert "1 cells of column 'query' are longer than 10000 characters" in caplog.text
    assert "1 cells of column 'text'" in caplog.text


def test_mlflow_http_retries_are_bounded(monkeypatch):
    from bench.tracking import Tracker
    from bench.tracking.client import HTTP_LIMITS
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own value is kept
    tracker = Tracker("http://127.0.0.1:9")  # nothing listens on port 9
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    t0 = time.perf_counter()
    with pytest.raises(Exception):
        tracker.log_metrics("0" * 32, {"m": 1.0})
    assert time.perf_counter() - t0 < 30  # MLflow's defaults: about two minutes


@pytest.mark.parametrize("field,value", [("name", "run\x1b[2J\x1b[HFAKE: all tests passed"),
                                         ("name", "ok\nFAKE: all tests passed"),
                                         ("label", "bm25\rFAKE")])
def test_names_with_control_characters_are_refused_and_printed_escaped(tiny_dataset, tmp_path,
                                                                       capsys, field, value):
    retriever = {"name": "random", **({"label": value} if field == "label" else {})}
    cfg = {"name": value if field == "name" else "fine", "dataset": {"path": str(tiny_dataset)},
           "retrievers": [retriever], "output_dir": str(tmp_path / "out"),
           "tracking": {"enabled": False}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, out, err = run_main(capsys, "run", str(tmp_path / "exp.yaml"))
    assert code == 2 and "control characters" in err
    assert "\x1b" not in err + out and "\r" not in err + out
    assert len(err.strip().splitlines()) == 1  # no forged line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
