import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def test_help_lists_commands_without_heavy_imports():
    code = ("import sys; from bench.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['--help']); print(r.output); "
            "print('HEAVY', sorted(m for m in ('torch','mlflow','transformers','pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "run" in out.stdout and "datasets" in out.stdout and "evaluate" in out.stdout
    assert "HEAVY []" in out.stdout


def test_bad_config_is_one_line_error():
    out = _cli("run", "no/such/config.yaml")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: config file not found: no/such/config.yaml"
    assert "Traceback" not in out.stderr


def test_config_typo_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: {path: x}\nretrievers: [{name: bm25}]\nseeed: 1\n")
    out = _cli("run", str(cfg))
    assert out.returncode == 2
    assert "unknown key 'seeed'" in out.stderr and "Traceback" not in out.stderr


def test_mlproject_main_entry_point(tiny_dataset, tmp_path):
    """`mlflow run . -e main -P config=... --env-manager local` logs a benchmark run."""
    import mlflow
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "mlproject", "dataset": {"path": str(tiny_dataset)},
        "retrievers": [{"name": "bm25"}, {"name": "random"}],
        "features": {"ocr": False, "encoder": None}, "report": False,
        "output_dir": str(tmp_path / "out")}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "main", "-P", f"config={cfg}",
         "--env-manager", "local"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,
             "PERSRV_BENCH_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    parent = runs[runs["tags.persrv.kind"] == "benchmark"]
    assert len(parent) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert set(children["tags.mlflow.runName"]) == {"bm25", "random"}
    assert children["metrics.m_mrr_at_10"].notna().all()
