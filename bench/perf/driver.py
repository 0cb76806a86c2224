"""``persrv-bench perf`` end to end: :func:`run_perf` (pipeline, references, sweep trial,
``--help``, scaling curve), the targets, and the MLflow run.

:func:`run_perf` loads (or builds once, in a subprocess) the workload's dataset
(:mod:`bench.perf.workloads`), splits it, takes the test requests (the first ``requests``) and
times every stage of each retriever (:func:`bench.perf.measure.measure_retriever`) as the runner
runs them, in one process, retrievers in sequence, so the per-process caches of field term
counts and recall pools are shared where PerSRV's variants allow. Then the references
(:mod:`bench.perf.references`, :mod:`bench.perf.naive`), one sweep trial, ``persrv-bench
--help``, and, in fresh processes, a scaling curve. Everything lands in ``perf.json`` and
``perf.md`` (and ``scaling.png``); ``compare`` (an earlier perf.json) adds before/after per stage.
Wall times are noisy on a shared machine: the load average and the CPU share this process got
are recorded with the results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.perf.config import MB, ORDER, PAPER_REQUESTS, PAPER_STICKERS, TARGETS, PerfConfig
from bench.perf.measure import (MemorySampler, StageClock, default_retrievers, max_rss,
                                measure_help, measure_retriever, measure_sweep_trial)
from bench.perf.scaling import run_scaling
from bench.perf.workloads import load_data

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- run it

def machine_info() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = None
    info: dict[str, Any] = {"cpus": os.cpu_count(), "cpus_available": affinity,
                            "python": sys.version.split()[0], "numpy": np.__version__,
                            "platform": sys.platform}
    with contextlib.suppress(Exception):
        import scipy
        info["scipy"] = scipy.__version__
    with contextlib.suppress(Exception):
        with open("/proc/meminfo", encoding="ascii") as fh:
            info["mem_total_gb"] = int(fh.readline().split()[1]) / (1 << 20)
    return info


def _cpu_times() -> tuple[float, float]:
    """(this process's user+system CPU seconds, the whole machine's busy CPU seconds)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    busy = 0.0
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/stat", encoding="ascii") as fh:
            vals = [float(v) for v in fh.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0.0)) / tick
    return ru.ru_utime + ru.ru_stime, busy


def workload_shape(data, cfg: PerfConfig) -> dict[str, Any]:
    """What the measured dataset looks like (printed with the results)."""
    ds, reqs = data.ds, data.requests.requests
    st = ds.stickers
    ocr = st["ocr_text"] if "ocr_text" in st else None
    words = [len(q.split()) for q in dict.fromkeys(r.query for r in reqs)]
    sim = (ds.meta.get("simulator") or {}).get("stats", {})
    return {
        "workload": cfg.workload if cfg.dataset_dir is None else "dataset",
        "name": ds.name, "fingerprint": ds.fingerprint, "stickers": len(st),
        "with_ocr_text": None if ocr is None else int((ocr.fillna("").str.strip() != "").sum()),
        "clicks": int(len(ds.interactions)), "fitting_clicks": int(len(data.view.clicks)),
        "users": int(ds.interactions["user_id"].nunique()),
        "topics": int(st["gt_topic"].nunique()) if "gt_topic" in st else None,
        "distinct_queries_all": sim.get("distinct_queries"),
        "test_requests": data.n_requests_all, "requests": len(reqs),
        "distinct_queries": len(words),
        "query_words": {str(n): int(c) for n, c in
                        zip(*np.unique(np.minimum(words, 4), return_counts=True))},
        "embedding_dim": None if data.view.embeddings is None else
        int(data.view.embeddings.shape[1]),
        "built_s": data.built_s, "simulated_users": bool(ds.meta.get("simulator"))}


def _measure_retrievers(data, cfg: PerfConfig, clock: StageClock, echo, profiler
                        ) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """Every retriever in sequence; (records, {bm25/persrv: (retriever, run)} kept)."""
    names = list(cfg.retrievers) if cfg.retrievers else default_retrievers()
    records, kept = {}, {}
    if "bm25" in names:  # the pruned kernel's compile/load, timed apart as bm25s-numba's jit
        from bench.bm25 import pruned
        from bench.bm25.scoring import n_threads
        with clock.stage("bm25-kernel", "jit"):
            pruned.warm_up(parallel=n_threads(None) > 1)
        echo(f"  bm25 pruned kernel compiled or loaded in "
             f"{clock.seconds('bm25-kernel', 'jit'):.2f} s (not counted, like bm25s-numba's jit)")
    if profiler is not None:
        profiler.enable()
    for name in names:
        rec, retriever, run = measure_retriever(name, data, cfg, clock)
        records[name] = rec
        echo(f"  {name:<28} {rec['e2e_s']:6.2f} s end to end  (fit {rec['fit_s']:.2f} s, "
             f"{rec['requests_per_s'] or 0:,.0f} req/s search, peak "
             f"{rec['peak_rss_mb']:,.0f} MB, M-MRR@{cfg.k}={rec['m_mrr']:.4f})")
        if name in ("bm25", "persrv"):
            kept[name] = (retriever, run)
        del retriever, run
    if profiler is not None:
        profiler.disable()
    return records, kept


def _measure_references(result, kept, data, cfg: PerfConfig, clock: StageClock, echo) -> None:
    from bench.perf import naive, references
    records = result["retrievers"]
    if "bm25" in kept and cfg.rank_bm25_sample > 0:
        echo(f"rank-bm25 on {cfg.rank_bm25_sample} sampled requests ...")
        result["rank_bm25"] = _guard(lambda: references.compare_rank_bm25(
            kept["bm25"][0], data, cfg, clock, records["bm25"]), "rank-bm25", echo)
    if "bm25" in kept and cfg.peers:
        echo("bm25s (numba) and tantivy on every request ...")
        result["peers"] = _guard(lambda: references.compare_peers(
            kept["bm25"][0], kept["bm25"][1], data, cfg, clock, records["bm25"]), "peers",
            echo)
        for name, p in (result["peers"].get("peers") or {}).items():
            if "error" in p:
                echo(f"  {name}: not measured ({p['error']})")
            else:
                echo(f"  {name:<12} index {p['index_s']:.2f} s + search {p['search_s']:.2f} s "
                     f"= {p['ratio']:.2f}x ours; overlap@{cfg.k} "
                     f"{p['agreement']['mean_overlap_at_k']:.4f}")
    if "persrv" in kept and cfg.naive_sample > 0:
        echo(f"naive per-candidate loop on {cfg.naive_sample} sampled requests ...")
        result["naive"] = _guard(lambda: naive.compare_naive(
            kept["persrv"][0], kept["persrv"][1], data, cfg, clock, records["persrv"]),
            "naive loop", echo)


def run_perf(cfg: PerfConfig, out: str | Path, echo: Callable[[str], None] = print,
             profile: bool = False, compare: str | Path | None = None) -> dict[str, Any]:
    """Measure everything (module doc) and write ``perf.json``, ``perf.md`` and
    ``scaling.png`` into ``out``; ``compare``: an earlier perf.json for before/after per
    stage. Returns the perf.json payload."""
    from bench.perf.render import plot_scaling, render_markdown
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = _read_previous(compare) if compare else None
    wall0 = time.perf_counter()
    cpu0 = _cpu_times()
    result: dict[str, Any] = {"config": dataclasses.asdict(cfg), "machine": machine_info(),
                              "load_start": list(os.getloadavg()),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
    with MemorySampler() as sampler:
        clock = StageClock(sampler)
        data = load_data(cfg, clock, echo)
        result["dataset"] = shape = {**workload_shape(data, cfg), "stages": clock.of("data")}
        echo(f"workload {shape['workload']}: {shape['name']} ({shape['fingerprint']}): "
             f"{shape['stickers']:,} stickers ({shape['with_ocr_text'] or 0:,} with OCR text), "
             f"{shape['users']:,} users, {len(data.requests):,} test requests, "
             f"{shape['distinct_queries']:,} distinct test queries; loaded in "
             f"{sum(v['seconds'] for v in clock.of('data').values()):.1f} s")
        result["retrievers"], kept = _measure_retrievers(data, cfg, clock, echo, profiler)
        records = result["retrievers"]
        result["pipeline"] = {
            "retrievers_s": sum(r["e2e_s"] for r in records.values()),
            "default_s": default_pipeline_s(records),
            "data_s": sum(v["seconds"] for v in clock.of("data").values()),
            "peak_rss_mb": max_rss() / MB}
        result["pipeline"]["with_data_s"] = result["pipeline"]["retrievers_s"] + \
            result["pipeline"]["data_s"]
        _measure_references(result, kept, data, cfg, clock, echo)
        kept.clear()
        gc.collect()
        if cfg.sweep_trial:
            echo("one sweep trial (validation split) ...")
            result["sweep"] = _guard(lambda: measure_sweep_trial(data, cfg, clock), "sweep",
                                     echo)
    result["process_peak_rss_mb"] = max_rss() / MB
    if cfg.help_check:
        result["help"] = measure_help()
    cpu1 = _cpu_times()
    measured_s = time.perf_counter() - wall0
    result["load_end"] = list(os.getloadavg())
    if cfg.scaling:
        result["scaling"] = run_scaling(tuple(cfg.scaling), cfg, echo)
        result["load_after_scaling"] = list(os.getloadavg())
    result["cpu"] = {"process_cpu_s": cpu1[0] - cpu0[0], "machine_busy_cpu_s": cpu1[1] - cpu0[1],
                     "wall_s": measured_s}
    result["wall_s"] = time.perf_counter() - wall0
    result["targets"] = evaluate_targets(result)
    if before is not None:
        result["compare"] = {"path": str(compare), "before": before}
    if profiler is not None:
        _write_profile(profiler, out / "profile.txt")
        result["profile"] = str(out / "profile.txt")
    if result.get("scaling"):
        png = plot_scaling(result["scaling"], out / "scaling.png")
        if png is not None:
            result["scaling_png"] = str(png)
    (out / "perf.json").write_text(json.dumps(result, indent=2, default=_jsonable),
                                   encoding="utf-8")
    (out / "perf.md").write_text(render_markdown(result), encoding="utf-8")
    return result


def default_pipeline_s(records: dict[str, Any]) -> float:
    """Seconds end to end of the default retrievers (:data:`bench.perf.config.ORDER`: bm25 + the
    7 PerSRV variants) among ``records``: what the pipeline target counts."""
    return float(sum(r["e2e_s"] for n, r in records.items() if n in ORDER))


def _read_previous(path: str | Path) -> dict[str, Any]:
    """The parts of an earlier perf.json that before/after needs (a one-line error if it is
    not one)."""
    from bench.errors import ConfigError
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--compare {path}: not a readable perf.json ({exc})") from None
    if not isinstance(old, dict) or not isinstance(old.get("retrievers"), dict):
        raise ConfigError(f"--compare {path}: no 'retrievers' section (not a perf.json)")
    return {k: old.get(k) for k in ("retrievers", "pipeline", "dataset", "sweep", "help",
                                    "peers", "rank_bm25", "started")}


def _guard(fn: Callable[[], dict[str, Any]], what: str, echo) -> dict[str, Any]:
    """A comparison that fails is reported, not fatal (the pipeline figures stand)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        log.exception("%s failed", what)
        echo(f"warning: {what} not measured ({type(exc).__name__}: {exc})")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _write_profile(profiler, path: Path) -> None:
    import io
    import pstats
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(30)
    path.write_text(buf.getvalue(), encoding="utf-8")


# ------------------------------------------------------------------------------------- report

def _met(value: float | None, goal: float, op: str) -> bool | None:
    if value is None:
        return None
    return {"<=": value <= goal, "<": value < goal, ">=": value >= goal}[op]


def fastest_ratio(result: dict[str, Any]) -> tuple[float | None, str]:
    """The smallest (reference index + search) / (bm25 index + search) over the references
    measured in the run (rank-bm25 extrapolated, bm25s-numba, tantivy); > 1: ours is faster."""
    ratios = {}
    rb = result.get("rank_bm25") or {}
    if rb.get("speedup_end_to_end"):
        ratios["rank-bm25"] = rb["speedup_end_to_end"]
    for name, p in ((result.get("peers") or {}).get("peers") or {}).items():
        if p.get("ratio") is not None:
            ratios[name] = p["ratio"]
    if not ratios:
        return None, "no reference measured"
    name = min(ratios, key=ratios.get)
    return ratios[name], "slowest-to-beat reference / bm25 baseline, index + search of all " \
        "requests: " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items())


def evaluate_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of :data:`TARGETS`: measured value, goal, met (None: not measured);
    ``paper_scale``: the zipf workload at 543,098 stickers and 12,568 requests (the targets are
    judged there; elsewhere they are informational)."""
    ds = result.get("dataset", {})
    paper = ds.get("stickers") == PAPER_STICKERS and ds.get("workload") == "zipf" and \
        ds.get("requests") == min(PAPER_REQUESTS, ds.get("test_requests", 0))
    pipe = result.get("pipeline", {})
    rb = result.get("rank_bm25") or {}
    values = {
        "pipeline_s": (pipe.get("default_s", pipe.get("retrievers_s")),
                       f"{sum(n in ORDER for n in result.get('retrievers', {}))} default "
                       "retrievers (bm25 + PerSRV variants), fit + search + metrics "
                       f"(data loading {pipe.get('data_s', 0):.1f} s more)"),
        "peak_rss_gb": (None if pipe.get("peak_rss_mb") is None else pipe["peak_rss_mb"] / 1024,
                        "process peak RSS (VmHWM) after loading and every retriever"),
        "bm25_fastest": fastest_ratio(result),
        "rank_bm25_speedup": (rb.get("speedup_search"),
                              "search stage (all requests), rank-bm25 extrapolated "
                              + rb.get("extrapolation", "").split(":")[0]),
        "rank_bm25_identical": ((rb.get("identity") or {}).get("fraction"),
                                "sampled distinct queries with identical top-k under "
                                "rank-bm25's formula (float32 ties allowed)"),
        "sweep_trial_s": ((result.get("sweep") or {}).get("trial_s"),
                          "with_params(n_clusters=7) + re-rank + metrics, validation"),
        "help_s": ((result.get("help") or {}).get("median_s"),
                   "persrv-bench --help in a subprocess, median of 3"),
    }
    out = {}
    for name, (goal, op, unit) in TARGETS.items():
        value, note = values[name]
        out[name] = {"measured": value, "goal": goal, "op": op, "unit": unit,
                     "met": _met(value, goal, op), "note": note, "paper_scale": paper}
    return out


def perf_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat numeric metrics of a perf.json payload (MLflow metric names)."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and \
                np.isfinite(value):
            out[name] = float(value)

    pipe = result.get("pipeline", {})
    put("pipeline_retrievers_s", pipe.get("retrievers_s"))
    put("pipeline_default_s", pipe.get("default_s"))
    put("pipeline_with_data_s", pipe.get("with_data_s"))
    put("pipeline_peak_rss_mb", pipe.get("peak_rss_mb"))
    put("process_peak_rss_mb", result.get("process_peak_rss_mb"))
    for name, r in result.get("retrievers", {}).items():
        for key in ("e2e_s", "fit_s", "search_s", "metrics_s", "peak_rss_mb", "requests_per_s"):
            put(f"{name}.{key}", r.get(key))
        for stage, v in r["stages"].items():
            put(f"{name}.{stage.replace(' ', '_').replace('(', '').replace(')', '')}_s",
                v["seconds"])
    rb = result.get("rank_bm25") or {}
    for key in ("speedup_search", "speedup_search_same_sample", "speedup_end_to_end",
                "rank_bm25_fit_s", "rank_bm25_search_extrapolated_s"):
        put(f"rank_bm25.{key}", rb.get(key))
    put("rank_bm25.identical_fraction", (rb.get("identity") or {}).get("fraction"))
    nv = result.get("naive") or {}
    for key in ("speedup", "speedup_recall", "speedup_rerank", "per_request_s",
                "extrapolated_s"):
        put(f"naive.{key}", nv.get(key))
    put("naive.identical_top_k", (nv.get("agreement") or {}).get("identical_top_k"))
    for name, p in ((result.get("peers") or {}).get("peers") or {}).items():
        for key in ("index_s", "search_s", "total_s", "ratio"):
            put(f"{name}.{key}", p.get(key))
        put(f"{name}.overlap_at_k", (p.get("agreement") or {}).get("mean_overlap_at_k"))
    sw = result.get("sweep") or {}
    for key in ("trial_s", "base_fit_s", "first_trial_s"):
        put(f"sweep.{key}", sw.get(key))
    put("help_s", (result.get("help") or {}).get("median_s"))
    for name, t in result.get("targets", {}).items():
        if t["met"] is not None:
            out[f"target.{name}.met"] = float(t["met"])
    return out


def log_to_mlflow(result: dict[str, Any], folder: Path, uri: str,
                  echo: Callable[[str], None] = print) -> str | None:
    """One run in experiment ``perf``: params, :func:`perf_metrics`, the scaling curve as
    metrics stepped by corpus size, and perf.json / perf.md / scaling.png / profile.txt."""
    from bench.tracking import Tracker, git_commit, mask_credentials
    from bench.tracking.schema import perf_run_name, perf_tags
    try:
        tracker = Tracker(uri)
        ds = result.get("dataset", {})
        size = f"{ds.get('workload', 'dataset')}-{result['config']['size']}"
        tags = perf_tags(
            ds, git_commit=git_commit(), workload=ds.get("workload", ""),
            load_average_start=" ".join(f"{x:.2f}" for x in result["load_start"]),
            load_average_end=" ".join(f"{x:.2f}" for x in result.get("load_end", [])),
            targets_missed=",".join(n for n, t in result.get("targets", {}).items()
                                    if t["met"] is False) or "none")
        run_id = tracker.start_run("perf", run_name=perf_run_name(size), tags=tags)
        tracker.log_params(run_id, {"config": result["config"], "machine": result["machine"]})
        tracker.log_metrics(run_id, perf_metrics(result))
        for p in result.get("scaling") or []:
            if "error" in p:
                continue
            tracker.log_metrics(run_id, {"scaling.total_s": p["total_s"],
                                         "scaling.peak_rss_mb": p["peak_rss_mb"],
                                         "scaling.persrv_e2e_s": p["persrv"]["e2e_s"],
                                         "scaling.bm25_e2e_s": p["bm25"]["e2e_s"]},
                                step=int(p["size"]))
        for name in ("perf.json", "perf.md", "scaling.png", "profile.txt"):
            if (folder / name).exists():
                tracker.log_artifact(run_id, folder / name)
        tracker.end_run(run_id, "FINISHED")
        return run_id
    except Exception as exc:  # noqa: BLE001 - the local results stand
        echo(f"warning: MLflow logging failed ({type(exc).__name__}: "
             f"{mask_credentials(str(exc))}); results are local only in {folder}")
        return None


