"""The scaling curve of ``persrv-bench perf``: bm25 and full persrv at several corpus sizes, one
fresh process per size (``python -m bench.perf point``), so each peak RSS is that size's own."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from typing import Any, Callable

from bench.perf.config import MB, PerfConfig
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


def run_scaling(sizes: tuple[int, ...], cfg: PerfConfig, echo: Callable[[str], None] = print,
                timeout: float = 3600) -> list[dict[str, Any]]:
    """One fresh process per size (so each peak RSS is that size's own); a dataset not cached
    yet is built first in another process."""
    points = []
    for size in sizes:
        built = ensure_dataset(cfg.workload, size, cfg.seed, echo)
        cmd = [sys.executable, "-m", "bench.perf", "point", "--size", str(size),
               "--requests", str(cfg.requests), "--k", str(cfg.k), "--pool", str(cfg.pool),
               "--seed", str(cfg.seed), "--batch-size", str(cfg.batch_size),
               "--workload", cfg.workload]
        echo(f"scaling: {size:,} stickers ...")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PERF_POINT ")]
        if proc.returncode != 0 or not lines:
            points.append({"size": size, "error": (proc.stderr or proc.stdout).strip()[-800:]})
            echo(f"  failed: {points[-1]['error'][-200:]}")
            continue
        point = json.loads(lines[-1][len("PERF_POINT "):])
        point["built_s"] = built
        point["process_s"] = time.perf_counter() - t0
        points.append(point)
        echo(f"  {point['total_s']:.1f} s (bm25 + persrv), peak RSS "
             f"{point['peak_rss_mb']:.0f} MB")
    return points
