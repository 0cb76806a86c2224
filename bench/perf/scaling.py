"""The scaling curve of ``persrv-bench perf``: bm25 and full persrv at several corpus sizes, one
fresh process per size (``python -m bench.perf point``), so each peak RSS is that size's own."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from bench.perf.config import MB, PerfConfig, paper_density_requests
from bench.perf.measure import (MemorySampler, StageClock, current_rss, max_rss,
                                measure_retriever)
from bench.perf.workloads import ensure_dataset, load_data


def scaling_point(cfg: PerfConfig) -> dict[str, Any]:
    """bm25 and full persrv at ``cfg.size`` in this (fresh) process: stage times and memory."""
    with MemorySampler() as sampler:
        clock = StageClock(sampler)
        rss0 = current_rss()
        data = load_data(cfg, clock, echo=lambda s: print(s, file=sys.stderr))
        rss_loaded = current_rss()
        out: dict[str, Any] = {
            "size": len(data.ds.stickers), "requests": len(data.requests),
            "clicks": int(len(data.view.clicks)),
            "users": int(data.view.clicks["user_id"].nunique()),
            "distinct_queries": len({r.query for r in data.requests.requests}),
            "built_s": data.built_s,
            "load_s": sum(v["seconds"] for v in clock.of("data").values()),
            "rss_start_mb": (rss0 or 0) / MB, "rss_loaded_mb": (rss_loaded or 0) / MB}
        for name in ("bm25", "persrv"):
            rec, retriever, _ = measure_retriever(name, data, cfg, clock)
            out[name] = {k: rec[k] for k in ("stages", "fit_s", "search_s", "metrics_s",
                                             "e2e_s", "peak_rss_mb")}
            del retriever
            gc.collect()
    out["total_s"] = out["bm25"]["e2e_s"] + out["persrv"]["e2e_s"]
    out["peak_rss_mb"] = max_rss() / MB
    return out


#: The scaling table's total column (the plot draws it thick).
TOTAL_HEAD = "bm25 + persrv s"
#: The scaling table's columns: (heading, value of a point), every stage of bm25 and persrv.
SCALING_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("load s", lambda p: p["load_s"]),
    ("bm25 index", lambda p: _stage(p, "bm25", "index")),
    ("bm25 search", lambda p: _stage(p, "bm25", "recall")),
    *((f"persrv {st}", (lambda st: lambda p: _stage(p, "persrv", st))(st))
      for st in ("index", "utility", "clusters", "recall", "rerank", "results", "metrics")),
    (TOTAL_HEAD, lambda p: p["total_s"]),
    ("RSS after load MB", lambda p: p["rss_loaded_mb"]),
    ("peak RSS MB", lambda p: p["peak_rss_mb"]),
)


def _stage(point: dict[str, Any], retriever: str, stage: str) -> float | None:
    got = point[retriever]["stages"].get(stage)
    return None if got is None else float(got["seconds"])


def fit_exponents(points: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per column of :data:`SCALING_COLUMNS`: the least-squares slope of log(value) against
    log(stickers) over the successful points (value ~ size ** slope); None where fewer than two
    points have a positive value. Stages under 10 ms are left out (timer noise)."""
    import numpy as np
    pts = [p for p in points if "error" not in p]
    out: dict[str, float | None] = {}
    for name, value in SCALING_COLUMNS:
        floor = 0.0 if name.endswith("MB") else 0.01
        xy = [(p["size"], v) for p in pts if (v := value(p)) is not None and v > floor]
        if len({x for x, _ in xy}) < 2:
            out[name] = None
            continue
        x, y = (np.log(np.array(c, dtype=float)) for c in zip(*xy))
        out[name] = float(np.polyfit(x, y, 1)[0])
    return out


def run_scaling(sizes: tuple[int, ...], cfg: PerfConfig, echo: Callable[[str], None] = print,
                timeout: float = 3600, before_point: Callable[[], Any] | None = None
                ) -> list[dict[str, Any]]:
    """One fresh process per size (so each peak RSS is that size's own), with requests at the
    paper's density (:func:`bench.perf.config.paper_density_requests`: 125,680 at 5.4M); a
    dataset not cached yet is built first in another process. ``before_point``: called once the
    point's dataset is ready, just before it is measured (e.g. wait for a quiet machine)."""
    points = []
    for size in sizes:
        built = ensure_dataset(cfg.workload, size, cfg.seed, echo)
        cmd = [sys.executable, "-m", "bench.perf", "point", "--size", str(size),
               "--requests", str(paper_density_requests(size)), "--k", str(cfg.k), "--pool", str(cfg.pool),
               "--seed", str(cfg.seed), "--batch-size", str(cfg.batch_size),
               "--workload", cfg.workload]
        if before_point is not None:
            before_point()
        load_before = os.getloadavg()[0]
        echo(f"scaling: {size:,} stickers, {paper_density_requests(size):,} requests (load "
             f"{load_before:.2f}) ...")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PERF_POINT ")]
        if proc.returncode != 0 or not lines:
            points.append({"size": size, "error": (proc.stderr or proc.stdout).strip()[-800:]})
            echo(f"  failed: {points[-1]['error'][-200:]}")
            continue
        point = json.loads(lines[-1][len("PERF_POINT "):])
        point["built_s"] = built
        point["load_before"] = load_before
        point["process_s"] = time.perf_counter() - t0
        points.append(point)
        echo(f"  {point['total_s']:.1f} s (bm25 + persrv), peak RSS "
             f"{point['peak_rss_mb']:.0f} MB")
    return points
