"""Measuring instruments of ``persrv-bench perf``: memory, the stage clock, one retriever's
fit/search/metrics as the runner runs them, one sweep trial, ``--help``.

Memory: the resident set size is sampled every 10 ms by a thread (``/proc/self/statm``); a
stage's peak is the largest sample while it ran, the process peak is ``VmHWM``
(:func:`max_rss`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench.perf.config import FIT_STAGES, MB, ORDER, BM25_FIELDS, RETRIEVER_PARAMS, PerfConfig
from bench.perf.workloads import PerfData, cap_requests

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


# --------------------------------------------------------------------------------- retrievers

def default_retrievers() -> list[str]:
    """The retrievers of :data:`bench.perf.config.ORDER` that are registered (bm25 + the 7
    PerSRV variants of the pipeline target); others (``persrv-reference``) only when asked."""
    from bench.registry import registry
    names = set(registry())
    return [n for n in ORDER if n in names]


def bm25_params() -> dict[str, Any]:
    """The measured ``bm25`` baseline: fields ``ocr_text,queries`` on the fastest backend it
    has (``native`` where the baseline offers it, else ``bm25s``)."""
    from baselines.bm25 import BACKENDS
    return {"fields": BM25_FIELDS, "backend": "native" if "native" in BACKENDS else "bm25s"}


def retriever_params(name: str, cfg: PerfConfig) -> dict[str, Any]:
    if name == "bm25":
        return bm25_params()
    if name == "persrv" or name.startswith("persrv-"):
        return {"pool": int(cfg.pool)}
    return dict(RETRIEVER_PARAMS.get(name, {}))


def _recall_cached(retriever, queries: list[str]) -> bool | None:
    """Whether every query's recall pool is already in PerSRV's shared cache (None: unknown)."""
    try:
        where = retriever._recall.where
    except AttributeError:
        return None
    return all(q in where for q in queries)


def _as_searched(retriever, k: int):
    """The retriever whose recall/personalize ``search`` runs: with ``pool_per_k`` > 0
    (``persrv-reference``) the recall depth is ``pool_per_k x k``, as in ``PerSRV.search``."""
    per_k = int(getattr(retriever, "pool_per_k", 0) or 0)
    from bench.registry import supports_with_params
    if per_k > 0 and supports_with_params(retriever):
        return retriever.with_params(pool=max(1, per_k * int(k)), pool_per_k=0)
    return retriever


def measure_retriever(name: str, data: PerfData, cfg: PerfConfig, clock: StageClock,
                      label: str | None = None) -> tuple[dict[str, Any], Any, Any]:
    """Fit, search (batched, as the runner), evaluate; returns (record, retriever, run).

    PerSRV's search is timed in its parts (``recall``, ``rerank`` = personalize, ``results`` =
    the Run), its fit through :data:`FIT_STAGES`; a retriever without those has ``index`` (fit)
    and ``recall`` (the whole search)."""
    from bench.eval_loop import EvalSettings, score_run, search_run
    from bench.metrics import metric_name
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
    k = int(cfg.k)
    searcher = _as_searched(retriever, k)
    split = all(hasattr(retriever, m) for m in ("recall", "personalize", "to_run")) and \
        k <= int(getattr(searcher, "pool", 0))

    def staged_search(_retriever, batch: list, depth: int):
        if not split:
            with clock.stage(label, "recall"):
                return retriever.search(batch, depth)
        with clock.stage(label, "recall"):
            pool = searcher.recall(batch)
        with clock.stage(label, "rerank"):
            ids, scores = searcher.personalize(pool, batch, depth)
        with clock.stage(label, "results"):
            return searcher.to_run(batch, ids, scores)

    settings = EvalSettings(ks=tuple(cfg.ks), depth=k, batch_size=cfg.batch_size,
                            fill=cfg.fill)
    search0 = time.perf_counter()
    run = search_run(retriever, reqs, k, cfg.batch_size, search=staged_search, name=label)
    search_s = time.perf_counter() - search0
    with clock.stage(label, "metrics"):
        macro = score_run(run, data.requests, settings, data.fill_order).macro
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
    from bench.eval_loop import EvalSettings, score_run, search_run
    from bench.listing import FillOrder
    from bench.metrics import metric_name
    from bench.registry import make_retriever
    from bench.retrieval import leak_safe_view
    view = leak_safe_view(data.view.stickers, data.splits.history_for("validation"),
                          meta=data.view.meta, root=data.view.root,
                          embeddings=data.view.embeddings, cache=data.view.cache,
                          seed=data.view.seed)
    requests = cap_requests(data.splits.requests("validation"), cfg.requests)
    settings = EvalSettings(ks=tuple(cfg.ks), depth=int(cfg.k), batch_size=cfg.batch_size,
                            fill=cfg.fill)
    fill = FillOrder.from_view(view.stickers, view.clicks)

    def evaluate(retriever, owner: str) -> float:
        with clock.stage(owner, "search"):
            run = search_run(retriever, requests.requests, int(cfg.k), cfg.batch_size,
                             name="persrv")
        with clock.stage(owner, "metrics"):
            macro = score_run(run, requests, settings, fill).macro
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


