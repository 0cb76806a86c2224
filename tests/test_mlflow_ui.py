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
        deadline = time.monotonic() + 300  # a loaded 2-core box can take minutes
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited with {proc.returncode}")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded box: do not leave the server behind
            proc.kill()
            proc.wait(timeout=60)


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


def _runs_of(base: str, experiment: str) -> tuple[list[dict], dict[str, dict[str, str]]]:
    exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name",
               experiment_name=experiment)["experiment"]
    runs = _post(base, "/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    return runs, {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
                  for r in runs}


@pytest.mark.slow
def test_mlflow_ui_leaderboard_names_description_and_no_dataset_warning(
        tiny_dataset, tmp_path, isolated_cache, mlflow_server, capfd):
    """Two runs of one config: distinct parent names (config + dataset + time + id); the parent's
    description names the winner and the best floor baseline with a CI; the leaderboard is a
    logged MLflow table; children say their rank; MLflow prints no dataset-source warning."""
    import warnings

    import pandas as pd

    from bench.experiment import run_experiment
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"uri": mlflow_server})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcomes = [run_experiment(cfg, echo=lambda *_: None) for _ in range(2)]
    messages = [str(w.message) for w in caught] + [capfd.readouterr().err]
    assert not [m for m in messages if "LocalArtifactDatasetSource" in m
                or "can be interpreted in multiple ways" in m], messages
    runs, tags = _runs_of(mlflow_server, "tiny")
    parents = [o.parent_run_id for o in outcomes]
    names = [tags[p]["mlflow.runName"] for p in parents]
    assert names[0] != names[1]
    assert all(n.startswith("tiny-run · tiny · ") for n in names), names

    parent = parents[1]
    table = outcomes[1].table
    best = table.sort_values(["m_mrr_at_20", "retriever"], ascending=[False, True]).iloc[0]
    note = tags[parent]["mlflow.note.content"]
    assert f"**Winner: {best['retriever']}**" in note
    assert f"{best['m_mrr_at_20']:.4f}" in note
    assert "Best floor baseline: popularity" in note and "95% bootstrap CI" in note
    assert tags[parent]["headline_metric"] == "m_mrr_at_20"

    files = {f["path"] for f in _get(mlflow_server, "/api/2.0/mlflow/artifacts/list",
                                     run_id=parent).get("files", [])}
    assert "leaderboard.json" in files
    assert "leaderboard.json" in tags[parent].get("mlflow.loggedArtifacts", "")
    with urllib.request.urlopen(f"{mlflow_server}/get-artifact?path=leaderboard.json&run_uuid="
                                f"{parent}", timeout=30) as resp:  # noqa: S310
        logged = json.loads(resp.read())
    board = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert list(board["retriever"]) == list(
        table.sort_values(["m_mrr_at_20", "retriever"], ascending=[False, True])["retriever"])
    assert list(board["rank"]) == [1, 2, 3]
    assert (board["ci_low"] <= board["m_mrr_at_20"]).all()
    assert (board["m_mrr_at_20"] <= board["ci_high"]).all()
    floor_row = board[board["retriever"] == "popularity"].iloc[0]
    assert floor_row["floor"] and floor_row["delta_vs_best_floor"] == 0.0
    children = {tags[r["info"]["run_id"]]["retriever.label"]: tags[r["info"]["run_id"]]
                for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent}
    for _, row in board.iterrows():
        child = children[row["retriever"]]
        assert child["rank"] == str(row["rank"])
        assert child["mlflow.note.content"].startswith(f"Rank {row['rank']} of 3")


@pytest.mark.slow
def test_mlflow_ui_sweep_trials_log_validation_keys(tiny_dataset, tmp_path, isolated_cache,
                                                    mlflow_server):
    """Trial children log validation scores as ``val_<metric>``, never under a test score's
    name; best-on-test logs the test score under the bare name."""
    import copy

    from bench.sweep import run_sweep
    from tests.test_sweep import SPACE
    from tests.test_sweep import _cfg as sweep_cfg
    cfg = sweep_cfg(tiny_dataset, tmp_path, tracking={"uri": mlflow_server})
    result = run_sweep(copy.deepcopy(SPACE), cfg, n_trials=2, seed=0, study_name="s",
                       storage=str(tmp_path / "journal.log"), echo=lambda *_: None)
    runs, tags = _runs_of(mlflow_server, "tiny")
    kinds = {rid: t.get("persrv.kind") for rid, t in tags.items()}
    metrics = {r["info"]["run_id"]: {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
               for r in runs}
    trials = [rid for rid, kind in kinds.items() if kind == "trial"]
    assert len(trials) == 2
    for rid in trials:
        assert "val_m_mrr_at_20" in metrics[rid] and "m_mrr_at_20" not in metrics[rid]
        assert not [k for k in metrics[rid] if k.startswith(("m_mrr", "recall", "ndcg", "mrr"))]
    best = [rid for rid, kind in kinds.items() if kind == "best-on-test"]
    assert metrics[best[0]]["m_mrr_at_20"] == pytest.approx(result.test_metrics["m_mrr_at_20"])
