"""The runner end to end on a tiny dataset: files written, runs logged, metrics deterministic."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.config import validate_config
from bench.experiment import run_experiment

RETRIEVERS = [
    {"name": "bm25", "params": {"fields": ["text", "queries"]}},
    {"name": "popularity"},
    {"name": "random", "params": {"seed": 1}},
]


def _cfg(dataset: Path, tmp_path: Path, **extra):
    raw = {"name": "tiny-run", "seed": 0, "dataset": {"path": str(dataset)},
           "retrievers": RETRIEVERS, "features": {"ocr": False, "encoder": None},
           "output_dir": str(tmp_path / "out"), "report": False,
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    raw.update(extra)
    return validate_config(raw)


def test_run_logs_parent_and_children(tiny_dataset, tmp_path, isolated_cache):
    import mlflow
    cfg = _cfg(tiny_dataset, tmp_path)
    lines: list[str] = []
    outcome = run_experiment(cfg, echo=lines.append)
    assert not outcome.failed
    folder = outcome.folder
    for name in ("config.yaml", "results.csv", "results.md", "qrels.txt", "requests.tsv",
                 "segments.parquet", "plots/m_mrr_at_k.png"):
        assert (folder / name).is_file(), name
    for label in ("bm25", "popularity", "random"):
        assert (folder / "retrievers" / label / "run.trec").stat().st_size > 0
        per_request = pd.read_parquet(folder / "retrievers" / label / "per_request.parquet")
        assert "m_mrr_at_20" in per_request.columns

    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="pandas")
    parent = runs[runs["tags.persrv.kind"] == "benchmark"]
    children = runs[runs["tags.persrv.kind"] == "retriever"]
    assert len(parent) == 1 and len(children) == 3
    assert set(children["tags.mlflow.parentRunId"]) == {outcome.parent_run_id}
    assert set(children["tags.mlflow.runName"]) == {"bm25", "popularity", "random"}
    for k in (1, 5, 10, 20):
        for m in ("m_mrr", "mrr", "recall", "ndcg"):
            assert children[f"metrics.{m}_at_{k}"].notna().all()
    by_name = children.set_index("tags.mlflow.runName")
    assert by_name.loc["bm25", "metrics.m_mrr_at_20"] > 2 * by_name.loc["random", "metrics.m_mrr_at_20"]
    assert by_name.loc["random", "params.seed"] == "1"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(outcome.parent_run_id)}
    assert {"results.md", "results.csv", "config.yaml", "plots"} <= artifacts
    child_artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(by_name.loc["bm25", "run_id"])}
    assert {"run.trec", "per_request.parquet"} <= child_artifacts
    table = pd.read_csv(folder / "results.csv").set_index("retriever")
    assert table.loc["bm25", "m_mrr_at_20"] == pytest.approx(by_name.loc["bm25", "metrics.m_mrr_at_20"])
    assert any("bm25" in line and "M-MRR@20" in line for line in lines)


def test_same_seed_same_metrics(tiny_dataset, tmp_path, isolated_cache):
    a = run_experiment(_cfg(tiny_dataset, tmp_path / "a", tracking={"enabled": False}),
                       echo=lambda *_: None)
    b = run_experiment(_cfg(tiny_dataset, tmp_path / "b", tracking={"enabled": False}),
                       echo=lambda *_: None)
    cols = [c for c in a.table.columns if "_at_" in c]
    pd.testing.assert_frame_equal(a.table[cols], b.table[cols])
    for label in ("bm25", "random"):
        ta = (a.folder / "retrievers" / label / "run.trec").read_bytes()
        tb = (b.folder / "retrievers" / label / "run.trec").read_bytes()
        assert ta == tb


def test_failing_retriever_keeps_other_results(tiny_dataset, tmp_path, isolated_cache):
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False},
               retrievers=[{"name": "bm25", "params": {"fields": ["no_such_field"]}},
                           {"name": "random"}])
    outcome = run_experiment(cfg, echo=lambda *_: None)
    assert [r.label for r in outcome.failed] == ["bm25"]
    assert (outcome.folder / "retrievers" / "bm25" / "error.txt").exists()
    assert (outcome.folder / "retrievers" / "random" / "run.trec").exists()
    assert list(outcome.table["status"]) == ["failed", "ok"]


def test_unreachable_tracking_server_fails_before_work(tiny_dataset, tmp_path, isolated_cache):
    from bench.tracking import TrackingError
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"uri": "http://127.0.0.1:9"})
    with pytest.raises(TrackingError, match="unreachable"):
        run_experiment(cfg, echo=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_mlflow_run_launcher_lands_in_the_dataset_experiment(tiny_dataset, tmp_path,
                                                             isolated_cache, monkeypatch):
    """Under `mlflow run` MLflow creates a run in `Default` and passes MLFLOW_RUN_ID: the results
    go to the dataset's experiment under the config's name, the Projects run points at them."""
    from mlflow.tracking import MlflowClient
    cfg = _cfg(tiny_dataset, tmp_path)
    client = MlflowClient(cfg.tracking.uri)
    launcher = client.create_run("0", run_name="delicate-worm-112").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    outcome = run_experiment(cfg, echo=lambda *_: None)
    parent = client.get_run(outcome.parent_run_id)
    assert outcome.parent_run_id != launcher
    assert client.get_experiment(parent.info.experiment_id).name == "tiny"
    assert parent.info.run_name.startswith("tiny-run · tiny · ")  # config · dataset · time · id
    shell = client.get_run(launcher).data.tags
    assert shell["persrv.kind"] == "launcher" and shell["persrv.run_id"] == outcome.parent_run_id
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["best_retriever"] in {"bm25", "popularity", "random"}
