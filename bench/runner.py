"""One benchmark run as a pure pipeline (DESIGN §1): dataset -> split -> offline features ->
``fit`` -> ``search`` -> metrics, returning results. No MLflow, tables or plots here: the run
folder and the tracking are :mod:`bench.experiment`'s, tables and plots :mod:`bench.report`'s.
Sweeps (:mod:`bench.sweep`) and ``perf`` call the same :func:`prepare` and
:func:`evaluate_retriever`.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ExperimentConfig, RetrieverSpec
from bench.errors import BenchError

log = logging.getLogger(__name__)


@dataclass
class RetrieverResult:
    label: str
    name: str
    params: dict[str, Any]
    macro: dict[str, float]
    micro: dict[str, float]
    fit_seconds: float
    search_seconds: float
    run_id: str | None = None
    folder: Path | None = None
    error: str | None = None
    started_at: float | None = None   #: wall clock (s since the epoch) when fit began
    ended_at: float | None = None     #: wall clock when scoring ended
    fitted: dict[str, Any] = field(default_factory=dict)  #: fitted attributes (``model_id_``, ...)
    segments: dict[str, float] = field(default_factory=dict)  #: ``<metric>_at_<k>__<segment>``
    diagnostics: dict[str, float] = field(default_factory=dict)  #: ``retriever.diagnostics()``
    per_request: Any = field(default=None, repr=False)  #: the scored per-request frame (pandas)
    #: ``<attr>.<key>`` -> numbers of fitted dicts: a number (an importance) or a list (a
    #: training curve, one value per step); logged as child metrics
    fitted_series: dict[str, Any] = field(default_factory=dict)


def prepare(cfg: ExperimentConfig):
    """Dataset, splits, requests and the train view with offline features attached."""
    from bench.data.protocols import protocol_splits
    from bench.data.resolve import resolve_dataset
    from bench.retrieval import leak_safe_view

    ds = resolve_dataset(cfg.dataset)
    splits = protocol_splits(ds, cfg.protocol, cfg.split)
    requests = splits.requests(cfg.eval_split)
    check_usable(ds, requests, cfg)  # before the (expensive) features
    stickers, embeddings, feature_report = attach_configured_features(ds, cfg.features)
    from bench.features.cache import FeatureCache
    view = leak_safe_view(stickers, splits.history_for(cfg.eval_split), meta=ds.meta,
                          root=ds.root, embeddings=embeddings,
                          cache=FeatureCache(cfg.features.cache_dir), seed=cfg.seed)
    return ds, splits, requests, view, feature_report


def check_usable(ds, requests, cfg: ExperimentConfig) -> None:
    """A clear error for a dataset nothing can be evaluated on: no stickers, or no requests in
    the evaluation split."""
    from bench.data.format import INTERACTIONS_FILE, STICKERS_FILE
    from bench.errors import DatasetError
    root = ds.root if ds.root is not None else Path(ds.name)
    if len(ds.stickers) == 0:
        raise DatasetError(f"dataset {ds.name} has no stickers (an empty corpus): nothing to "
                           "retrieve", file=str(root / STICKERS_FILE))
    if len(requests) == 0:
        need = cfg.split.min_train_groups + cfg.split.val_groups + cfg.split.test_groups
        what = ("has no clicks" if len(ds.interactions) == 0 else
                f"has no {cfg.eval_split} requests (users need at least {need} click-groups); "
                "lower split.min_train_groups or use more data")
        raise DatasetError(f"dataset {ds.name} {what}", file=str(root / INTERACTIONS_FILE))


def attach_configured_features(ds, features):
    """Run the configured offline feature extractors (cached); returns (stickers, embeddings, report)."""
    from bench.features.cache import FeatureCache
    from bench.features.config import validate_features
    from bench.features.extract import attach_features
    fcfg = validate_features(features)
    return attach_features(ds, fcfg, FeatureCache(fcfg.cache_dir))


def check_config(cfg: ExperimentConfig) -> None:
    """Fail before any expensive work on what the config alone shows is wrong: an unknown
    retriever, or a retriever parameter its declaration refuses (:func:`bench.config.
    check_retrievers`, which :func:`bench.config.load_config` already ran for a config file;
    this covers configs built in code)."""
    from bench.config import check_retrievers
    check_retrievers(cfg)


#: Keys of the feature report logged with the parent run (what was missing, by reason).
FEATURE_REPORT_PARAMS = ("ocr", "ocr_missing", "ocr_missing_by_reason", "encoder",
                         "embed_missing", "embed_missing_by_reason")


def evaluate_retriever(spec: RetrieverSpec, view, requests, cfg: ExperimentConfig, folder: Path,
                       labels=None, fill_order=None):
    """Fit, search in batches, score (overall and per segment) through the one evaluation loop
    (:func:`bench.eval_loop.evaluate`); writes run.trec (the final lists, strictly decreasing
    scores), run.parquet (raw scores, tie groups) and per_request.parquet into ``folder``.
    ``labels``: :func:`bench.segments.label_requests` of these requests (computed here when
    None); ``fill_order``: the fitting clicks' popularity order (computed when None)."""
    from tqdm.auto import tqdm

    from bench.eval_loop import EvalSettings, evaluate, final_run
    from bench.registry import get_params, make_retriever

    retriever = make_retriever(spec.name, spec.params)
    settings = EvalSettings.from_config(cfg, len(view.stickers))
    with tqdm(total=len(requests.requests), desc=f"search {spec.display}", unit="req",
              leave=False, disable=None if log.isEnabledFor(logging.INFO) else True) as bar:
        ev = evaluate(retriever, view, requests, settings, fill_order, on_batch=bar.update,
                      name=spec.display)
    scored = ev.scored
    from bench.segments import label_requests, segment_metrics
    if labels is None:
        labels = label_requests(requests, view.clicks)
    segments = segment_metrics(scored.per_request, labels, cfg.ks)
    folder.mkdir(parents=True, exist_ok=True)
    qids = requests.qids
    final_run(scored, spec.display).save_trec(folder / "run.trec", qids=qids, tag=spec.display)
    write_final_lists(scored, ev.run, qids, folder / "run.parquet")
    scored.per_request.to_parquet(folder / "per_request.parquet", index=False)
    coverage_warning(spec.display, scored, settings)
    structures = fitted_structures(retriever)
    if structures:  # importances, training curves: fitted.json beside the run files
        import json
        (folder / "fitted.json").write_text(json.dumps(structures, indent=1, default=str),
                                            encoding="utf-8")
    return RetrieverResult(label=spec.display, name=spec.name, params=get_params(retriever),
                           macro=scored.macro, micro=scored.micro, fit_seconds=ev.fit_seconds,
                           search_seconds=ev.search_seconds, folder=folder,
                           started_at=ev.started_at, ended_at=time.time(),
                           fitted=fitted_attributes(retriever), segments=segments,
                           diagnostics=retriever_diagnostics(retriever),
                           fitted_series=fitted_series(structures),
                           per_request=scored.per_request)


#: A retriever whose own list is short of k for more than this share of requests is warned about.
COVERAGE_WARN_BELOW = 0.5


def coverage_warning(label: str, scored, settings) -> None:
    """One warning line when a retriever's own lists are short for most requests (its scores
    then depend on ``evaluation.fill``)."""
    cov = scored.coverage
    if cov < COVERAGE_WARN_BELOW:
        empty = float((scored.per_request["own"] == 0).mean())
        how = ("filled with the popularity order" if settings.fill == "popularity"
               else "scored as returned (evaluation.fill: none)")
        log.warning("%s returned fewer than %d stickers for %.0f%% of requests (%.0f%% empty); "
                    "its lists were %s", label, settings.depth, 100 * (1 - cov), 100 * empty, how)


def write_final_lists(scored, raw_run, qids, path: Path) -> None:
    """run.parquet: per request and rank, the sticker, the retriever's raw score (NaN for fill),
    its tie group and whether it was filled — what the tie-aware metrics were computed from."""
    import pandas as pd
    rows = []
    for req, fl in scored.final.items():
        raw = dict(reversed([(str(s), float(v)) for s, v in raw_run.results.get(req, [])]))
        for rank, (sid, group) in enumerate(zip(fl.ids, fl.groups), start=1):
            rows.append((qids[req], req.user_id, req.query, rank, sid,
                         raw.get(sid, float("nan")) if rank <= fl.own else float("nan"),
                         group, rank > fl.own))
    pd.DataFrame(rows, columns=["qid", "user_id", "query", "rank", "sticker_id", "score",
                                "tie_group", "filled"]).to_parquet(path, index=False)


def retriever_diagnostics(retriever: Any) -> dict[str, float]:
    """``retriever.diagnostics()`` when it has one (PerSRV's clustering and re-rank figures),
    finite numbers only; logged as child metrics ``diag_<key>``."""
    import math
    get = getattr(retriever, "diagnostics", None)
    if not callable(get):
        return {}
    out = {}
    for key, value in (get() or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = float(value)
    return out


def fitted_structures(retriever: Any) -> dict[str, Any]:
    """A fitted retriever's public dict and list attributes ending in ``_`` (ltr's
    ``feature_importances_``, ``training_curve_``), for ``fitted.json``."""
    return {name.rstrip("_"): value for name, value in sorted(vars(retriever).items())
            if name.endswith("_") and not name.startswith("_")
            and isinstance(value, (dict, list, tuple)) and len(value) <= 10_000}


def fitted_series(structures: dict[str, Any]) -> dict[str, Any]:
    """``<attr>.<key>`` -> a finite number or a list of them, from the dicts of
    :func:`fitted_structures` (what MLflow can plot)."""
    import math

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    out: dict[str, Any] = {}
    for attr, value in structures.items():
        if not isinstance(value, dict):
            continue
        for key, v in value.items():
            if number(v):
                out[f"{attr}.{key}"] = float(v)
            elif isinstance(v, (list, tuple)) and v and all(number(x) for x in v):
                out[f"{attr}.{key}"] = [float(x) for x in v]
    return out


def fitted_attributes(retriever: Any) -> dict[str, Any]:
    """A fitted retriever's public scalar attributes ending in ``_`` (scikit-learn's convention
    for what ``fit`` learnt: ``model_id_``, ``unknown_token_share_``), logged with its run."""
    out: dict[str, Any] = {}
    for name, value in sorted(vars(retriever).items()):
        if name.endswith("_") and not name.startswith("_") and \
                isinstance(value, (str, int, float, bool)):
            out[name.rstrip("_")] = value
    return out


def request_segments(ds, history, requests):
    """Per request: history length and segment (cold/light/heavy), query language, ``gt_*`` groups.

    ``gt_style``/``gt_pack`` of a request is the most common value among its relevant stickers
    (ties: the smallest value; ground truth, for breakdowns only).
    """
    import numpy as np
    import pandas as pd

    from bench.data.format import text_languages
    pairs = list(requests.qids.items())
    frame = pd.DataFrame({"qid": [qid for _, qid in pairs],
                          "user_id": [req.user_id for req, _ in pairs],
                          "query": [req.query for req, _ in pairs]})
    n = frame["user_id"].map(history.groupby("user_id").size()).fillna(0).astype(int)
    frame["history_clicks"] = n
    frame["segment"] = np.select([n == 0, n < 10], ["cold", "light"], "heavy")
    frame["language"] = ["+".join(text_languages(q)) or "other" for q in frame["query"]]
    gt_cols = [c for c in ("gt_style", "gt_pack", "gt_topic") if c in ds.stickers.columns]
    if gt_cols:
        rel = pd.DataFrame([(qid, sid) for req, qid in pairs
                            for sid in sorted(requests.relevant[req])],
                           columns=["qid", "sticker_id"])
        rel = rel.join(ds.stickers.set_index("sticker_id")[gt_cols], on="sticker_id")
        for col in gt_cols:
            values = rel[["qid", col]].dropna().astype({col: str})
            counts = values.groupby(["qid", col]).size().reset_index(name="n")
            mode = (counts.sort_values(["qid", "n", col], ascending=[True, False, True])
                    .drop_duplicates("qid").set_index("qid")[col])
            frame[col] = frame["qid"].map(mode).astype(object)
            frame[col] = frame[col].where(frame[col].notna(), None)
    return frame


def history_sample(view, ds, n_users: int = 3):
    """History embeddings of the ``n_users`` users with the longest history (for report plots)."""
    import pandas as pd
    if view.embeddings is None or view.clicks.empty:
        return None
    top = view.clicks.groupby("user_id").size().sort_values(ascending=False, kind="stable")
    row_of = {sid: i for i, sid in enumerate(view.stickers["sticker_id"])}
    style = ds.stickers.set_index("sticker_id")["gt_style"] if "gt_style" in ds.stickers else None
    rows = []
    for user in top.index[:n_users]:
        for sid in view.clicks.loc[view.clicks["user_id"] == user, "sticker_id"].unique():
            rows.append({"user_id": user, "sticker_id": sid,
                         "gt_style": None if style is None else style.get(sid),
                         "embedding": view.embeddings[row_of[sid]].astype("float32").tolist()})
    return pd.DataFrame(rows)


def run_retrievers(cfg: ExperimentConfig, view, requests, folder: Path,
                   on_result=None, labels=None) -> list[RetrieverResult]:
    """Every configured retriever in turn (outputs under ``folder/retrievers/<label>/``); one
    that fails is recorded with its error (``error.txt``) and the others still run.
    ``on_result(result)`` is called after each one (logging, printing); ``labels``: the
    requests' segments (:func:`bench.segments.label_requests`, computed here when None). The
    view's run context (:class:`bench.run_context.RunContext`: work shared between retrievers)
    is cleared when the last retriever is done; the time it spent is logged as its own stage."""
    try:
        return _run_each(cfg, view, requests, folder, on_result, labels)
    finally:
        context = getattr(view, "context", None)
        if context is not None:
            if context.seconds:
                log.info("shared work (timed once, inside the first retriever that needed it): %s",
                         context.stage_seconds())
            context.clear()


def _run_each(cfg: ExperimentConfig, view, requests, folder: Path, on_result,
              labels) -> list[RetrieverResult]:
    if labels is None:
        from bench.segments import label_requests
        labels = label_requests(requests, view.clicks)
    from bench.listing import FillOrder
    fill_order = FillOrder.from_view(view.stickers, view.clicks)  # once for every retriever
    results = []
    for spec in cfg.retrievers:
        sub = folder / "retrievers" / spec.display
        try:
            result = evaluate_retriever(spec, view, requests, cfg, sub, labels=labels,
                                        fill_order=fill_order)
        except Exception as exc:  # one failing retriever must not lose the others' results
            log.error("retriever %s failed: %s", spec.display, exc)
            sub.mkdir(parents=True, exist_ok=True)
            from bench.secrets import mask_credentials
            detail = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
            (sub / "error.txt").write_text(mask_credentials(detail) + "\n", encoding="utf-8")
            result = RetrieverResult(spec.display, spec.name, dict(spec.params), {}, {}, 0.0, 0.0,
                                     folder=sub, error=f"{type(exc).__name__}: {exc}")
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
