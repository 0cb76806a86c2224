"""Performance benchmark (``persrv-bench perf``): stage timings, peak memory, references.

:func:`run_perf` builds (or reuses, from the dataset cache) the synthetic dataset at a given size
in text-only mode (precomputed style vectors in ``embedding``, simulated ``ocr_text``), splits it,
takes the test requests (the first ``requests`` of them) and times every stage of each retriever
separately — index build, utility, clustering of every user, recall, re-rank, result assembly,
metrics — as the runner runs them (one process, retrievers in sequence, so the per-process
caches of field term counts and recall pools are shared where PerSRV's variants allow). Then it
measures the references (:mod:`bench.perf_naive`): the same BM25 pipeline on rank-bm25 with a
top-k identity check under rank-bm25's formula, and a naive per-candidate Python loop; one sweep
trial (``with_params(n_clusters=7)`` + re-rank + metrics on validation); ``persrv-bench --help``;
and, in fresh processes, a scaling curve over corpus sizes. Everything lands in ``perf.json`` and
``perf.md`` (and ``scaling.png``).

Memory: the resident set size is sampled every 10 ms by a thread (``/proc/self/statm``); a
stage's peak is the largest sample while it ran, the process peak is ``VmHWM``
(:func:`max_rss`). A dataset that is not cached yet is built in a subprocess, so neither its
time nor its memory counts.
Wall times are noisy on a shared machine: the load average and the CPU share this process got
are recorded with the results.

``python -m bench.perf point|build ...`` is the subprocess side (one scaling point; a build).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

PAPER_STICKERS = 543_098
PAPER_REQUESTS = 12_568
DEFAULT_SCALING = (10_000, 100_000, PAPER_STICKERS, 1_000_000)
#: Targets at paper scale (2 cores, features cached): name -> (goal, "<=" or ">=", unit).
TARGETS = {
    "pipeline_s": (60.0, "<=", "s"),
    "peak_rss_gb": (4.0, "<=", "GB"),
    "rank_bm25_speedup": (100.0, ">=", "x"),
    "rank_bm25_identical": (1.0, ">=", "fraction"),
    "sweep_trial_s": (10.0, "<=", "s"),
    "help_s": (1.0, "<=", "s"),
}
#: PerSRV fit stages: (stage, method of PerSRV.fit timed by wrapping it on the instance).
FIT_STAGES = (("index", "_fit_index"), ("utility", "_fit_utility"),
              ("clusters", "_fit_clusters"))
#: Preferred order of the default retrievers: variants with identical recall are adjacent, so
#: the recall-pool cache (two configurations) serves them; other registered persrv-* follow.
ORDER = ("bm25", "persrv", "persrv-no-personalization", "persrv-no-description",
         "persrv-no-utility", "persrv-bm25", "persrv-no-ocr", "persrv-no-queries")
STAGE_COLUMNS = ("index", "utility", "clusters", "recall", "rerank", "results", "metrics")
BM25_PARAMS = {"fields": "ocr_text,queries", "backend": "bm25s"}
MB = 1 << 20


@dataclass
class PerfConfig:
    """What ``persrv-bench perf`` measures (see the module doc).

    ``size``: stickers; ``requests``: most test requests (the first ones); ``k``: ranking depth;
    ``pool``: PerSRV recall depth; ``retrievers``: names (None: bm25 + persrv + every registered
    persrv-*); ``rank_bm25_sample`` / ``naive_sample``: requests run on the slow references
    (0 skips); ``scaling``: corpus sizes of the scaling curve (empty skips); ``sweep_trial`` and
    ``help_check``: measure those too; ``dataset_dir``: an existing dataset instead of the
    synthetic build; ``batch_size``: requests per search call, as the runner's default.
    """

    size: int = PAPER_STICKERS
    requests: int = PAPER_REQUESTS
    k: int = 20
    pool: int = 5000
    seed: int = 0
    retrievers: tuple[str, ...] | None = None
    rank_bm25_sample: int = 200
    naive_sample: int = 50
    scaling: tuple[int, ...] = DEFAULT_SCALING
    sweep_trial: bool = True
    help_check: bool = True
    dataset_dir: str | None = None
    batch_size: int = 2048

    @property
    def ks(self) -> list[int]:
        return sorted({x for x in (1, 5, 10, 20) if x <= self.k} | {self.k})


# ------------------------------------------------------------------------------------- memory

def current_rss() -> int | None:
    """Resident set size of this process in bytes (None where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil
            return int(psutil.Process().memory_info().rss)
        except Exception:  # noqa: BLE001 - memory figures are optional
            return None


def max_rss() -> int:
    """Peak resident set size of this process so far, in bytes: ``VmHWM`` (the high-water mark
    of this program's own memory), else ``ru_maxrss`` — which Linux carries over from the
    parent across fork + exec, so a small child started by a big parent reports the parent's
    peak."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


class MemorySampler:
    """A daemon thread sampling :func:`current_rss` every ``interval`` seconds; windows opened
    with :meth:`open` track their own peak until :meth:`close`."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self._windows: dict[int, int] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def _sample(self) -> None:
        rss = current_rss() or 0
        with self._lock:
            for w, peak in self._windows.items():
                if rss > peak:
                    self._windows[w] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def open(self) -> int:
        with self._lock:
            w = self._next
            self._next += 1
            self._windows[w] = current_rss() or 0
        return w

    def close(self, window: int) -> int:
        """The window's peak RSS in bytes (a last sample included)."""
        self._sample()
        with self._lock:
            return self._windows.pop(window)


class StageClock:
    """Wall time and peak RSS per (owner, stage); a stage entered again accumulates."""

    def __init__(self, sampler: MemorySampler):
        self.sampler = sampler
        self.stages: dict[tuple[str, str], dict[str, float]] = {}

    @contextlib.contextmanager
    def stage(self, owner: str, name: str) -> Iterator[None]:
        w = self.sampler.open()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            peak = self.sampler.close(w)
            row = self.stages.setdefault((owner, name), {"seconds": 0.0, "peak_rss_mb": 0.0,
                                                          "calls": 0})
            row["seconds"] += dt
            row["peak_rss_mb"] = max(row["peak_rss_mb"], peak / MB)
            row["calls"] += 1

    def of(self, owner: str) -> dict[str, dict[str, float]]:
        """Stage name -> {seconds, peak_rss_mb, calls} of one owner, in the order first run."""
        return {n: dict(v) for (o, n), v in self.stages.items() if o == owner}

    def seconds(self, owner: str, name: str) -> float:
        return float(self.stages.get((owner, name), {}).get("seconds", 0.0))


@contextlib.contextmanager
def timed_methods(obj: Any, clock: StageClock, owner: str,
                  stages: tuple[tuple[str, str], ...]) -> Iterator[list[str]]:
    """Time calls of ``obj``'s methods as stages (wrappers set on the instance, removed on
    exit, so copies made later — ``with_params`` — do not inherit them). Methods that do not
    exist are skipped; yields the names wrapped."""
    wrapped = []
    for stage, meth in stages:
        orig = getattr(obj, meth, None)
        if not callable(orig):
            continue

        def wrapper(*args, _orig=orig, _stage=stage, **kwargs):
            with clock.stage(owner, _stage):
                return _orig(*args, **kwargs)
        obj.__dict__[meth] = wrapper
        wrapped.append(meth)
    try:
        yield wrapped
    finally:
        for meth in wrapped:
            obj.__dict__.pop(meth, None)


# --------------------------------------------------------------------------------------- data

@dataclass
class PerfData:
    """What the measured pipeline starts from (as :func:`bench.runner.prepare` gives it)."""

    ds: Any
    splits: Any
    requests: Any      # bench.data.splits.Requests, capped
    view: Any          # TrainView for the test run (train + validation clicks)
    n_requests_all: int
    built_s: float | None


def dataset_spec(size: int, seed: int):
    from bench.config import DatasetSpec
    params: dict[str, Any] = {"n_stickers": int(size), "images": False}
    if seed:
        params["seed"] = int(seed)
    return DatasetSpec(builder="synthetic", params=params)


def dataset_cached(spec) -> bool:
    from bench.data.format import META_FILE
    from bench.data.resolve import _params_key, built_dataset_dir
    meta = built_dataset_dir(spec) / META_FILE
    if not meta.exists():
        return False
    return json.loads(meta.read_text(encoding="utf-8")).get("builder_params_key") == \
        _params_key(spec)


def ensure_dataset(size: int, seed: int, echo: Callable[[str], None] = print) -> float | None:
    """Build the synthetic dataset of ``size`` into the dataset cache in a subprocess (so its
    time and memory stay out of the measurements); seconds spent, None if it was cached."""
    if dataset_cached(dataset_spec(size, seed)):
        return None
    echo(f"building the synthetic dataset ({size:,} stickers, text-only) into the cache ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.perf", "build", "--size", str(size),
                    "--seed", str(seed)], check=True)
    return time.perf_counter() - t0


def cap_requests(requests, n: int):
    from bench.data.splits import Requests
    if n <= 0 or len(requests) <= n:
        return requests
    keep = requests.requests[:n]
    return Requests(keep, {r: requests.relevant[r] for r in keep})


def load_data(cfg: PerfConfig, clock: StageClock, echo: Callable[[str], None] = print
              ) -> PerfData:
    """Dataset (cache or ``dataset_dir``), splits, capped test requests, the test TrainView."""
    from bench.data.format import load_dataset
    from bench.data.resolve import resolve_dataset
    from bench.data.splits import split_interactions
    from bench.features.cache import FeatureCache
    from bench.retrieval import leak_safe_view
    from bench.runner import attach_configured_features
    built = None
    if cfg.dataset_dir is None:
        built = ensure_dataset(cfg.size, cfg.seed, echo)
    with clock.stage("data", "load"):
        ds = load_dataset(cfg.dataset_dir) if cfg.dataset_dir else \
            resolve_dataset(dataset_spec(cfg.size, cfg.seed))
    with clock.stage("data", "split"):
        splits = split_interactions(ds.interactions)
        all_requests = splits.requests("test")
        requests = cap_requests(all_requests, cfg.requests)
    with clock.stage("data", "features"):
        stickers, embeddings, _ = attach_configured_features(ds, {})
        view = leak_safe_view(stickers, splits.history_for("test"), meta=ds.meta,
                              root=ds.root, embeddings=embeddings, cache=FeatureCache(None),
                              seed=cfg.seed)
    return PerfData(ds, splits, requests, view, len(all_requests), built)


# --------------------------------------------------------------------------------- retrievers

def default_retrievers() -> list[str]:
    """bm25, persrv and every registered persrv-* variant (recall-sharing ones adjacent)."""
    from bench.registry import registry
    names = [n for n in registry() if n == "persrv" or n.startswith("persrv-")]
    return [n for n in ORDER if n in names or n == "bm25"] + \
        sorted(n for n in names if n not in ORDER)


def retriever_params(name: str, cfg: PerfConfig) -> dict[str, Any]:
    if name == "bm25":
        return dict(BM25_PARAMS)
    if name == "persrv" or name.startswith("persrv-"):
        return {"pool": int(cfg.pool)}
    return {}


def _recall_cached(retriever, queries: list[str]) -> bool | None:
    """Whether every query's recall pool is already in PerSRV's shared cache (None: unknown)."""
    try:
        where = retriever._recall.where
    except AttributeError:
        return None
    return all(q in where for q in queries)


def measure_retriever(name: str, data: PerfData, cfg: PerfConfig, clock: StageClock,
                      label: str | None = None) -> tuple[dict[str, Any], Any, Any]:
    """Fit, search (batched, as the runner), evaluate; returns (record, retriever, run).

    PerSRV's search is timed in its parts (``recall``, ``rerank`` = personalize, ``results`` =
    the Run), its fit through :data:`FIT_STAGES`; a retriever without those has ``index`` (fit)
    and ``recall`` (the whole search)."""
    from bench.metrics import evaluate_run, metric_name
    from bench.retrieval import Run, iter_batches
    from bench.registry import get_params, make_retriever
    label = label or name
    params = retriever_params(name, cfg)
    retriever = make_retriever(name, params)
    reqs = data.requests.requests
    queries = list(dict.fromkeys(r.query for r in reqs))
    t0 = time.perf_counter()
    with timed_methods(retriever, clock, label, FIT_STAGES) as wrapped:
        fit0 = time.perf_counter()
        if wrapped:
            retriever.fit(data.view)
        else:
            with clock.stage(label, "index"):
                retriever.fit(data.view)
        fit_s = time.perf_counter() - fit0
    shared = _recall_cached(retriever, queries)
    run = Run(name=label)
    k = int(cfg.k)
    split = all(hasattr(retriever, m) for m in ("recall", "personalize", "to_run")) and \
        k <= int(getattr(retriever, "pool", 0))
    search0 = time.perf_counter()
    for batch in iter_batches(reqs, cfg.batch_size):
        batch = list(batch)
        if split:
            with clock.stage(label, "recall"):
                pool = retriever.recall(batch)
            with clock.stage(label, "rerank"):
                ids, scores = retriever.personalize(pool, batch, k)
            with clock.stage(label, "results"):
                run.results.update(retriever.to_run(batch, ids, scores).results)
        else:
            with clock.stage(label, "recall"):
                part = retriever.search(batch, k)
                for req in batch:
                    run[req] = list(part.results.get(req, []))[:k]
    search_s = time.perf_counter() - search0
    with clock.stage(label, "metrics"):
        _, macro, _ = evaluate_run(run, data.requests, cfg.ks)
    e2e = time.perf_counter() - t0
    stages = clock.of(label)
    other = fit_s - sum(stages[s]["seconds"] for s in ("index", "utility", "clusters")
                        if s in stages)
    n = len(reqs)
    record = {
        "name": name, "params": {k_: v for k_, v in get_params(retriever).items()
                                 if not callable(v)},
        "stages": stages, "fit_s": fit_s, "fit_other_s": max(other, 0.0),
        "search_s": search_s, "metrics_s": stages["metrics"]["seconds"], "e2e_s": e2e,
        "requests": n, "requests_per_s": n / search_s if search_s > 0 else None,
        "e2e_requests_per_s": n / e2e if e2e > 0 else None,
        "peak_rss_mb": max(v["peak_rss_mb"] for v in stages.values()),
        "recall_shared": shared,
        "m_mrr": macro.get(metric_name("m_mrr", k)),
        "load_average_after": os.getloadavg()[0],
    }
    return record, retriever, run


# ----------------------------------------------------------------------------- sweep / --help

def measure_sweep_trial(data: PerfData, cfg: PerfConfig, clock: StageClock,
                        n_clusters: int = 7) -> dict[str, Any]:
    """One sweep trial as :class:`bench.sweep.SweepSession` runs it: on the validation split,
    a PerSRV fitted once on train (``base fit``, paid once per study) answers the default trial
    first (``first trial``: recall pools computed), then the timed trial
    ``with_params(n_clusters=...)`` re-clusters every user, re-ranks and scores."""
    from bench.metrics import evaluate_run, metric_name
    from bench.retrieval import Run, iter_batches
    from bench.registry import make_retriever
    view = dataclasses.replace(data.view, clicks=data.splits.history_for("validation"))
    requests = cap_requests(data.splits.requests("validation"), cfg.requests)

    def evaluate(retriever, owner: str) -> float:
        run = Run(name="persrv")
        with clock.stage(owner, "search"):
            for batch in iter_batches(requests.requests, cfg.batch_size):
                part = retriever.search(list(batch), cfg.k)
                for req in batch:
                    run[req] = list(part.results.get(req, []))[:cfg.k]
        with clock.stage(owner, "metrics"):
            _, macro, _ = evaluate_run(run, requests, cfg.ks)
        return macro[metric_name("m_mrr", cfg.k)]

    with clock.stage("sweep-base", "fit"):
        base = make_retriever("persrv", {"pool": int(cfg.pool)}).fit(view)
    first = evaluate(base, "sweep-first-trial")
    t0 = time.perf_counter()
    with clock.stage("sweep-trial", "recluster"):
        trial = base.with_params(n_clusters=int(n_clusters))
    m = evaluate(trial, "sweep-trial")
    trial_s = time.perf_counter() - t0
    return {"requests": len(requests), "n_clusters": int(n_clusters),
            "base_fit_s": clock.seconds("sweep-base", "fit"),
            "first_trial_s": sum(v["seconds"] for v in clock.of("sweep-first-trial").values()),
            "trial_s": trial_s, "stages": clock.of("sweep-trial"),
            "m_mrr_default": first, "m_mrr_trial": m,
            "peak_rss_mb": max(v["peak_rss_mb"] for v in clock.of("sweep-trial").values())}


def help_command() -> list[str]:
    exe = Path(sys.executable).parent / "persrv-bench"
    return [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "bench", "--help"]


def measure_help(repeats: int = 3) -> dict[str, Any]:
    """Wall seconds of ``persrv-bench --help`` in a fresh process (median of ``repeats``)."""
    cmd = help_command()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            return {"command": " ".join(cmd), "error": out.stderr.strip()[-500:],
                    "seconds": times}
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
            "seconds": times, "median_s": float(np.median(times))}


# ------------------------------------------------------------------------------------ scaling

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
        built = ensure_dataset(size, cfg.seed, echo)
        cmd = [sys.executable, "-m", "bench.perf", "point", "--size", str(size),
               "--requests", str(cfg.requests), "--k", str(cfg.k), "--pool", str(cfg.pool),
               "--seed", str(cfg.seed), "--batch-size", str(cfg.batch_size)]
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


def run_perf(cfg: PerfConfig, out: str | Path, echo: Callable[[str], None] = print,
             profile: bool = False) -> dict[str, Any]:
    """Measure everything (module doc) and write ``perf.json``, ``perf.md`` and
    ``scaling.png`` into ``out``; returns the perf.json payload."""
    from bench import perf_naive
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        ds = data.ds
        result["dataset"] = {
            "name": ds.name, "fingerprint": ds.fingerprint, "stickers": len(ds.stickers),
            "clicks": int(len(ds.interactions)), "fitting_clicks": int(len(data.view.clicks)),
            "users": int(ds.interactions["user_id"].nunique()),
            "test_requests": data.n_requests_all, "requests": len(data.requests),
            "distinct_queries": len({r.query for r in data.requests.requests}),
            "embedding_dim": None if data.view.embeddings is None else
            int(data.view.embeddings.shape[1]),
            "built_s": data.built_s, "stages": clock.of("data"),
            "simulated_users": bool(ds.meta.get("simulator"))}
        echo(f"dataset {ds.name} ({ds.fingerprint}): {len(ds.stickers):,} stickers, "
             f"{len(data.requests):,} test requests "
             f"({result['dataset']['distinct_queries']} distinct queries); loaded in "
             f"{sum(v['seconds'] for v in clock.of('data').values()):.1f} s")

        names = list(cfg.retrievers) if cfg.retrievers else default_retrievers()
        records, kept = {}, {}
        if profiler is not None:
            profiler.enable()
        for name in names:
            rec, retriever, run = measure_retriever(name, data, cfg, clock)
            records[name] = rec
            echo(f"  {name:<28} {rec['e2e_s']:6.2f} s end to end  "
                 f"({rec['requests_per_s'] or 0:,.0f} req/s search, peak "
                 f"{rec['peak_rss_mb']:,.0f} MB, M-MRR@{cfg.k}={rec['m_mrr']:.4f})")
            if name in ("bm25", "persrv"):
                kept[name] = (retriever, run)
            del retriever, run
        if profiler is not None:
            profiler.disable()
        result["retrievers"] = records
        result["pipeline"] = {
            "retrievers_s": sum(r["e2e_s"] for r in records.values()),
            "data_s": sum(v["seconds"] for v in clock.of("data").values()),
            "peak_rss_mb": max_rss() / MB}
        result["pipeline"]["with_data_s"] = result["pipeline"]["retrievers_s"] + \
            result["pipeline"]["data_s"]

        if "bm25" in kept and cfg.rank_bm25_sample > 0:
            echo(f"rank-bm25 on {cfg.rank_bm25_sample} sampled requests ...")
            result["rank_bm25"] = _guard(lambda: perf_naive.compare_rank_bm25(
                kept["bm25"][0], data, cfg, clock, records["bm25"]), "rank-bm25", echo)
        if "persrv" in kept and cfg.naive_sample > 0:
            echo(f"naive per-candidate loop on {cfg.naive_sample} sampled requests ...")
            result["naive"] = _guard(lambda: perf_naive.compare_naive(
                kept["persrv"][0], kept["persrv"][1], data, cfg, clock, records["persrv"]),
                "naive loop", echo)
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
    wall = time.perf_counter() - wall0
    result["cpu"] = {"process_cpu_s": cpu1[0] - cpu0[0], "machine_busy_cpu_s": cpu1[1] - cpu0[1],
                     "wall_s": measured_s}
    result["wall_s"] = wall
    result["targets"] = evaluate_targets(result)
    if profiler is not None:
        _write_profile(profiler, out / "profile.txt")
        result["profile"] = str(out / "profile.txt")
    if result.get("scaling"):
        png = plot_scaling(result["scaling"], out / "scaling.png")
        if png is not None:
            result["scaling_png"] = str(png)
    (out / "perf.json").write_text(json.dumps(result, indent=2, default=_jsonable),
                                   encoding="utf-8")
    md = render_markdown(result)
    (out / "perf.md").write_text(md, encoding="utf-8")
    return result


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
    return value <= goal if op == "<=" else value >= goal


def evaluate_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of :data:`TARGETS`: measured value, goal, met (None: not measured)."""
    ds = result.get("dataset", {})
    paper = ds.get("stickers") == PAPER_STICKERS and \
        ds.get("requests") == min(PAPER_REQUESTS, ds.get("test_requests", 0))
    pipe = result.get("pipeline", {})
    rb = result.get("rank_bm25") or {}
    values = {
        "pipeline_s": (pipe.get("retrievers_s"),
                       f"{len(result.get('retrievers', {}))} retrievers, fit + search + metrics "
                       f"(data loading {pipe.get('data_s', 0):.1f} s more: "
                       f"{pipe.get('with_data_s', 0):.1f} s)"),
        "peak_rss_gb": (None if pipe.get("peak_rss_mb") is None else pipe["peak_rss_mb"] / 1024,
                        "process peak RSS (VmHWM) after loading and every retriever"),
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


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def render_markdown(result: dict[str, Any]) -> str:
    """perf.md: the tables ``persrv-bench perf`` prints."""
    cfg, ds, m = result["config"], result.get("dataset", {}), result["machine"]
    lines = [f"# persrv-bench perf: {ds.get('stickers', 0):,} stickers, "
             f"{ds.get('requests', 0):,} test requests, k={cfg['k']}, pool={cfg['pool']}", ""]
    cpu = result.get("cpu", {})
    share = ""
    if cpu.get("machine_busy_cpu_s"):
        share = (f"; CPU: this process {cpu['process_cpu_s']:.0f} s of the machine's "
                 f"{cpu['machine_busy_cpu_s']:.0f} busy CPU-seconds")
    lines += [f"Machine: {m.get('cpus')} CPUs ({m.get('cpus_available')} usable), "
              f"{_f(m.get('mem_total_gb'), '{:.0f}')} GB; load average "
              f"{'/'.join(f'{x:.2f}' for x in result['load_start'])} at start, "
              f"{'/'.join(f'{x:.2f}' for x in result.get('load_end', []))} at the end of the "
              f"measurements (before the scaling runs){share}. "
              f"Python {m.get('python')}, numpy {m.get('numpy')}, scipy {m.get('scipy')}.",
              f"Dataset: {ds.get('name')} ({ds.get('fingerprint')}), {ds.get('clicks', 0):,} "
              f"clicks, {ds.get('users', 0):,} users (simulated), "
              f"{ds.get('distinct_queries')} distinct test queries, text-only with precomputed "
              f"{ds.get('embedding_dim')}-d style vectors; "
              + ("built in a subprocess in " + _f(ds.get('built_s'), '{:.1f}') + " s (not "
                 "counted)" if ds.get("built_s") else "from the dataset cache")
              + "; data stages: " + ", ".join(f"{k} {v['seconds']:.2f} s"
                                      for k, v in ds.get("stages", {}).items()) + ".", ""]
    recs = result.get("retrievers", {})
    if recs:
        lines += ["## Retrievers (wall seconds per stage, in run order)", "",
                  "| retriever | " + " | ".join(STAGE_COLUMNS) + " | end to end | req/s "
                  "(search) | peak RSS MB | M-MRR@" + str(cfg["k"]) + " |",
                  "|---|" + "---:|" * (len(STAGE_COLUMNS) + 4)]
        for name, r in recs.items():
            st = r["stages"]
            cells = [_f(st[c]["seconds"]) if c in st else "" for c in STAGE_COLUMNS]
            if r.get("recall_shared") and "recall" in st:
                cells[STAGE_COLUMNS.index("recall")] += " (shared)"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['e2e_s']:.2f} | "
                         f"{_f(r['requests_per_s'], '{:,.0f}')} | {r['peak_rss_mb']:,.0f} | "
                         f"{_f(r['m_mrr'], '{:.4f}')} |")
        pipe = result["pipeline"]
        lines += ["", f"All {len(recs)} retrievers: **{pipe['retrievers_s']:.1f} s** "
                      f"(+ {pipe['data_s']:.1f} s data loading = {pipe['with_data_s']:.1f} s); "
                      f"process peak RSS **{pipe['peak_rss_mb'] / 1024:.2f} GB**. bm25's recall "
                      "column is its whole search (top k). `(shared)`: the recall pools came "
                      "from an earlier variant with identical recall (per-process cache); field "
                      "term counts are shared the same way, so later variants' index builds "
                      "are cheaper than a lone fit.", ""]
    rb = result.get("rank_bm25")
    if rb and "error" not in rb:
        ident = rb["identity"]
        lines += ["## BM25: bm25s vs rank-bm25", "",
                  f"rank-bm25 (`BM25Okapi`) ran {rb['sample_requests']} sampled requests "
                  f"({rb['sample_distinct_queries']} distinct queries) and is **extrapolated** "
                  f"to all requests ({rb['extrapolation']}).", "",
                  "| | bm25s (ours) | rank-bm25 | ratio |", "|---|---:|---:|---:|",
                  f"| index build s | {rb['bm25s_fit_s']:.2f} | {rb['rank_bm25_fit_s']:.2f} | "
                  f"{rb['rank_bm25_fit_s'] / max(rb['bm25s_fit_s'], 1e-9):.1f}x |",
                  f"| search, sample s | {rb['bm25s_search_sample_s']:.3f} | "
                  f"{rb['rank_bm25_search_sample_s']:.2f} | "
                  f"{_f(rb['speedup_search_same_sample'], '{:,.0f}')}x |",
                  f"| search, all requests s | {rb['bm25s_search_s']:.3f} | "
                  f"{rb['rank_bm25_search_extrapolated_s']:.1f} (extrapolated) | "
                  f"**{_f(rb['speedup_search'], '{:,.0f}')}x** |",
                  f"| index + search s | {rb['bm25s_fit_s'] + rb['bm25s_search_s']:.2f} | "
                  f"{rb['rank_bm25_fit_s'] + rb['rank_bm25_search_extrapolated_s']:.1f} | "
                  f"{rb['speedup_end_to_end']:.1f}x |", "",
                  f"Top-k identity under rank-bm25's formula ({ident['compared']}): "
                  f"**{ident['identical_up_to_ties']}/{ident['queries']}** identical up to "
                  f"float32 ties ({ident['identical']} strictly identical); largest relative "
                  f"score difference {ident['max_rel_score_diff']:.1e}; okapi idf vs "
                  f"rank-bm25's own idf: max |diff| {ident['okapi_idf_max_abs_diff']:.1e}. "
                  f"The Lucene-formula baseline as run matches rank-bm25's top-k on "
                  f"{rb['lucene_vs_rank_bm25']['identical']}/{ident['queries']} (different "
                  "idf: not expected to match in general).", ""]
    nv = result.get("naive")
    if nv and "error" not in nv:
        ag = nv["agreement"]
        lines += ["## PerSRV vs a naive per-candidate Python loop", "",
                  f"Naive loop (reference style: per request, per candidate, BM25 from dict "
                  f"lookups + cosine to each centroid in pure Python) on {nv['sample_requests']} "
                  f"sampled requests ({nv['sample_with_clusters']} with clusters), "
                  f"**extrapolated** {nv['extrapolation']}: {nv['per_request_s'] * 1e3:.1f} ms "
                  f"per request (recall {nv['recall_per_request_s'] * 1e3:.1f} ms, re-rank "
                  f"{nv['rerank_per_request_s'] * 1e3:.1f} ms) -> {nv['extrapolated_s']:.1f} s "
                  f"for all requests vs PerSRV's search {nv['ours_search_s']:.2f} s: "
                  f"**{_f(nv['speedup'], '{:,.0f}')}x** "
                  f"(recall {_f(nv['speedup_recall'], '{:,.0f}')}x, "
                  f"re-rank {_f(nv['speedup_rerank'], '{:,.0f}')}x; "
                  f"{_f(nv['speedup_if_naive_cached_queries'], '{:,.0f}')}x if the naive loop "
                  f"also answered each distinct query's recall once). Setup "
                  f"{nv['setup_s']:.2f} s not counted. Same top-k as PerSRV on "
                  f"**{ag['identical_up_to_ties']}/{ag['requests']}** requests up to float32 "
                  f"ties ({ag['identical_top_k']} strictly identical; mean overlap@k "
                  f"{ag['mean_overlap_at_k']:.3f}).", ""]
    sw = result.get("sweep")
    if sw and "error" not in sw:
        st = sw["stages"]
        lines += ["## One sweep trial", "",
                  f"{sw['requests']:,} validation requests: `with_params(n_clusters="
                  f"{sw['n_clusters']})` re-cluster {st['recluster']['seconds']:.2f} s + search "
                  f"{st['search']['seconds']:.2f} s + metrics {st['metrics']['seconds']:.2f} s = "
                  f"**{sw['trial_s']:.2f} s** (peak {sw['peak_rss_mb']:,.0f} MB). Once per "
                  f"study: base fit {sw['base_fit_s']:.1f} s, first trial (recall pools "
                  f"computed) {sw['first_trial_s']:.1f} s.", ""]
    hp = result.get("help")
    if hp and "median_s" in hp:
        lines += [f"`{hp['command']}`: {hp['median_s'] * 1e3:.0f} ms (median of "
                  f"{len(hp['seconds'])}, fresh processes).", ""]
    lines += ["## Targets" + ("" if all(t["paper_scale"] for t in result["targets"].values())
                              else " (informational: not paper scale)"), "",
              "| target | measured | goal | status | what |", "|---|---:|---:|---|---|"]
    for name, t in result["targets"].items():
        status = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {name} | {_f(t['measured'], '{:,.3g}')} {t['unit']} | {t['op']} "
                     f"{t['goal']:g} {t['unit']} | {status} | {t['note']} |")
    lines.append("")
    pts = [p for p in result.get("scaling") or [] if "error" not in p]
    if pts:
        lines += ["## Scaling (bm25 + persrv, one fresh process per size)", "",
                  "| stickers | requests | fitting clicks | load s | bm25 index | bm25 search | "
                  "persrv index | utility | clusters | recall | rerank | metrics | bm25+persrv s | "
                  "RSS after load MB | peak RSS MB |", "|" + "---:|" * 15]
        for p in pts:
            st = p["persrv"]["stages"]
            b = p["bm25"]["stages"]
            cell = [f"{st[c]['seconds']:.2f}" if c in st else "" for c in
                    ("index", "utility", "clusters", "recall", "rerank", "metrics")]
            lines.append(f"| {p['size']:,} | {p['requests']:,} | {p['clicks']:,} | "
                         f"{p['load_s']:.2f} | {b['index']['seconds']:.2f} | "
                         f"{b['recall']['seconds']:.2f} | " + " | ".join(cell) +
                         f" | {p['total_s']:.2f} | {p['rss_loaded_mb']:,.0f} | "
                         f"{p['peak_rss_mb']:,.0f} |")
        lines.append("")
    for p in result.get("scaling") or []:
        if "error" in p:
            lines.append(f"scaling point {p['size']:,} failed: {p['error'][-300:]}")
    lines.append("Users are simulated (DESIGN §4). Wall times on a shared machine are noisy: "
                 "see the load average above.")
    return "\n".join(lines) + "\n"


def plot_scaling(points: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG: stage seconds and memory against corpus size (log-log)."""
    pts = sorted((p for p in points if "error" not in p), key=lambda p: p["size"])
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [p["size"] for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    series = {"bm25 + persrv (end to end)": [p["total_s"] for p in pts],
              "bm25 (end to end)": [p["bm25"]["e2e_s"] for p in pts]}
    for stage in ("index", "clusters", "recall", "rerank", "metrics"):
        series[f"persrv {stage}"] = [p["persrv"]["stages"].get(stage, {}).get("seconds", 0.0)
                                     for p in pts]
    for label, ys in series.items():
        ax1.plot(x, [max(y, 1e-3) for y in ys], marker="o", label=label,
                 linewidth=2.2 if "end to end" in label else 1.2)
    for p in pts:
        ax1.annotate(f"{p['requests']:,} req", (p["size"], p["total_s"]), fontsize=7,
                     textcoords="offset points", xytext=(-18, 7))
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("stickers")
    ax1.set_ylabel("wall seconds")
    ax1.set_title("time vs corpus size")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    ax2.plot(x, [p["peak_rss_mb"] for p in pts], marker="o", label="process peak RSS")
    ax2.plot(x, [p["rss_loaded_mb"] for p in pts], marker="s", label="RSS after data load")
    ax2.set_xscale("log")
    ax2.set_xlabel("stickers")
    ax2.set_ylabel("MB")
    ax2.set_title("memory vs corpus size")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def perf_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flat numeric metrics of a perf.json payload (MLflow metric names)."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and \
                np.isfinite(value):
            out[name] = float(value)

    pipe = result.get("pipeline", {})
    put("pipeline_retrievers_s", pipe.get("retrievers_s"))
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
    try:
        tracker = Tracker(uri)
        ds = result.get("dataset", {})
        run_id = tracker.start_run("perf", run_name=f"perf-{result['config']['size']}", tags={
            "persrv.kind": "perf", "mlflow.source.git.commit": git_commit() or "unknown",
            "dataset.name": ds.get("name", ""), "dataset.fingerprint": ds.get("fingerprint", ""),
            "load_average_start": " ".join(f"{x:.2f}" for x in result["load_start"]),
            "load_average_end": " ".join(f"{x:.2f}" for x in result.get("load_end", [])),
            "targets_missed": ",".join(n for n, t in result.get("targets", {}).items()
                                       if t["met"] is False) or "none"})
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


# ------------------------------------------------------------------------- subprocess entry

def _main(argv: list[str] | None = None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m bench.perf")
    p.add_argument("mode", choices=["point", "build"])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=PAPER_REQUESTS)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--pool", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=2048)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.mode == "build":
        from bench.data.resolve import resolve_dataset
        resolve_dataset(dataset_spec(a.size, a.seed))
        return
    cfg = PerfConfig(size=a.size, seed=a.seed, requests=a.requests, k=a.k, pool=a.pool,
                     batch_size=a.batch_size, scaling=())
    print("PERF_POINT " + json.dumps(scaling_point(cfg), default=_jsonable), flush=True)


if __name__ == "__main__":
    _main()
