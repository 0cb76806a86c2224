"""What a user sees in the MLflow UI, read through the server's REST API (the UI's own calls):
the experiment opens on the runs table, the parent names the winner, children carry label,
fitted ids, segments and artifacts, the dataset is recorded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_runner import _cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **params) -> dict:
    from urllib.parse import urlencode
    url = f"{base}{path}" + (f"?{urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (local test server)
        return json.loads(resp.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read())


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                             "--default-artifact-root", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)  # noqa: S310
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_ui_shows_parent_winner_children_and_artifacts(tiny_dataset, tmp_path,
                                                               isolated_cache, mlflow_server):
    from bench.experiment import run_experiment
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"uri": mlflow_server})
    outcome = run_experiment(cfg, echo=lambda *_: None)
    exp = _get(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name",
               experiment_name="tiny")["experiment"]
    exp_tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    runs = _post(mlflow_server, "/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [exp["experiment_id"]], "max_results": 50})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
            for r in runs}
    parent = outcome.parent_run_id
    assert tags[parent]["persrv.kind"] == "benchmark"
    best = outcome.table.sort_values("m_mrr_at_20", ascending=False).iloc[0]
    assert tags[parent]["best_retriever"] == best["retriever"]
    assert float(tags[parent]["best_m_mrr_at_20"]) == pytest.approx(best["m_mrr_at_20"], abs=1e-4)
    children = [r for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent]
    assert sorted(tags[c["info"]["run_id"]]["retriever.label"] for c in children) == \
        ["bm25", "popularity", "random"]
    for child in children:
        params = {p["key"]: p["value"] for p in child["data"].get("params", [])}
        metrics = {m["key"]: m["value"] for m in child["data"].get("metrics", [])}
        assert params["label"] == tags[child["info"]["run_id"]]["retriever.label"]
        assert "m_mrr_at_20" in metrics and "n__seen_query" in metrics
        info = child["info"]
        assert int(info["end_time"]) - int(info["start_time"]) >= 0
        assert child.get("inputs", {}).get("dataset_inputs"), "dataset not recorded"
        files = {f["path"] for f in _get(mlflow_server, "/api/2.0/mlflow/artifacts/list",
                                         run_id=info["run_id"]).get("files", [])}
        assert {"run.trec", "per_request.parquet"} <= files
    parent_files = {f["path"] for f in _get(mlflow_server, "/api/2.0/mlflow/artifacts/list",
                                            run_id=parent).get("files", [])}
    assert {"results.md", "results.csv", "config.yaml", "plots"} <= parent_files
    assert Path(outcome.folder, "status.json").is_file()
