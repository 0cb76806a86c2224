"""The MLflow side of one ``persrv-bench run`` (DESIGN §8): the parent run, one child per
retriever, the parent's artifacts and its winner.

Tracking never loses local results: the first failure (server gone, disk full on the store) turns
logging off for the rest of the run with one warning; everything stays in the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from bench.processes import worker_identity
from bench.tracking import schema
from bench.tracking.client import Tracker, git_commit, mask_credentials

log = logging.getLogger(__name__)

#: Parent artifacts copied from the run folder when they exist.
PARENT_FILES = ("results.md", "results.csv", "segments.md", "qrels.txt", "requests.tsv",
                "segments.parquet", "history_sample.parquet", "status.json")


def safe_tracker(uri: str | None, echo: Callable[[str], None]) -> Tracker:
    """A :class:`Tracker` on ``uri``, or a disabled one (with a masked warning) if MLflow fails."""
    try:
        return Tracker(uri)
    except Exception as exc:
        echo(f"warning: MLflow unavailable ({type(exc).__name__}: {mask_credentials(str(exc))}); "
             "results are local only")
        return Tracker(None)


def tracking_lost(exc: Exception, folder: Path, echo: Callable[[str], None]):
    """The warning for a tracking failure mid-run; returns (a disabled tracker, no parent)."""
    echo(f"warning: MLflow logging failed ({type(exc).__name__}: {mask_credentials(str(exc))}); "
         f"continuing with local results only in {folder}")
    return Tracker(None), None


class BenchmarkLog:
    """Parent + children of one benchmark run; every method is a no-op once tracking is off."""

    def __init__(self, uri: str | None, experiment: str, folder: Path,
                 echo: Callable[[str], None]):
        self.experiment = experiment
        self.folder = folder
        self.echo = echo
        self.tracker = safe_tracker(uri, echo) if uri else Tracker(None)
        self.parent: str | None = None
        self.children: dict[str, str] = {}  # label -> child run id

    @property
    def enabled(self) -> bool:
        return self.tracker.enabled

    def _guard(self, fn: Callable[[], Any]) -> Any:
        if not self.tracker.enabled:
            return None
        try:
            return fn()
        except Exception as exc:
            self.tracker, self.parent = tracking_lost(exc, self.folder, self.echo)
            return None

    # ------------------------------------------------------------------------------ parent
    def start_parent(self, *, run_name: str, ds: Any, config_hash: str, config_path: str | None,
                     params: dict[str, Any], extra_tags: dict[str, str] | None = None,
                     parent_run_id: str | None = None) -> str | None:
        def start() -> str | None:
            orphans = self.tracker.mark_orphans(self.experiment)
            if orphans:
                self.echo(f"  marked {len(orphans)} earlier run(s) KILLED (their process is gone)")
            tags = {**schema.parent_tags(ds, config_hash=config_hash, config_path=config_path,
                                         git_commit=git_commit()),
                    **schema.process_tags(worker_identity(), self.folder.resolve()), **(extra_tags or {})}
            name = schema.parent_run_name(run_name, str(ds.name))
            self.parent = self.tracker.start_run(self.experiment, run_name=name, tags=tags,
                                                 reuse_env_run=parent_run_id is None,
                                                 parent_run_id=parent_run_id)
            self.tracker.log_params(self.parent, params)
            self.log_dataset(self.parent, ds)
            for name in ("config.yaml", "data_report.json"):
                if (self.folder / name).exists():
                    self.tracker.log_artifact(self.parent, self.folder / name)
            (self.folder / "parent_run_id.txt").write_text(
                f"{self.parent}\n{mask_credentials(self.tracker.uri)}\n", encoding="utf-8")
            return self.parent
        return self._guard(start)

    def log_dataset(self, run_id: str | None, ds: Any) -> None:
        """The dataset on a run (fills MLflow's Dataset column): its sticker table's schema,
        fingerprint as digest, resolved directory as source."""
        import pandas as pd
        # float columns: MLflow warns about integer columns in an inferred schema
        summary = pd.DataFrame({"stickers": [float(len(ds.stickers))],
                                "clicks": [float(len(ds.interactions))],
                                "users": [float(ds.interactions["user_id"].nunique())]})
        source = str(ds.root) if getattr(ds, "root", None) is not None else ds.name
        self.tracker.log_dataset(run_id, summary, name=ds.name, digest=ds.fingerprint,
                                 source=source, context="evaluation")

    # ---------------------------------------------------------------------------- children
    def log_child(self, result: Any, ds: Any) -> None:
        """One retriever's child run: params (with its label and fitted ids), metrics (macro,
        ``micro_*``, segments, timings), artifacts; start/end span the real fit + search."""
        def log_it() -> None:
            tracker = self.tracker
            run_id = tracker.start_run(
                self.experiment, run_name=schema.child_run_name(result.label),
                parent_run_id=self.parent, start_time=result.started_at,
                tags=schema.child_tags(ds, name=result.name, label=result.label,
                                       error=result.error))
            result.run_id = run_id
            if run_id:
                self.children[result.label] = run_id
            fitted = {f"fitted.{k}": v for k, v in (result.fitted or {}).items()}
            tracker.log_params(run_id, {"retriever": result.name, "label": result.label,
                                        **result.params, **fitted})
            metrics = dict(result.macro)
            metrics.update({f"micro_{k}": v for k, v in result.micro.items()})
            metrics.update(result.segments or {})
            metrics.update({f"diag_{k}": v for k, v in (getattr(result, "diagnostics", None)
                                                         or {}).items()})
            series = getattr(result, "fitted_series", None) or {}
            metrics.update({k: v for k, v in series.items() if not isinstance(v, list)})
            metrics.update({"fit_seconds": result.fit_seconds,
                            "search_seconds": result.search_seconds})
            tracker.log_metrics(run_id, metrics)
            tracker.log_series(run_id, {k: v for k, v in series.items()  # training curves
                                        if isinstance(v, list)})
            self.log_dataset(run_id, ds)
            if result.folder is not None and Path(result.folder).is_dir():
                tracker.log_artifacts(run_id, result.folder)
            tracker.end_run(run_id, "FAILED" if result.error else "FINISHED",
                            end_time=result.ended_at)
        self._guard(log_it)

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        """Run-level figures on the parent (e.g. ``shared_<kind>_seconds``: work the run context
        did once for several retrievers, reported as its own stage)."""
        if metrics:
            self._guard(lambda: self.tracker.log_metrics(self.parent, metrics)
                        if self.parent else None)

    def abort(self, status: str) -> None:
        """End the parent as KILLED or FAILED after an interruption or an unexpected error."""
        self._guard(lambda: self.tracker.end_run(self.parent, status) if self.parent else None)

    # ------------------------------------------------------------------------------ finish
    def finish(self, table: Any, ks: list[int], failed: bool) -> None:
        """The parent's artifacts, the winner (tags ``best_retriever``, ``best_<metric>``;
        metrics ``best_m_mrr_at_<k>``) and its end status."""
        def finish_it() -> None:
            from bench.metrics import metric_name
            tracker, parent = self.tracker, self.parent
            if parent is None:
                return
            for name in PARENT_FILES:
                if (self.folder / name).exists():
                    tracker.log_artifact(parent, self.folder / name)
            for sub in ("plots", "report"):
                if (self.folder / sub).is_dir():
                    tracker.log_artifacts(parent, self.folder / sub, sub)
            ok = table[table["status"] == "ok"]
            if len(ok):
                tracker.log_metrics(parent, {f"best_{metric_name('m_mrr', k)}":
                                             float(ok[metric_name('m_mrr', k)].max()) for k in ks})
                primary = metric_name("m_mrr", max(ks))
                best = ok.loc[ok[primary].idxmax()]
                tracker.set_tags(parent, {schema.BEST_RETRIEVER: best["retriever"],
                                          f"best_{primary}": f"{best[primary]:.4f}",
                                          schema.HEADLINE_METRIC: primary})
                self._log_leaderboard(primary)
            tracker.end_run(parent, "FAILED" if failed else "FINISHED")
        self._guard(finish_it)

    def _log_leaderboard(self, metric: str) -> None:
        """The parent's leaderboard (an MLflow table: ranks, CIs, paired margins to the best
        floor baseline) and description naming the winner; each child's description gives its
        rank. Read from the run folder's per-request files; a folder the report cannot read
        leaves the run without them (one warning), never fails it."""
        try:
            from bench.report.folder import load_folder
            from bench.report.leaderboard import child_description, describe, leaderboard
            from bench.report.names import pretty
            board = leaderboard(load_folder(self.folder), metric)
        except Exception as exc:
            self.echo(f"warning: no MLflow leaderboard ({type(exc).__name__}: {exc})")
            return
        tracker = self.tracker
        shown = board.table.round(6)
        import warnings
        with warnings.catch_warnings():  # MLflow's own select_dtypes call (pandas 3 notice)
            warnings.filterwarnings("ignore", message=".*'str' dtypes are included by "
                                    "select_dtypes")
            tracker.client.log_table(self.parent, shown, schema.LEADERBOARD_FILE)
        tracker.set_tags(self.parent, {schema.NOTE: describe(board, pretty(metric))})
        for label, run_id in self.children.items():
            if label in set(board.table["retriever"]):
                tracker.set_tags(run_id, {
                    schema.NOTE: child_description(board, label, pretty(metric)),
                    schema.HEADLINE_METRIC: metric,
                    schema.RANK: str(int(board.row(label)["rank"]))})
