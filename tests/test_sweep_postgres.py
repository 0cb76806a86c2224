"""Two sweep workers on one PostgreSQL Optuna storage: exactly N trials, unique numbers, every
trial a child of ONE MLflow study run. Skips only when PostgreSQL's binaries are absent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pg import find_pg_bin, postgres_server, slow_trials_env

REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 9

SPACE = {
    "retriever": "persrv",
    "params": {
        "cluster_algorithm": {
            "choices": ["kmeans", "hdbscan"],
            "conditional": {"kmeans": {"n_clusters": {"int": [1, 4]}},
                            "hdbscan": {"min_cluster_size": {"int": [2, 4]}}},
        },
        "rerank_weight": {"float": [0.0, 1.0]},
    },
}


@pytest.fixture
def postgres_url():
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's "
                    "postgresql package to run the multi-worker sweep test")
    with postgres_server(bin_dir) as url:
        yield url


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(postgres_url, tiny_dataset, tmp_path,
                                            isolated_cache):
    import mlflow
    import optuna
    cfg = {"name": "tiny-pg", "dataset": {"path": str(tiny_dataset)},
           "retrievers": [{"name": "persrv"}], "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # create the store before the workers start
    cmd = [sys.executable, "-m", "bench", "-q", "sweep", str(tmp_path / "space.yaml"),
           "--experiment", str(tmp_path / "exp.yaml"), "--storage", postgres_url,
           "--study-name", "S", "--n-trials", str(N_TRIALS), "--tracking-uri", uri]
    env = slow_trials_env(tmp_path / "site", 0.4, REPO)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=400)[0])
        except subprocess.TimeoutExpired:
            p.kill()
            outs.append(p.communicate()[0])
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outs)

    ran = [int(m.group(1)) for out in outs
           for m in [re.search(r"this worker ran (\d+)", out)] if m]
    assert len(ran) == 2 and sum(ran) == N_TRIALS, outs
    assert min(ran) >= 1, f"the workers did not overlap: {ran}"

    study = optuna.load_study(study_name="S", storage=postgres_url.replace(
        "postgresql://", "postgresql+psycopg2://"))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == N_TRIALS and sorted(numbers) == list(range(N_TRIALS))
    assert all(t.state.name == "COMPLETE" for t in study.trials)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    study_runs = runs[runs["tags.persrv.kind"] == "sweep"]
    trials = runs[runs["tags.persrv.kind"] == "trial"]
    assert len(study_runs) == 1, outs
    parent = study_runs["run_id"].iloc[0]
    assert len(trials) == N_TRIALS
    assert sorted(trials["tags.optuna.trial_number"].astype(int)) == list(range(N_TRIALS))
    assert set(trials["tags.mlflow.parentRunId"]) == {parent}
    best = runs[runs["tags.persrv.kind"] == "best-on-test"]
    assert len(best) == 1 and best["tags.mlflow.parentRunId"].iloc[0] == parent
    assert study_runs["tags.optuna.storage"].iloc[0].startswith("postgresql://***@")
    assert study.user_attrs["persrv.mlflow_run_id"] == parent
