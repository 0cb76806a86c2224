"""A fixed seed gives identical metrics whatever the thread count (issue 22): the quickstart,
small, run in two processes limited to one and to two CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cpus: set[int], out: Path, cache: Path) -> pd.DataFrame:
    env = {**os.environ, "PERSRV_BENCH_CACHE": str(cache), "PERSRV_BENCH_QUIET": "1",
           "OMP_NUM_THREADS": str(len(cpus)), "MKL_NUM_THREADS": str(len(cpus)),
           "NUMBA_NUM_THREADS": str(len(cpus))}
    cmd = [sys.executable, "-m", "bench", "run", str(ROOT / "experiments" / "quickstart.yaml"),
           "dataset.params.n_stickers=150", "dataset.params.n_users=40", "report=false",
           "tracking.enabled=false", f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (csv,) = out.glob("*/results.csv")
    return pd.read_csv(csv)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to compare one and two threads")
def test_quickstart_metrics_identical_with_one_and_two_threads(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    one = _run({cpus[0]}, tmp_path / "one", tmp_path / "cache")
    two = _run(set(cpus[:2]), tmp_path / "two", tmp_path / "cache")
    metrics = [c for c in one.columns if c.split("__")[0].startswith(
        ("m_mrr_at_", "mrr_at_", "recall_at_", "ndcg_at_")) or c in ("coverage", "delta_floor")]
    assert len(metrics) > 20 and list(one["retriever"]) == list(two["retriever"])
    assert (one["status"] == "ok").all(), one[["retriever", "status"]]
    pd.testing.assert_frame_equal(one[metrics], two[metrics], check_exact=True)
