"""``persrv-bench run``: the pipeline's results written to a run folder, tabled, reported and logged.

Everything is written to a local run folder first (``output_dir/<name>-<timestamp>/``) and then
logged to MLflow (:mod:`bench.tracking.benchmark`), so results survive a tracking server that goes
away mid-run. ``status.json`` in the folder says ``running`` / ``complete`` / ``failed`` /
``killed``; ``persrv-bench report`` respects it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import runner
from bench.config import ExperimentConfig
from bench.run_status import write_status
from bench.runner import FEATURE_REPORT_PARAMS, RetrieverResult

log = logging.getLogger(__name__)


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


def _short_list(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 6 else \
        f"{values[0]}, {values[1]}, ..., {values[-1]} ({len(values)} in all)"


def make_run_folder(parent: Path, name: str) -> Path:
    """A new, empty run folder ``parent/<name>-<YYYYmmdd-HHMMSS>-<6 hex>``, created exclusively
    (``mkdir(exist_ok=False)``; a collision draws another suffix), so two runs of the same name
    started in the same second never share a folder."""
    import secrets
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        folder = parent / f"{name}-{_timestamp()}-{secrets.token_hex(3)}"
        try:
            folder.mkdir(exist_ok=False)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name under {parent} after 100 tries")


def safe_name(text: str, what: str) -> str:
    """``text`` as one path component (a run name or a retriever label); ``..``, separators,
    control characters and absolute paths are refused so nothing is written outside
    ``output_dir`` and nothing printed can move the cursor or forge a line."""
    from bench.errors import ConfigError
    from bench.secrets import safe_text
    if not text or text in (".", "..") or "/" in text or "\\" in text or safe_text(text) != text:
        raise ConfigError(f"{what} {safe_text(text)!r} cannot be used as a folder name (no '/', "
                          "'\\', '..', control characters or empty names)")
    import sys
    encoding = sys.getfilesystemencoding()
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {safe_text(text)!r} cannot be a folder name in the file-system "
                          f"encoding {encoding} (from the locale): use a UTF-8 locale "
                          "(LC_ALL=C.UTF-8) or PYTHONUTF8=1, or an ASCII name") from None
    return text


def write_inputs(cfg: ExperimentConfig, folder: Path, ds, requests, view, labels,
                 feature_report: dict | None, split_report: dict) -> dict[str, Any]:
    """The run's inputs beside its results: resolved config (credentials masked), qrels, the
    request table, per-request segments, a history sample, the data report. Returns the data
    report (what was skipped or missing)."""
    import yaml

    from bench.data.format import write_json_atomic
    from bench.evaluate import write_qrels, write_users
    from bench.secrets import mask_tree
    resolved = mask_tree(cfg.model_dump(mode="json"))  # URLs and secret-named params: ***
    (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False,
                                                       allow_unicode=True), encoding="utf-8")
    qids = requests.qids
    write_qrels(requests, folder / "qrels.txt", qids)
    write_users(requests, folder / "requests.tsv", qids)
    segments = runner.request_segments(ds, view.clicks, requests)
    segments = segments.merge(labels, on="qid", how="left")
    segments.to_parquet(folder / "segments.parquet", index=False)
    sample = runner.history_sample(view, ds)
    if sample is not None:
        sample.to_parquet(folder / "history_sample.parquet", index=False)
    data_report = {"dataset": {"name": str(ds.name), "fingerprint": str(ds.fingerprint)},
                   "dataset_skipped": dict(ds.skipped), "split": split_report,
                   "features": {k: (feature_report or {})[k] for k in FEATURE_REPORT_PARAMS
                                if k in (feature_report or {})}}
    write_json_atomic(folder / "data_report.json",
                      {**data_report, "features": feature_report or {}})
    return data_report


def run_experiment(cfg: ExperimentConfig, *, tracking_uri: str | None = None,
                   output_dir: str | Path | None = None, config_path: str | None = None,
                   echo: Callable[[str], None] = print,
                   parent_run_id: str | None = None) -> RunOutcome:
    """Run every configured retriever on the evaluation split and log everything (DESIGN §8).
    ``parent_run_id``: nest this run's parent under another run (a multi-seed group)."""
    from bench.tracking import check_reachable, resolve_tracking_uri
    from bench.tracking.benchmark import BenchmarkLog

    from bench.secrets import register_tree
    register_tree(cfg.model_dump(mode="json"))  # secret-named params are masked in every output
    runner.check_config(cfg)  # before any expensive work
    safe_name(cfg.name, "name")
    for spec in cfg.retrievers:
        safe_name(spec.display, "retriever label")
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri) if cfg.tracking.enabled else None
    if uri:
        check_reachable(uri)  # before any expensive work
    ds, splits, requests, view, feature_report = runner.prepare(cfg)  # errors if nothing to do
    from bench.cutoffs import dropped_ks, effective_ks
    if dropped_ks(cfg.ks, len(ds.stickers)):  # k over the corpus size: same lists, same values
        log.warning("ks %s are not computed: with %d stickers they equal k=%d",
                    _short_list(dropped_ks(cfg.ks, len(ds.stickers))), len(ds.stickers),
                    effective_ks(cfg.ks, len(ds.stickers))[-1])
        cfg.ks = effective_ks(cfg.ks, len(ds.stickers))
    experiment = cfg.tracking.experiment or ds.name
    try:
        folder = make_run_folder(Path(output_dir or cfg.output_dir), cfg.name)
        write_status(folder, "running")
    except OSError as exc:
        raise _output_error(exc, Path(output_dir or cfg.output_dir)) from None
    tracking = BenchmarkLog(uri, experiment, folder, echo)
    with terminate_as_interrupt():
        try:
            return _run_in_folder(cfg, folder, tracking, ds, splits, requests, view,
                                  feature_report, config_path, parent_run_id, uri, echo)
        except KeyboardInterrupt:
            _mark(folder, tracking, "killed", "KILLED", "interrupted")
            raise
        except OSError as exc:  # disk full, read-only folder: one line, what exists is kept
            _mark(folder, tracking, "failed", "FAILED", str(exc))
            raise _output_error(exc, folder) from None
        except BaseException as exc:
            _mark(folder, tracking, "failed", "FAILED", f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(AttributeError, TypeError):
                exc.run_folder = folder  # the CLI's boundary saves the traceback there
            raise


def _run_in_folder(cfg: ExperimentConfig, folder: Path, tracking, ds, splits, requests, view,
                   feature_report, config_path, parent_run_id, uri, echo) -> RunOutcome:
    experiment = tracking.experiment
    from bench.segments import label_requests
    labels = label_requests(requests, view.clicks)  # once: segments.parquet and every retriever
    split_report = splits.split_report()
    data_report = write_inputs(cfg, folder, ds, requests, view, labels, feature_report,
                               split_report)
    resolved = cfg.model_dump(mode="json")
    from bench.ledger import LEDGER, ledger_dir, record_evaluation
    test_evaluations = record_evaluation(ledger_dir(), ds.fingerprint, cfg.eval_split)
    from bench.tracking import schema
    tracking.start_parent(run_name=cfg.name, ds=ds, config_hash=cfg.config_hash(),
                          config_path=config_path, parent_run_id=parent_run_id,
                          extra_tags={schema.EVAL_SPLIT: cfg.eval_split,
                                      schema.FILL: cfg.evaluation.fill,
                                      schema.TEST_EVALUATIONS: str(test_evaluations)},
                          params={
                              "config": {k: v for k, v in resolved.items()
                                         if k not in ("retrievers", "tracking")},
                              "retrievers": ",".join(s.display for s in cfg.retrievers),
                              "n_requests": len(requests),
                              "simulator": ds.meta.get("simulator") or {},
                              "dataset_source": {"path": str(ds.root), "builder":
                                                 cfg.dataset.builder or "",
                                                 "params": cfg.dataset.params},
                              **data_report})
    outcome = RunOutcome(folder=folder, parent_run_id=tracking.parent, experiment=experiment)
    echo(f"dataset {ds.name} ({ds.fingerprint}): {len(ds.stickers)} stickers, "
         f"{len(requests)} {cfg.eval_split} requests from {len(set(requests.users.values()))} users")
    for line in _data_report_lines(data_report):
        echo(f"  {line} (see {folder / 'data_report.json'})")
    if cfg.eval_split == "test":
        echo(f"  test split: evaluation {test_evaluations} of dataset {ds.fingerprint} on this "
             f"machine ({ledger_dir() / LEDGER}; choose settings on validation: "
             "eval_split=validation)")
    for line in split_warnings(ds, splits, cfg):
        echo(f"  warning: {line}")
    kmax = max(cfg.ks)

    one_relevant = getattr(cfg.protocol, "name", "") == "leave-one-query-out"

    from bench.secrets import safe_text

    def on_result(result: RetrieverResult) -> None:
        if not result.error:
            m = result.macro
            hits = (f"  MRR@{kmax}={m[f'mrr_at_{kmax}']:.4f} hit@1={m['recall_at_1']:.4f} "
                    f"hit@{kmax}={m[f'recall_at_{kmax}']:.4f}"
                    if one_relevant and "recall_at_1" in m else "")
            tie = m.get(f"m_mrr_at_{kmax}_tie_aware")
            fair = (f" (tie-aware {tie:.4f}, coverage {m['coverage']:.0%})"
                    if tie is not None and "coverage" in m else "")
            echo(f"  {safe_text(result.label):<28} M-MRR@{kmax}={m[f'm_mrr_at_{kmax}']:.4f}"
                 f"{fair}{hits}  fit {result.fit_seconds:.1f}s  search "
                 f"{result.search_seconds:.1f}s")
        tracking.log_child(result, ds)

    outcome.results = runner.run_retrievers(cfg, view, requests, folder, on_result, labels)
    context = getattr(view, "context", None)
    if context is not None:  # shared work, timed once: its own stage, not one retriever's
        tracking.log_parent_metrics(context.stage_seconds())
    outcome.parent_run_id = tracking.parent  # None once tracking was lost
    md = write_tables(cfg, folder, outcome, ds)
    if cfg.report:
        _report(cfg, folder, echo)
    write_status(folder, "failed" if outcome.failed else "complete",
                 failed=[r.label for r in outcome.failed])
    tracking.finish(outcome.table, cfg.ks, failed=bool(outcome.failed))
    echo("")
    echo(md)
    from bench.tracking import mask_credentials
    echo(f"\nresults: {folder}" + (f"   (MLflow: {mask_credentials(uri)}, experiment "
                                   f"{experiment!r}, run {outcome.parent_run_id})"
                                   if outcome.parent_run_id else ""))
    return outcome


def split_warnings(ds, splits, cfg: ExperimentConfig) -> list[str]:
    """On real logs (no simulator), a ``per_user`` split lets other users' later clicks into the
    history: say how many evaluation requests see their own (query, sticker) pair only from
    clicks made after the request."""
    if ds.meta.get("simulator") or getattr(cfg.protocol, "name", "") != "simulated-users" \
            or cfg.split.mode != "per_user":
        return []
    n = splits.future_pairs(cfg.eval_split)
    if not n:
        return []
    return [f"split.mode per_user on real users: {n} {cfg.eval_split} requests find their "
            "(query, sticker) pair in the history only in other users' LATER clicks; use "
            "split.mode: global_time for a time-respecting evaluation"]


def _output_error(exc: OSError, folder: Path):
    from bench.errors import BenchError
    where = exc.filename or folder
    return BenchError(f"cannot write {where}: {exc.strerror or exc} (results written so far "
                      f"are kept in {folder}, marked in status.json)")


def _mark(folder: Path, tracking, state: str, mlflow_status: str, why: str) -> None:
    """Best effort: the folder's status.json and the parent run say how the run ended."""
    try:
        from bench.secrets import mask_credentials
        write_status(folder, state, error=mask_credentials(why)[:2000])
    except OSError:
        pass
    tracking.abort(mlflow_status)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (``kill``, a scheduler's timeout) raises KeyboardInterrupt in the main thread, so
    the run is marked killed exactly as after Ctrl-C."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_tables(cfg: ExperimentConfig, folder: Path, outcome: RunOutcome, ds) -> str:
    """results.csv, results.md and plots/m_mrr_at_k.png; returns the markdown table."""
    from bench.report.plots import plot_m_mrr
    from bench.report.tables import format_segment_table, format_table, results_table
    table = results_table(outcome.results, cfg.ks)
    outcome.table = table
    table.to_csv(folder / "results.csv", index=False)
    md = format_table(table, cfg.ks)
    kmax = max(cfg.ks)
    seg_md = format_segment_table(table, "m_mrr", kmax)
    if seg_md:
        (folder / "segments.md").write_text(seg_md + "\n", encoding="utf-8")
        md += (f"\n\nM-MRR@{kmax} by segment (request counts in the header; docs/ARCHITECTURE.md,"
               f" 'Metrics'):\n\n{seg_md}")
    note = "\n\nUsers are simulated (docs/ARCHITECTURE.md, 'Data').\n" \
        if ds.meta.get("simulator") else "\n"
    (folder / "results.md").write_text(
        f"# {cfg.name} on {ds.name} ({cfg.eval_split} split, macro over users)\n\n{md}{note}",
        encoding="utf-8")
    plot_m_mrr(table, cfg.ks, folder / "plots" / "m_mrr_at_k.png")
    return md


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
