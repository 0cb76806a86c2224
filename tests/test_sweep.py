"""Optuna sweeps: space validation, conditional parameters, MLflow study/trial runs, failing
trials, resume, fit-once, grid, and no leakage of the test split into tuning."""

from __future__ import annotations

import contextlib
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pg import slow_trials_env

from bench.config import validate_config
from bench.errors import ConfigError
from bench.sweep import parse_space

REPO = Path(__file__).resolve().parents[1]

SPACE = {
    "retriever": "persrv",
    "metric": "m_mrr",
    "k": 20,
    "params": {
        "cluster_algorithm": {
            "choices": ["kmeans", "hdbscan", "agglomerative"],
            "conditional": {
                "kmeans": {"n_clusters": {"int": [1, 4]}},
                "hdbscan": {"min_cluster_size": {"int": [2, 4]}},
                "agglomerative": {"n_clusters": {"int": [1, 4]},
                                  "cluster_linkage": {"choices": ["ward", "average"]}},
            },
        },
        "features.encoder": {"choices": ["precomputed"]},
        "rerank_weight": {"float": [0.0, 1.0]},
        "rerank_mode": {"choices": ["multiply", "sum"]},
    },
}


def _cfg(dataset: Path, tmp_path: Path, **extra):
    raw = {"name": "tiny-sweep", "seed": 0, "dataset": {"path": str(dataset)},
           "retrievers": [{"name": "persrv", "params": {"pool": 15}}],
           "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False,
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    raw.update(extra)
    return validate_config(raw)


def _sweep(cfg, tmp_path, space=None, **kw):
    from bench.sweep import run_sweep
    kw.setdefault("storage", str(tmp_path / "journal.log"))
    kw.setdefault("study_name", "s")
    lines: list[str] = []
    result = run_sweep(copy.deepcopy(space or SPACE), cfg, echo=lines.append, **kw)
    return result, lines


def _runs(cfg, experiment="tiny"):
    import mlflow
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


def _checked(raw):
    from bench.registry import get_retriever_class, param_specs
    space = parse_space(raw, source="space.yaml")
    space.check_names("persrv", param_specs(get_retriever_class("persrv")))
    space.check_values(get_retriever_class("persrv"), {})
    return space


# ------------------------------------------------------------------------------- the space

def _with(params):
    return {"retriever": "persrv", "params": params}


@pytest.mark.parametrize("raw, expected", [
    (_with({"n_clusterz": {"int": [1, 3]}}), ["params.n_clusterz", "unknown parameter",
                                              "n_clusters"]),
    (_with({"n_clusters": {"int": [5, 1]}}), ["params.n_clusters.int", "empty range"]),
    (_with({"rerank_weight": {"float": [1.0, 0.0]}}), ["params.rerank_weight", "empty range"]),
    (_with({"rerank_mode": {"choices": []}}), ["params.rerank_mode.choices", "empty choices"]),
    (_with({"cluster_algorithm": {"choices": ["kmeans"],
                                  "conditional": {"dbscan": {"n_clusters": {"int": [1, 2]}}}}}),
     ["params.cluster_algorithm.conditional.dbscan", "not one of the choices"]),
    (_with({"rerank_weight": {"uniform": [0, 1]}}), ["params.rerank_weight", "uniform",
                                                     "unknown distribution keyword"]),
    (_with({"n_clusters": {"int": [1, 3], "stepp": 2}}), ["params.n_clusters", "stepp"]),
    (_with({"cluster_algorithm": {"choices": ["kmeans"], "conditional": {
        "kmeans": {"n_clusterz": {"int": [1, 2]}}}}}),
     ["params.cluster_algorithm.conditional.kmeans.n_clusterz", "unknown parameter"]),
    (_with({"features.ocr": {"choices": [True]}}), ["params.features.ocr", "features.encoder"]),
    (_with({"n_clusters": {"int": [1.5, 3]}}), ["params.n_clusters.int", "integers"]),
    (_with({"rerank_weight": {"float": [0.0, 1.0], "log": True}}), ["params.rerank_weight.log"]),
    (_with({"n_clusters": [1, 2]}), ["params.n_clusters", "choices"]),
    (_with({"n_clusters": {"int": [1, 3]},
            "cluster_algorithm": {"choices": ["kmeans"], "conditional": {
                "kmeans": {"n_clusters": {"int": [1, 2]}}}}}), ["n_clusters", "also be set"]),
    ({"retriever": "persrv", "paramz": {}}, ["paramz"]),
    ({"retriever": "persrv", "params": {}}, ["params"]),
    ({"metric": "mmrr", "params": {"n_clusters": 3}}, ["metric", "mmrr"]),
    ({"direction": "up", "params": {"n_clusters": 3}}, ["direction"]),
    # values the retriever's declaration refuses, found before any trial
    (_with({"n_clusters": {"int": [0, 5]}}), ["params.n_clusters", "n_clusters=0",
                                              "greater than or equal to 1"]),
    (_with({"rerank_mode": {"choices": ["multiply", "max"]}}), ["params.rerank_mode",
                                                                "rerank_mode='max'"]),
    (_with({"cluster_algorithm": {"choices": ["kmeans"], "conditional": {
        "kmeans": {"n_clusters": {"int": [0, 4]}}}}}),
     ["params.cluster_algorithm.conditional.kmeans.n_clusters", "n_clusters=0"]),
])
def test_space_errors_name_the_key(raw, expected):
    with pytest.raises(ConfigError) as info:
        _checked(raw)
    msg = str(info.value)
    assert msg.startswith("space.yaml: ")
    for part in expected:
        assert part in msg, (part, msg)


def test_space_files_in_the_repository_are_valid():
    from bench.registry import get_retriever_class, param_specs
    from bench.sweep import load_space
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        space = load_space(path)
        name = space.retriever or "persrv"  # each space against the retriever it tunes
        space.check_names(name, param_specs(get_retriever_class(name)))
        space.check_values(get_retriever_class(name), {})
        assert space.objective_name == "m_mrr_at_20"


def test_conditional_params_only_for_their_algorithm():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = _checked(SPACE)
    assert space.has_conditional
    assert set(space.by_optuna_name()) == {
        "cluster_algorithm", "kmeans.n_clusters", "hdbscan.min_cluster_size",
        "agglomerative.n_clusters", "agglomerative.cluster_linkage", "features.encoder",
        "rerank_weight", "rerank_mode"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        rparams, features = space.suggest(trial)
        algo = rparams["cluster_algorithm"]
        seen.add(algo)
        names = set(trial.params)
        assert features == {"encoder": "precomputed"}
        assert {n.split(".")[0] for n in names if "." in n} <= {algo, "features"}
        assert ("n_clusters" in rparams) == (algo != "hdbscan")
        assert ("min_cluster_size" in rparams) == (algo == "hdbscan")
        assert ("cluster_linkage" in rparams) == (algo == "agglomerative")
        assert space.from_optuna(trial.params) == (rparams, features)
        study.tell(trial, 0.0)
    assert seen == {"kmeans", "hdbscan", "agglomerative"}
    # grid: branches expand only under their own choice (4 + 3 + 4*2 = 15 algorithm points)
    grid_space = copy.deepcopy(SPACE)
    grid_space["params"]["rerank_weight"] = {"float": [0.0, 1.0], "grid": [0.3]}
    assert len(_checked(grid_space).grid_points()) == 15 * 2


def test_choices_of_lists_and_fixed_values():
    space = parse_space({"params": {"fields": {"choices": [["text"], ["text", "queries"]]},
                                    "pool": 100, "k1": {"value": 1.5}}})
    labels = space.by_optuna_name()["fields"].labels
    assert labels == ('["text"]', '["text", "queries"]')
    rparams, _ = space.from_optuna({"fields": labels[1]})
    assert rparams == {"fields": ["text", "queries"], "pool": 100, "k1": 1.5}


def test_storage_credentials_masked():
    from bench.sweep import StorageHandle
    h = StorageHandle("postgresql://alice:s3cret@db.example:5432/optuna")
    assert "s3cret" not in h.display and "alice" not in h.display
    assert h.kind == "rdb" and h.exact_budget


# --------------------------------------------------------------------------------- sweeps

def test_sweep_logs_study_run_with_trial_children(tiny_dataset, tmp_path, isolated_cache):
    import mlflow
    cfg = _cfg(tiny_dataset, tmp_path)
    result, lines = _sweep(cfg, tmp_path, n_trials=6, seed=3)
    assert result.states == {"COMPLETE": 6} and result.ran == 6 and result.finalized
    runs = _runs(cfg)
    study = runs[runs["tags.persrv.kind"] == "sweep"]
    trials = runs[runs["tags.persrv.kind"] == "trial"]
    best = runs[runs["tags.persrv.kind"] == "best-on-test"]
    assert len(study) == 1 and len(trials) == 6 and len(best) == 1
    study_id = study["run_id"].iloc[0]
    assert study_id == result.study_run_id
    assert set(trials["tags.mlflow.parentRunId"]) == {study_id}
    assert best["tags.mlflow.parentRunId"].iloc[0] == study_id
    assert sorted(trials["tags.optuna.trial_number"].astype(int)) == list(range(6))
    assert trials["metrics.val_m_mrr_at_20"].notna().all()  # the split is in the key
    assert "metrics.m_mrr_at_20" not in trials or trials["metrics.m_mrr_at_20"].isna().all()
    assert trials["metrics.objective"].notna().all()
    assert trials["metrics.duration_seconds"].notna().all()
    assert set(trials["tags.optuna.trial_state"]) == {"COMPLETE"}
    assert trials["params.cluster_algorithm"].notna().all()
    assert trials["params.rerank_weight"].notna().all()
    for _, row in trials.iterrows():  # conditional params only where their algorithm ran
        has_k = isinstance(row.get("params.n_clusters"), str)
        assert has_k == (row["params.cluster_algorithm"] != "hdbscan")
    assert study["tags.eval_split"].iloc[0] == "validation"
    assert best["tags.eval_split"].iloc[0] == "test"
    assert best["metrics.m_mrr_at_20"].iloc[0] == pytest.approx(result.test_metrics["m_mrr_at_20"])
    assert study["metrics.best_value"].iloc[0] == pytest.approx(result.best_value)
    assert study["status"].iloc[0] == "FINISHED"
    best_trial = trials[trials["tags.optuna.trial_number"] == str(result.best_trial)]
    assert best_trial["metrics.val_m_mrr_at_20"].iloc[0] == pytest.approx(result.best_value)
    import optuna

    from bench.sweep.storage import StorageHandle
    loaded = optuna.load_study(study_name=result.study_name,
                               storage=StorageHandle(str(tmp_path / "journal.log")).open())
    assert loaded.metric_names == ["val_m_mrr_at_20"]  # what optuna-dashboard shows
    assert study["tags.best.cluster_algorithm"].iloc[0] == result.best_params["cluster_algorithm"]
    client = mlflow.MlflowClient(cfg.tracking.uri)
    plots = {a.path for a in client.list_artifacts(study_id, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png",
            "plots/objective_vs_n_clusters.png"} <= plots
    assert {"trials.csv", "best.json", "space.yaml"} <= \
        {a.path for a in client.list_artifacts(study_id)}
    assert {"run.trec", "per_request.parquet"} <= \
        {a.path for a in client.list_artifacts(best["run_id"].iloc[0])}
    for p in result.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("trial 5:") for line in lines)


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tiny_dataset, tmp_path, isolated_cache,
                                                         monkeypatch):
    from baselines.persrv import PerSRV
    original = PerSRV.with_params

    def with_params(self, **params):
        if params.get("rerank_mode") == "sum":
            raise RuntimeError("boom: sum mode broken")
        return original(self, **params)
    monkeypatch.setattr(PerSRV, "with_params", with_params)
    space = {"retriever": "persrv", "params": {
        "rerank_mode": {"choices": ["multiply", "sum"]},
        "n_clusters": {"int": [1, 3]}}}
    cfg = _cfg(tiny_dataset, tmp_path)
    result, lines = _sweep(cfg, tmp_path, space=space, n_trials=6, sampler="grid")
    assert result.states == {"COMPLETE": 3, "FAIL": 3}
    assert result.best_params["rerank_mode"] == "multiply"
    assert sum("FAILED: RuntimeError: boom" in line for line in lines) == 3
    runs = _runs(cfg)
    trials = runs[runs["tags.persrv.kind"] == "trial"]
    failed = trials[trials["tags.optuna.trial_state"] == "FAIL"]
    assert len(trials) == 6 and len(failed) == 3
    assert (failed["status"] == "FAILED").all()
    assert failed["tags.error"].str.contains("boom: sum mode broken").all()
    assert (failed["params.rerank_mode"] == "sum").all()
    assert failed["metrics.duration_seconds"].notna().all()
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name="s", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "journal.log"))))
    fails = [t for t in study.trials if t.state.name == "FAIL"]
    assert all("boom" in t.user_attrs["error"] for t in fails)


def test_resume_adds_trials_up_to_the_new_total(tiny_dataset, tmp_path, isolated_cache):
    cfg = _cfg(tiny_dataset, tmp_path)
    first, _ = _sweep(cfg, tmp_path, n_trials=3, final_test=False)
    assert first.ran == 3
    second, lines = _sweep(cfg, tmp_path, n_trials=5, final_test=False)
    assert second.ran == 2 and sum(second.states.values()) == 5
    assert any("3 trial(s) so far, target 5" in line for line in lines)
    third, _ = _sweep(cfg, tmp_path, n_trials=5, final_test=False)
    assert third.ran == 0 and sum(third.states.values()) == 5
    runs = _runs(cfg)
    trials = runs[runs["tags.persrv.kind"] == "trial"]
    assert len(runs[runs["tags.persrv.kind"] == "sweep"]) == 1
    assert sorted(trials["tags.optuna.trial_number"].astype(int)) == list(range(5))
    assert set(trials["tags.mlflow.parentRunId"]) == {first.study_run_id}
    # another space under the same study name is refused, not silently mixed in
    other = copy.deepcopy(SPACE)
    other["params"]["rerank_weight"] = {"float": [0.0, 0.5]}
    with pytest.raises(ConfigError, match="another space or experiment config"):
        _sweep(cfg, tmp_path, space=other, n_trials=6)


def test_abandoned_trial_is_failed_and_counted(tiny_dataset, tmp_path, isolated_cache):
    """A RUNNING trial whose worker died (stale heartbeat) is marked FAIL and counts."""
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.ask().set_user_attr("persrv.heartbeat", time.time() - 3600)
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    result, lines = _sweep(cfg, tmp_path, n_trials=3, final_test=False)
    assert result.ran == 2 and result.states == {"FAIL": 1, "COMPLETE": 2}
    assert any("trial 0: abandoned" in line for line in lines)


def test_base_retriever_fit_once_per_process(tiny_dataset, tmp_path, isolated_cache,
                                             monkeypatch):
    from baselines.persrv import PerSRV
    fits = []
    original = PerSRV.fit

    def fit(self, train):
        fits.append(len(train.clicks))
        return original(self, train)
    monkeypatch.setattr(PerSRV, "fit", fit)
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    result, _ = _sweep(cfg, tmp_path, n_trials=8, seed=1)
    assert result.states == {"COMPLETE": 8}
    assert result.base_fits == 1
    # one fit for all 8 trials (train clicks), one for the best parameters on train + validation
    assert len(fits) == 2 and fits[0] < fits[1]


def test_one_fitted_base_per_encoder(tiny_dataset, tmp_path, isolated_cache, monkeypatch):
    """Trials switching features.encoder get that encoder's features once per process and one
    fitted base each; the config's own encoder (auto -> precomputed) reuses prepare's."""
    import bench.features.extract as extract
    calls = []
    original = extract.attach_features

    def attach(dataset, cfg=None, *a, **kw):
        calls.append(getattr(cfg, "encoder", None))
        return original(dataset, cfg, *a, **kw)
    monkeypatch.setattr(extract, "attach_features", attach)
    space = {"retriever": "persrv", "params": {
        "features.encoder": {"choices": ["precomputed", "style-stats"]},
        "rerank_mode": {"choices": ["multiply", "sum"]}}}
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    result, _ = _sweep(cfg, tmp_path, space=space, n_trials=4, sampler="grid",
                       final_test=False)
    assert result.states == {"COMPLETE": 4}
    assert result.base_fits == 2
    assert calls == ["auto", "style-stats"]  # prepare's, then style-stats once


def test_single_trial_skips_importances(tiny_dataset, tmp_path, isolated_cache):
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    result, _ = _sweep(cfg, tmp_path, n_trials=1, final_test=False)
    names = {p.name for p in result.plots}
    assert "optimization_history.png" in names and "param_importances.png" not in names


def test_objective_never_sees_test_requests(tiny_dataset, tmp_path, isolated_cache,
                                            monkeypatch):
    from baselines.persrv import PerSRV
    from bench.data.format import load_dataset
    from bench.data.splits import split_interactions
    searched, fitted = [], []
    original_search, original_fit = PerSRV.search, PerSRV.fit

    def search(self, requests, k):
        searched.extend(requests)
        return original_search(self, requests, k)

    def fit(self, train):
        fitted.append(train.clicks.copy())
        return original_fit(self, train)
    monkeypatch.setattr(PerSRV, "search", search)
    monkeypatch.setattr(PerSRV, "fit", fit)
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    _sweep(cfg, tmp_path, n_trials=4, final_test=False)
    splits = split_interactions(load_dataset(tiny_dataset).interactions)
    val = set(splits.requests("validation").requests)
    test = set(splits.requests("test").requests)
    assert searched and set(searched) <= val
    assert not set(searched) & (test - val)
    assert len(fitted) == 1 and len(fitted[0]) == len(splits.train)
    keys = ["user_id", "ts"]
    leaked = fitted[0].merge(splits.test[keys], on=keys).shape[0] + \
        fitted[0].merge(splits.validation[keys], on=keys).shape[0]
    assert leaked == 0


def test_grid_sampler_tries_each_point_once(tiny_dataset, tmp_path, isolated_cache):
    space = {"retriever": "persrv", "params": {
        "cluster_algorithm": {"choices": ["kmeans", "hdbscan"], "conditional": {
            "kmeans": {"n_clusters": {"int": [1, 2]}},
            "hdbscan": {"min_cluster_size": {"int": [2, 3]}}}},
        "rerank_weight": {"float": [0, 1], "grid": [0.5]}}}
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    result, lines = _sweep(cfg, tmp_path, space=space, n_trials=10, sampler="grid",
                           final_test=False)
    assert result.ran == 4 and result.states == {"COMPLETE": 4}
    assert any("grid exhausted" in line for line in lines)


def test_retriever_without_with_params_is_fitted_per_trial(tiny_dataset, tmp_path,
                                                           isolated_cache, monkeypatch):
    """A plugin that declares its parameters only in its constructor (no bench.params
    declaration, so no with_params) is constructed and fitted per trial."""
    from baselines.bm25 import BM25Retriever
    from bench.registry import register
    fits = []

    @register("test-legacy-bm25")
    class LegacyBM25:
        def __init__(self, k1: float = 1.2, b: float = 0.75, fields="all"):
            self.k1, self.b, self.fields = k1, b, fields

        def fit(self, train):
            fits.append((self.k1, tuple(self.fields)))
            self.inner = BM25Retriever(k1=self.k1, b=self.b, fields=self.fields).fit(train)
            return self

        def search(self, requests, k):
            return self.inner.search(requests, k)

    space = {"retriever": "test-legacy-bm25", "params": {
        "k1": {"float": [0.5, 2.0]},
        "fields": {"choices": [["text"], ["text", "queries"]]}}}
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False},
               retrievers=[{"name": "test-legacy-bm25", "params": {"b": 0.5}}])
    result, _ = _sweep(cfg, tmp_path, space=space, n_trials=3)
    assert result.states == {"COMPLETE": 3}
    assert len(fits) == 4  # 3 trials + the best on test
    assert result.best_params["fields"] in (["text"], ["text", "queries"])
    assert fits[-1] == (result.best_params["k1"], tuple(result.best_params["fields"]))


def test_cli_sweep(tiny_dataset, tmp_path, isolated_cache):
    from bench.cli import main
    cfg = {"name": "tiny-cli", "dataset": {"path": str(tiny_dataset)},
           "retrievers": [{"name": "persrv"}], "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    main(["-q", "sweep", str(tmp_path / "space.yaml"), "--experiment", str(tmp_path / "exp.yaml"),
          "--n-trials", "2", "--tracking-uri", uri, "-o", "retrievers.0.params.pool=10"])
    # default storage: a journal file beside the MLflow store; default study name
    assert (tmp_path / "optuna-journal.log").is_file()
    assert (tmp_path / "out" / "sweep-tiny-cli-space" / "best.json").is_file()
    with pytest.raises(SystemExit) as info:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"params": {"n_clusterz": 3}}))
        main(["sweep", str(tmp_path / "bad.yaml"), "--experiment", str(tmp_path / "exp.yaml"),
              "--n-trials", "1", "--no-tracking"])
    assert info.value.code == 2


@pytest.mark.slow
def test_two_local_workers_share_a_journal(tiny_dataset, tmp_path, isolated_cache):
    """Two processes, the default journal storage, a fresh MLflow SQLite store: exactly N
    trials, one study run."""
    cfg = {"name": "tiny-par", "dataset": {"path": str(tiny_dataset)},
           "retrievers": [{"name": "persrv"}], "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{tmp_path / 'par.db'}"
    cmd = [sys.executable, "-m", "bench", "-q", "sweep", str(tmp_path / "space.yaml"),
           "--experiment", str(tmp_path / "exp.yaml"), "--n-trials", "7", "--study-name", "par",
           "--tracking-uri", uri]
    env = slow_trials_env(tmp_path / "site", 0.3, REPO)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = [int(re.search(r"this worker ran (\d+)", out).group(1)) for out in outs]
    assert sum(ran) == 7 and min(ran) >= 1, (ran, outs)
    import mlflow
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    study = runs[runs["tags.persrv.kind"] == "sweep"]
    trials = runs[runs["tags.persrv.kind"] == "trial"]
    assert len(study) == 1, outs
    assert sorted(trials["tags.optuna.trial_number"].astype(int)) == list(range(7))
    assert set(trials["tags.mlflow.parentRunId"]) == {study["run_id"].iloc[0]}
    assert len(runs[runs["tags.persrv.kind"] == "best-on-test"]) == 1


# ------------------------------------------------------- dead workers, storage errors, dashboard

def _dead_worker() -> dict:
    """The identity a killed local worker left behind: a real process, started, then killed."""
    import psutil

    from bench.sweep.liveness import worker_identity
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return {**worker_identity(), "pid": proc.pid, "started": started}


def _journal_study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    return optuna.create_study(storage=storage, study_name="s", direction="maximize"), storage


def test_worker_alive_checks_pid_start_time_and_host():
    import os

    from bench.sweep.liveness import worker_alive, worker_identity
    me = worker_identity()
    assert worker_alive(me) is True
    assert worker_alive({**me, "started": me["started"] - 3600}) is False  # a reused pid
    assert worker_alive(_dead_worker()) is False
    assert worker_alive({**me, "host": "another-machine"}) is None
    assert worker_alive(None) is None and worker_alive({"pid": "x"}) is None
    assert me["pid"] == os.getpid()


def test_killed_local_worker_trial_is_failed_at_once(tiny_dataset, tmp_path, isolated_cache):
    """A RUNNING trial of a dead local worker (fresh heartbeat) is failed by the next worker at
    start, gets a FAILED child run, and that worker writes the study's outputs."""
    import time

    from bench.tracking.schema import ATTR_HEARTBEAT, ATTR_WORKER
    study, _ = _journal_study(tmp_path)
    trial = study.ask()
    trial.set_user_attr(ATTR_WORKER, _dead_worker())
    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
    cfg = _cfg(tiny_dataset, tmp_path)
    result, lines = _sweep(cfg, tmp_path, n_trials=3, final_test=False)
    assert result.ran == 2 and result.states == {"FAIL": 1, "COMPLETE": 2}
    assert result.finalized
    assert any(line.startswith("trial 0: abandoned") and "no longer running" in line
               for line in lines), lines
    folder = tmp_path / "out" / "sweep-s"
    assert (folder / "trials.csv").is_file() and (folder / "best.json").is_file()
    assert (folder / "plots" / "optimization_history.png").is_file()
    assert "abandoned" in study.trials[0].user_attrs["error"]
    runs = _runs(cfg)
    trials = runs[runs["tags.persrv.kind"] == "trial"]
    failed = trials[trials["tags.optuna.trial_number"] == "0"]
    assert len(trials) == 3 and len(failed) == 1
    assert failed["status"].iloc[0] == "FAILED"
    assert "no longer running" in failed["tags.error"].iloc[0]


def test_last_trial_of_a_killed_worker_lets_the_next_worker_write_the_outputs(
        tiny_dataset, tmp_path, isolated_cache):
    """Another host's trial with a fresh heartbeat is left alone (no outputs yet); once its
    worker is known dead, the next worker to start fails it and writes the outputs, also over a
    finalisation claim that a dead worker left."""
    import time

    from bench.tracking.schema import ATTR_BEST_ON_TEST, ATTR_HEARTBEAT, ATTR_WORKER
    study, storage = _journal_study(tmp_path)
    trial = study.ask()
    trial.set_user_attr(ATTR_WORKER, {**_dead_worker(), "host": "another-machine"})
    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
    cfg = _cfg(tiny_dataset, tmp_path, tracking={"enabled": False})
    first, lines = _sweep(cfg, tmp_path, n_trials=2, final_test=False)
    assert first.ran == 1 and first.states == {"RUNNING": 1, "COMPLETE": 1}
    assert not first.finalized and any("1 trial(s) still running" in line for line in lines)
    folder = tmp_path / "out" / "sweep-s"
    assert not (folder / "trials.csv").exists()
    # the other worker turns out to be a local one that was killed, mid-finalisation elsewhere
    storage.set_trial_user_attr(trial._trial_id, ATTR_WORKER, _dead_worker())
    study.set_user_attr(ATTR_BEST_ON_TEST, {"state": "claimed", "worker": _dead_worker(),
                                            "at": time.time()})
    second, lines = _sweep(cfg, tmp_path, n_trials=2, final_test=False)
    assert second.ran == 0 and second.states == {"FAIL": 1, "COMPLETE": 1}
    assert second.finalized and (folder / "trials.csv").is_file()
    best = __import__("json").loads((folder / "best.json").read_text())
    assert best["best_trial"] == 1 and best["best_value"] == pytest.approx(second.best_value)
    assert study.user_attrs[ATTR_BEST_ON_TEST]["state"] == "done"


def _unreachable_postgres() -> tuple[str, int]:
    from pg import free_port
    port = free_port()  # nothing listens there
    return f"postgresql://alice:s3cret@127.0.0.1:{port}/optuna", port


def test_unreachable_postgres_storage_is_one_line():
    import time

    from bench.sweep import StorageError, StorageHandle
    url, port = _unreachable_postgres()
    t0 = time.perf_counter()
    with pytest.raises(StorageError) as info:
        StorageHandle(url).open()
    msg = str(info.value)
    assert time.perf_counter() - t0 < 15
    assert msg.startswith(f"--storage postgresql://***@127.0.0.1:{port}/optuna: cannot open")
    assert "s3cret" not in msg and "alice" not in msg and "\n" not in msg


def test_cli_unreachable_postgres_storage(tiny_dataset, tmp_path, capsys):
    from bench.cli import main
    cfg = {"name": "tiny-pg", "dataset": {"path": str(tiny_dataset)},
           "retrievers": [{"name": "persrv"}], "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    url, port = _unreachable_postgres()
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(tmp_path / "space.yaml"), "--experiment", str(tmp_path / "exp.yaml"),
              "--n-trials", "1", "--no-tracking", "--storage", url])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"postgresql://***@127.0.0.1:{port}/optuna" in err and "s3cret" not in err


def _dashboard_binary() -> str | None:
    import shutil
    local = Path(sys.executable).parent / "optuna-dashboard"
    return str(local) if local.is_file() else shutil.which("optuna-dashboard")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_optuna_dashboard_serves_the_study_storage(tmp_path, kind):
    """``optuna-dashboard <storage> --port P --host 127.0.0.1`` answers 200 on / and lists the
    study (the README's command on the harness's default journal and on an SQLite store)."""
    import json
    import time
    import urllib.request

    import optuna
    from pg import free_port

    binary = _dashboard_binary()
    if binary is None:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    from bench.sweep import StorageHandle
    spec = str(tmp_path / "optuna-journal.log") if kind == "journal" else \
        f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=StorageHandle(spec).open(), study_name="dash",
                                direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    port = free_port()
    proc = subprocess.Popen([binary, spec, "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, deadline = None, time.monotonic() + 60
        while status != 200 and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    status = resp.status
            except OSError:
                time.sleep(0.3)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        api = f"http://127.0.0.1:{port}/api/studies"
        with urllib.request.urlopen(api, timeout=5) as resp:
            studies = json.loads(resp.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        assert studies[0]["directions"] == ["maximize"]
        with urllib.request.urlopen(f"{api}/{studies[0]['study_id']}", timeout=10) as resp:
            detail = json.loads(resp.read())
        assert [t["number"] for t in detail["trials"]] == [0, 1, 2]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_kill_9_worker_mid_trial_next_worker_finishes_at_once(tiny_dataset, tmp_path,
                                                                isolated_cache):
    """A real worker killed with SIGKILL during its first trial: the next worker, started at
    once (not 600 s later), fails that trial, runs the rest and writes the study's outputs."""
    import signal
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    cfg = {"name": "tiny-kill", "dataset": {"path": str(tiny_dataset)},
           "retrievers": [{"name": "persrv"}], "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    journal = tmp_path / "journal.log"
    cmd = [sys.executable, "-m", "bench", "-q", "sweep", str(tmp_path / "space.yaml"),
           "--experiment", str(tmp_path / "exp.yaml"), "--n-trials", "3", "--study-name", "k",
           "--storage", str(journal), "--no-tracking", "--no-final-test"]
    slow = subprocess.Popen(cmd, cwd=tmp_path, env=slow_trials_env(tmp_path / "site", 120, REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    running = []
    while not running and time.monotonic() < deadline and slow.poll() is None:
        time.sleep(0.5)
        if journal.is_file():
            with contextlib.suppress(Exception):
                study = optuna.load_study(study_name="k", storage=JournalStorage(
                    JournalFileBackend(str(journal))))
                running = [t for t in study.trials if t.state.name == "RUNNING"
                           and "persrv.worker" in t.user_attrs]
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert running, "the first worker never started a trial"
    out = subprocess.run(cmd, cwd=tmp_path, env=slow_trials_env(tmp_path / "fast", 0, REPO),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trial 0: abandoned by its worker" in out.stdout and "no longer running" in out.stdout
    assert "this worker ran 2" in out.stdout
    folder = tmp_path / "out" / "sweep-k"
    assert (folder / "trials.csv").is_file() and (folder / "best.json").is_file()
