"""The one evaluation loop: fit -> batched search -> final lists -> scores. ``run``
(:mod:`bench.runner`), sweep trials (:mod:`bench.sweep.session`) and ``perf``
(:mod:`bench.perf.measure`) all call it, so a retriever is judged by the same rules everywhere:
the same list length and tie-break rule (:mod:`bench.listing`), the same metrics, deterministic
and tie-aware (:mod:`bench.metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from bench.listing import FillOrder, FinalList, coverage, finalize_run
from bench.metrics import (AS_RETURNED, DEFAULT_KS, aggregate, metric_names, per_request,
                           per_request_tie_aware)

if TYPE_CHECKING:  # pragma: no cover
    from bench.data.splits import Requests
    from bench.retrieval import Request, Run, TrainView

#: A batch search: (retriever, requests, depth) -> Run. The default calls ``retriever.search``;
#: ``perf`` passes one that times PerSRV's stages.
BatchSearch = Callable[[Any, list, int], "Run"]


@dataclass(frozen=True)
class EvalSettings:
    """How lists are judged: cutoffs, list depth (the largest cutoff, capped by the corpus),
    search batch size and the list-length policy (:data:`bench.listing.FILL_MODES`)."""

    ks: tuple[int, ...] = DEFAULT_KS
    depth: int = max(DEFAULT_KS)
    batch_size: int = 2048
    fill: str = "popularity"

    @classmethod
    def from_config(cls, cfg, n_stickers: int) -> "EvalSettings":
        return cls(ks=tuple(cfg.ks), depth=max(1, min(cfg.depth, n_stickers)),
                   batch_size=cfg.batch_size, fill=cfg.evaluation.fill)


@dataclass
class Scored:
    """A scored run: per-request values (deterministic, ``_tie_aware`` and ``_as_returned``
    columns, ``own`` = entries the retriever returned itself, ``tie_straddle``), their macro and
    micro means (with ``coverage`` and ``tie_straddle_share``), and the final lists."""

    per_request: pd.DataFrame
    macro: dict[str, float]
    micro: dict[str, float]
    final: dict["Request", FinalList] = field(repr=False)

    @property
    def coverage(self) -> float:
        return self.macro["coverage"]


def default_search(retriever, batch: list, depth: int) -> "Run":
    return retriever.search(batch, depth)


def search_run(retriever, requests: Sequence["Request"], depth: int, batch_size: int,
               search: BatchSearch = default_search, on_batch: Callable[[int], None] | None = None,
               name: str = "run") -> "Run":
    """Every request searched in batches of ``batch_size``; lists cut at ``depth``."""
    from bench.retrieval import Run, iter_batches
    run = Run(name=name)
    for batch in iter_batches(list(requests), batch_size):
        batch = list(batch)
        part = search(retriever, batch, depth)
        for req in batch:
            run[req] = list(part.results.get(req, []))[:depth]
        if on_batch is not None:
            on_batch(len(batch))
    return run


def score_run(run: "Run", requests: "Requests", settings: EvalSettings,
              fill_order: FillOrder) -> Scored:
    """Final lists (order rule + fill, :mod:`bench.listing`) and every metric of them."""
    reqs = requests.requests
    qids = requests.qids
    final = finalize_run(run, reqs, settings.depth, settings.fill, fill_order)
    relevant = {qids[r]: requests.relevant[r] for r in reqs}
    users = {qids[r]: r.user_id for r in reqs}
    filled = per_request({qids[r]: final[r].ids for r in reqs}, relevant, users, settings.ks)
    own = per_request({qids[r]: final[r].ids[:final[r].own] for r in reqs}, relevant, users,
                      settings.ks)
    tie, straddle = per_request_tie_aware({qids[r]: final[r] for r in reqs}, relevant,
                                          settings.ks)
    names = metric_names(settings.ks)
    frame = filled
    frame.insert(2, "query", [r.query for r in reqs])
    frame = pd.concat([frame, tie, own[names].add_suffix(AS_RETURNED)], axis=1)
    frame["own"] = np.fromiter((final[r].own for r in reqs), dtype=np.int64, count=len(reqs))
    frame["tie_straddle"] = straddle
    macro, micro = aggregate(frame, "macro"), aggregate(frame, "micro")
    cov = coverage(final, settings.depth, len(fill_order.ids))
    share = float(straddle.mean()) if len(straddle) else 0.0
    for out in (macro, micro):
        out["coverage"] = cov
        out["tie_straddle_share"] = share
    return Scored(per_request=frame, macro=macro, micro=micro, final=final)


def final_run(scored: Scored, name: str) -> "Run":
    """The final lists as a Run whose scores are strictly decreasing (``n - rank + 1``), so any
    tool that sorts by score (trec_eval, ranx) reproduces the harness's order exactly."""
    from bench.retrieval import Run
    run = Run(name=name)
    for req, fl in scored.final.items():
        n = len(fl.ids)
        run[req] = [(sid, float(n - i)) for i, sid in enumerate(fl.ids)]
    return run


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the raw run, its scores and the timings (seconds)."""

    run: "Run"
    scored: Scored
    fit_seconds: float
    search_seconds: float
    started_at: float
    retriever: Any = None


def evaluate(retriever, view: "TrainView", requests: "Requests", settings: EvalSettings,
             fill_order: FillOrder | None = None, *, fit: bool = True,
             search: BatchSearch = default_search, on_batch=None, name: str = "run",
             fit_call: Callable[[], Any] | None = None) -> Evaluation:
    """Fit (unless ``fit=False``: an already fitted retriever, e.g. a sweep's ``with_params``
    copy), search every request in batches, score. ``fit_call`` replaces ``retriever.fit(view)``
    (perf times its stages)."""
    fill_order = fill_order or FillOrder.from_view(view.stickers, view.clicks)
    started = time.time()
    t0 = time.perf_counter()
    if fit:
        (fit_call or (lambda: retriever.fit(view)))()
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = search_run(retriever, requests.requests, settings.depth, settings.batch_size,
                     search=search, on_batch=on_batch, name=name)
    search_s = time.perf_counter() - t0
    scored = score_run(run, requests, settings, fill_order)
    return Evaluation(run=run, scored=scored, fit_seconds=fit_s, search_seconds=search_s,
                      started_at=started, retriever=retriever)
