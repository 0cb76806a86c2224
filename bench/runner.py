"""One benchmark run: dataset x retrievers -> runs, metrics, artifacts (DESIGN §1, §8).

Everything is written to a local run folder first (``output_dir/<name>-<timestamp>/``) and then
logged to MLflow, so results survive a tracking server that goes away mid-run.
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


@dataclass
class RunOutcome:
    folder: Path
    parent_run_id: str | None
    experiment: str
    results: list[RetrieverResult] = field(default_factory=list)
    table: Any = None  # pandas DataFrame: one row per retriever

    @property
    def failed(self) -> list[RetrieverResult]:
        return [r for r in self.results if r.error]


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def prepare(cfg: ExperimentConfig):
    """Dataset, splits, requests and the train view with offline features attached."""
    from bench.data.resolve import resolve_dataset
    from bench.data.splits import SplitConfig, split_interactions
    from bench.retrieval import leak_safe_view

    ds = resolve_dataset(cfg.dataset)
    splits = split_interactions(ds.interactions, SplitConfig(**cfg.split.model_dump()))
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


def features_config(features):
    """The validated ``features:`` section (see :func:`bench.features.config.validate_features`)."""
    from bench.features.config import validate_features
    return validate_features(features)


def attach_configured_features(ds, features):
    """Run the configured offline feature extractors (cached); returns (stickers, embeddings, report)."""
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    fcfg = features_config(features)
    return attach_features(ds, fcfg, FeatureCache(fcfg.cache_dir))


def check_config(cfg: ExperimentConfig) -> None:
    """Fail before any expensive work on what the config alone shows is wrong: an unknown
    retriever or retriever parameter (construction is cheap, DESIGN §5), a bad features key."""
    from bench.registry import make_retriever
    for i, spec in enumerate(cfg.retrievers):
        try:
            make_retriever(spec.name, spec.params)
        except BenchError as exc:
            raise type(exc)(f"retrievers.{i} ({spec.display}): {exc}") from None


#: Keys of the feature report logged with the parent run (what was missing, by reason).
FEATURE_REPORT_PARAMS = ("ocr", "ocr_missing", "ocr_missing_by_reason", "encoder",
                         "embed_missing", "embed_missing_by_reason")


def evaluate_retriever(spec: RetrieverSpec, view, requests, cfg: ExperimentConfig, folder: Path):
    """Fit, search in batches, score; writes run.trec and per_request.parquet into ``folder``."""
    from tqdm.auto import tqdm

    from bench.metrics import evaluate_run
    from bench.retrieval import Run, iter_batches
    from bench.registry import get_params, make_retriever

    retriever = make_retriever(spec.name, spec.params)
    t0 = time.perf_counter()
    retriever.fit(view)
    fit_s = time.perf_counter() - t0
    run = Run(name=spec.display)
    t0 = time.perf_counter()
    reqs = requests.requests
    with tqdm(total=len(reqs), desc=f"search {spec.display}", unit="req", leave=False,
              disable=None if log.isEnabledFor(logging.INFO) else True) as bar:
        for batch in iter_batches(reqs, cfg.batch_size):
            part = retriever.search(list(batch), cfg.depth)
            for req in batch:
                run[req] = list(part.results.get(req, []))[:cfg.depth]
            bar.update(len(batch))
    search_s = time.perf_counter() - t0
    per_request, macro, micro = evaluate_run(run, requests, cfg.ks)
    folder.mkdir(parents=True, exist_ok=True)
    qids = requests.qids
    run.save_trec(folder / "run.trec", qids=qids, tag=spec.display)
    per_request.to_parquet(folder / "per_request.parquet", index=False)
    return RetrieverResult(label=spec.display, name=spec.name, params=get_params(retriever),
                           macro=macro, micro=micro, fit_seconds=fit_s, search_seconds=search_s,
                           folder=folder)


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


def results_table(results: list[RetrieverResult], ks: list[int]):
    """One row per retriever: macro metrics (the reported figures), timings."""
    import pandas as pd
    from bench.metrics import METRICS, metric_name
    rows = []
    for r in results:
        row: dict[str, Any] = {"retriever": r.label}
        for m in METRICS:
            for k in ks:
                row[metric_name(m, k)] = r.macro.get(metric_name(m, k), float("nan"))
        row["fit_s"] = round(r.fit_seconds, 2)
        row["search_s"] = round(r.search_seconds, 2)
        row["status"] = "failed" if r.error else "ok"
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table, ks: list[int], metrics=("m_mrr", "mrr", "recall", "ndcg"),
                 show_k: tuple[int, ...] | None = None) -> str:
    """Markdown table of the main figures (M-MRR@k for every k, other metrics at the largest k)."""
    from bench.metrics import metric_name
    kmax = max(ks)
    cols = [metric_name("m_mrr", k) for k in (show_k or ks)]
    cols += [metric_name(m, kmax) for m in metrics if m != "m_mrr"]
    cols = [c for c in cols if c in table.columns]
    main = metric_name("m_mrr", kmax)
    full = table[(table["retriever"] == "persrv") & (table["status"] == "ok")]
    ablate = len(full) == 1 and table["retriever"].str.startswith("persrv-").any()
    header = "| retriever | " + " | ".join(cols) + " | fit s | search s |"
    if ablate:  # mark each PerSRV ablation against the full model
        header += f" Δ {main} vs persrv |"
    sep = "|---|" + "---:|" * (len(cols) + 2 + int(ablate))
    lines = [header, sep]
    for _, row in table.iterrows():
        failed = row["status"] == "failed"
        vals = " | ".join("failed" if failed else f"{row[c]:.4f}" for c in cols)
        line = f"| {row['retriever']} | {vals} | {row['fit_s']:.1f} | {row['search_s']:.1f} |"
        if ablate:
            is_variant = str(row["retriever"]).startswith("persrv-") and not failed
            delta = row[main] - float(full[main].iloc[0])
            line += f" {delta:+.4f} |" if is_variant else " |"
        lines.append(line)
    return "\n".join(lines)


def plot_m_mrr(table, ks: list[int], path: Path) -> Path:
    """PNG: M-MRR@k against k, one line per retriever."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench.metrics import metric_name
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for _, row in table.iterrows():
        if row["status"] != "ok":
            continue
        ax.plot(ks, [row[metric_name("m_mrr", k)] for k in ks], marker="o", label=row["retriever"])
    ax.set_xlabel("k")
    ax.set_ylabel("M-MRR@k (macro over users)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("M-MRR@k per retriever")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_experiment(cfg: ExperimentConfig, *, tracking_uri: str | None = None,
                   output_dir: str | Path | None = None, config_path: str | None = None,
                   echo=print) -> RunOutcome:
    """Run every configured retriever on the evaluation split and log everything (DESIGN §8)."""
    import yaml

    from bench.data.format import write_json_atomic
    from bench.evaluate import write_qrels, write_users
    from bench.metrics import metric_name
    from bench.tracking import check_reachable, git_commit, mask_credentials, \
        resolve_tracking_uri

    check_config(cfg)  # before any expensive work
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri) if cfg.tracking.enabled else None
    if uri:
        check_reachable(uri)  # before any expensive work
    ds, splits, requests, view, feature_report = prepare(cfg)  # errors if nothing to evaluate
    experiment = cfg.tracking.experiment or ds.name
    folder = Path(output_dir or cfg.output_dir) / f"{cfg.name}-{_timestamp()}"
    folder.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_dump(mode="json")
    (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False,
                                                       allow_unicode=True), encoding="utf-8")
    qids = requests.qids
    write_qrels(requests, folder / "qrels.txt", qids)
    write_users(requests, folder / "requests.tsv", qids)
    request_segments(ds, view.clicks, requests).to_parquet(folder / "segments.parquet", index=False)
    sample = history_sample(view, ds)
    if sample is not None:
        sample.to_parquet(folder / "history_sample.parquet", index=False)
    # what was skipped or missing, kept with the results (and logged to the parent run)
    data_report = {"dataset_skipped": dict(ds.skipped),
                   "features": {k: (feature_report or {})[k] for k in FEATURE_REPORT_PARAMS
                                if k in (feature_report or {})}}
    write_json_atomic(folder / "data_report.json",
                      {**data_report, "features": feature_report or {}})

    tracker = _safe_tracker(uri, echo)
    parent = None
    if tracker.enabled:
        try:
            parent = tracker.start_run(experiment, run_name=cfg.name, reuse_env_run=True, tags={
                "persrv.kind": "benchmark",
                "mlflow.source.git.commit": git_commit() or "unknown",
                "dataset.name": ds.name,
                "dataset.fingerprint": ds.fingerprint,
                "dataset.simulated_users": str(bool(ds.meta.get("simulator"))),
                "config.hash": cfg.config_hash(),
                "config.path": config_path or "",
            })
            tracker.log_params(parent, {
                "config": {k: v for k, v in resolved.items() if k != "retrievers"},
                "retrievers": ",".join(s.display for s in cfg.retrievers),
                "split": splits.counts(),
                "n_requests": len(requests),
                "simulator": ds.meta.get("simulator") or {},
                **data_report,
            })
            tracker.log_artifact(parent, folder / "config.yaml")
            tracker.log_artifact(parent, folder / "data_report.json")
            (folder / "parent_run_id.txt").write_text(f"{parent}\n{mask_credentials(uri)}\n", encoding="utf-8")
        except Exception as exc:
            tracker, parent = _tracking_lost(exc, folder, echo)

    outcome = RunOutcome(folder=folder, parent_run_id=parent, experiment=experiment)
    echo(f"dataset {ds.name} ({ds.fingerprint}): {len(ds.stickers)} stickers, "
         f"{len(requests)} {cfg.eval_split} requests from {len(set(requests.users.values()))} users")
    for line in _data_report_lines(data_report):
        echo(f"  {line} (see {folder / 'data_report.json'})")
    for spec in cfg.retrievers:
        sub = folder / "retrievers" / spec.display
        try:
            result = evaluate_retriever(spec, view, requests, cfg, sub)
        except Exception as exc:  # one failing retriever must not lose the others' results
            log.error("retriever %s failed: %s", spec.display, exc)
            sub.mkdir(parents=True, exist_ok=True)
            detail = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
            (sub / "error.txt").write_text(detail + "\n", encoding="utf-8")
            result = RetrieverResult(spec.display, spec.name, dict(spec.params), {}, {}, 0.0, 0.0,
                                     folder=sub, error=f"{type(exc).__name__}: {exc}")
        outcome.results.append(result)
        kmax = max(cfg.ks)
        if not result.error:
            echo(f"  {spec.display:<28} M-MRR@{kmax}={result.macro[metric_name('m_mrr', kmax)]:.4f}"
                 f"  fit {result.fit_seconds:.1f}s  search {result.search_seconds:.1f}s")
        if tracker.enabled:
            try:
                result.run_id = _log_child(tracker, experiment, parent, result, ds)
            except Exception as exc:
                tracker, parent = _tracking_lost(exc, folder, echo)

    table = results_table(outcome.results, cfg.ks)
    outcome.table = table
    table.to_csv(folder / "results.csv", index=False)
    md = format_table(table, cfg.ks)
    note = "\n\nUsers are simulated (DESIGN §4).\n" if ds.meta.get("simulator") else "\n"
    (folder / "results.md").write_text(
        f"# {cfg.name} on {ds.name} ({cfg.eval_split} split, macro over users)\n\n{md}{note}",
        encoding="utf-8")
    plot_m_mrr(table, cfg.ks, folder / "plots" / "m_mrr_at_k.png")
    if cfg.report:
        _report(cfg, folder, echo)
    if tracker.enabled and parent:
        try:
            for name in ("results.md", "results.csv", "qrels.txt", "requests.tsv",
                         "segments.parquet", "history_sample.parquet"):
                if (folder / name).exists():
                    tracker.log_artifact(parent, folder / name)
            tracker.log_artifacts(parent, folder / "plots", "plots")
            if (folder / "report").is_dir():
                tracker.log_artifacts(parent, folder / "report", "report")
            best = table[table["status"] == "ok"]
            if len(best):
                tracker.log_metrics(parent, {
                    f"best_{metric_name('m_mrr', k)}": float(best[metric_name('m_mrr', k)].max())
                    for k in cfg.ks})
            tracker.end_run(parent, "FAILED" if outcome.failed else "FINISHED")
        except Exception as exc:
            _tracking_lost(exc, folder, echo)
    echo("")
    echo(md)
    echo(f"\nresults: {folder}" + (f"   (MLflow: {mask_credentials(uri)}, experiment "
                                   f"{experiment!r}, run {parent})" if parent else ""))
    return outcome


def _data_report_lines(report: dict[str, Any]) -> list[str]:
    """One line per kind of skipped or missing data (none when nothing was)."""
    def counts(d: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items())
    lines = []
    if report.get("dataset_skipped"):
        lines.append(f"skipped invalid clicks: {counts(report['dataset_skipped'])}")
    feats = report.get("features") or {}
    for what, key in (("OCR", "ocr"), ("embeddings", "embed")):
        if feats.get(f"{key}_missing"):
            lines.append(f"{what}: {feats[f'{key}_missing']} stickers without a usable image "
                         f"({counts(feats.get(f'{key}_missing_by_reason') or {})})")
    return lines


def _report(cfg: ExperimentConfig, folder: Path, echo) -> None:
    from bench.report import report_folder
    try:
        report_folder(folder, baseline=cfg.baseline, out=folder / "report")
    except Exception as exc:  # the report is an extra; never lose the run for it
        log.warning("report failed: %s", exc)
        echo(f"warning: report not written ({type(exc).__name__}: {exc})")


def _safe_tracker(uri: str | None, echo):
    from bench.tracking import Tracker, mask_credentials
    try:
        return Tracker(uri)
    except Exception as exc:
        echo(f"warning: MLflow unavailable ({type(exc).__name__}: {mask_credentials(str(exc))}); "
             "results are local only")
        return Tracker(None)


def _tracking_lost(exc: Exception, folder: Path, echo):
    from bench.tracking import Tracker, mask_credentials
    echo(f"warning: MLflow logging failed ({type(exc).__name__}: {mask_credentials(str(exc))}); "
         f"continuing with local results only in {folder}")
    return Tracker(None), None


def _log_child(tracker, experiment: str, parent: str | None, result: RetrieverResult, ds) -> str | None:
    run_id = tracker.start_run(experiment, run_name=result.label, parent_run_id=parent, tags={
        "persrv.kind": "retriever", "retriever.name": result.name,
        "dataset.name": ds.name, "dataset.fingerprint": ds.fingerprint,
        **({"error": result.error[:5000]} if result.error else {}),
    })
    tracker.log_params(run_id, {"retriever": result.name, **result.params})
    metrics = dict(result.macro)
    metrics.update({f"micro_{k}": v for k, v in result.micro.items()})
    metrics.update({"fit_seconds": result.fit_seconds, "search_seconds": result.search_seconds})
    tracker.log_metrics(run_id, metrics)
    if result.folder is not None:
        tracker.log_artifacts(run_id, result.folder)
    tracker.end_run(run_id, "FAILED" if result.error else "FINISHED")
    return run_id
