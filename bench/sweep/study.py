"""The study in MLflow (DESIGN §8): one study run shared by every worker, a child per trial and
the ``best-on-test`` child. Names and tags come from :mod:`bench.tracking.schema`.

The study run (tags ``persrv.kind=sweep``, ``optuna.study_name``, ``optuna.storage_hash``) is
shared by every worker: a worker adopts the matching run if there is one, else creates one; all
then use the earliest-created (start time, then run id) and a worker whose own run lost that race
deletes it and moves its children to the winner. Children are made with
:class:`bench.tracking.Tracker` and ``parent_run_id`` (not Optuna's ``MLflowCallback``, whose
default puts children into another experiment).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.sweep.result import SweepResult, flat_features
from bench.sweep.space import SearchSpace
from bench.sweep.storage import FileLock, NullLock, StorageHandle
from bench.tracking import mask_credentials
from bench.tracking import schema as S

log = logging.getLogger(__name__)


class StudyRun:
    """The one MLflow parent run of a study, shared by every worker (see the module doc)."""

    def __init__(self, tracker, experiment: str, study_name: str, storage_hash: str,
                 echo: Callable[[str], None]):
        self.tracker = tracker
        self.experiment = experiment
        self.study_name = study_name
        self.storage_hash = storage_hash
        self.echo = echo
        self.own: str | None = None
        self.run_id: str | None = None
        self.children: list[str] = []

    def _candidates(self) -> list:
        client = self.tracker.client
        exp_id = self.tracker.experiment_id(self.experiment)
        runs = client.search_runs([exp_id], S.study_run_filter(self.study_name,
                                                               self.storage_hash),
                                  max_results=200)
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def ensure(self, tags: dict[str, Any], params: dict[str, Any]) -> str:
        runs = self._candidates()
        if not runs:
            self.own = self.tracker.start_run(self.experiment,
                                              run_name=S.study_run_name(self.study_name),
                                              tags=tags)
            self.tracker.log_params(self.own, params)
            runs = self._candidates() or [self.tracker.client.get_run(self.own)]
        self.run_id = runs[0].info.run_id
        self._settle()
        if self.run_id != self.own:
            run = self.tracker.client.get_run(self.run_id)
            if run.info.status != "RUNNING":
                self.tracker.client.update_run(self.run_id, status="RUNNING")
        return self.run_id

    def _settle(self) -> None:
        """Adopt the earliest matching run; delete our own if it lost the race."""
        runs = self._candidates()
        if not runs:
            return
        first = runs[0].info.run_id
        if first != self.run_id:
            self.run_id = first
        if self.own and self.own != first:
            for child in self.children:
                self.tracker.set_tags(child, {S.PARENT_RUN_ID: first})
            with contextlib.suppress(Exception):
                self.tracker.client.delete_run(self.own)
            log.info("study run %s was a duplicate of %s; deleted", self.own, first)
            self.own = None

    def parent(self) -> str | None:
        """The study run to hang a child on (re-checked: a concurrent duplicate may appear)."""
        if self.run_id is None:
            return None
        with contextlib.suppress(Exception):
            self._settle()
        return self.run_id


def _warn(echo, what: str, exc: BaseException) -> None:
    echo(f"warning: {what} failed ({type(exc).__name__}: {mask_credentials(str(exc))[:300]})")


def start_tracking(uri: str | None, experiment: str, study_name: str, handle: StorageHandle,
                   echo) -> tuple[Any, StudyRun | None]:
    """A Tracker and the (not yet created) study run, or ``(None, None)`` without MLflow."""
    if not uri:
        return None, None
    from bench.tracking import Tracker
    try:
        lock = NullLock()
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(db)
        with lock:  # a fresh SQLite store is migrated by one process at a time
            tracker = Tracker(uri)
            tracker.client.search_experiments(max_results=1)
            tracker.experiment_id(experiment)
    except Exception as exc:
        echo(f"warning: MLflow unavailable ({type(exc).__name__}: "
             f"{mask_credentials(str(exc))[:300]}); trials are recorded in Optuna only")
        return None, None
    return tracker, StudyRun(tracker, experiment, study_name, handle.hash(), echo)


def flat_space(space: SearchSpace) -> dict[str, str]:
    """The space as MLflow params: Optuna name -> ``float [0.0, 1.0] log`` etc."""
    out = {}
    for s in space.walk():
        if s.kind == "value":
            desc = f"value {s.value!r}"
        elif s.kind == "choices":
            desc = f"choices {list(s.choices)!r}"
        else:
            desc = f"{s.kind} [{s.low}, {s.high}]" + (f" step {s.step}" if s.step else "") + \
                (" log" if s.log else "")
        out[re.sub(r"[^\w\-. /]", "_", s.optuna_name)] = desc
    return out


def open_study_run(tracker, study_run: StudyRun, *, ds, cfg, spec, space: SearchSpace,
                   handle: StorageHandle, sampler: str, key: str, n_trials: int,
                   space_file: Path) -> str:
    """Adopt or create the study run, with its tags, params and ``space.yaml``; its id."""
    from bench.tracking import git_commit
    tags = S.study_tags(ds, study_name=study_run.study_name, config_hash=cfg.config_hash(),
                        git_commit=git_commit(), **{
                            S.STORAGE: handle.display, S.STORAGE_HASH: handle.hash(),
                            S.DIRECTION: space.direction, S.SAMPLER: sampler,
                            S.SWEEP_KEY: key, S.SWEEP_SPACE: space.source})
    params = {"retriever": spec.name, "retriever_label": spec.display,
              "base_params": dict(spec.params), "objective": space.objective_name,
              "direction": space.direction, "space": flat_space(space),
              "features": cfg.features.raw(), "split": cfg.split.model_dump(),
              "dataset": cfg.dataset.model_dump(mode="json")}
    run_id = study_run.ensure(tags=tags, params=params)
    tracker.log_artifact(run_id, space_file)
    tracker.set_tags(run_id, {S.N_TRIALS_TARGET: n_trials})
    return run_id


def log_trial(tracker, study_run: StudyRun | None, *, study_name: str, number: int,
              retriever: str, params: dict[str, Any], metrics: dict[str, float],
              error: str | None, echo) -> None:
    """One trial's child run: params, metrics (``duration_seconds``, ``trial_number``, the
    validation metrics and ``objective`` when it completed), FAILED with ``error`` when not."""
    if tracker is None or study_run is None:
        return
    state = "COMPLETE" if error is None else "FAIL"
    try:
        run_id = tracker.start_run(study_run.experiment, run_name=S.trial_run_name(number),
                                   parent_run_id=study_run.parent(),
                                   tags=S.trial_tags(study_name=study_name, number=number,
                                                     state=state, retriever=retriever,
                                                     error=error))
        study_run.children.append(run_id)
        tracker.log_params(run_id, params)
        tracker.log_metrics(run_id, metrics)
        tracker.end_run(run_id, "FINISHED" if error is None else "FAILED")
    except Exception as exc:
        _warn(echo, f"MLflow logging of trial {number}", exc)


def log_abandoned(tracker, study_run: StudyRun | None, failed: list, *, study_name: str,
                  retriever: str, echo) -> None:
    """A FAILED child for each trial whose worker died (it never logged one)."""
    for trial, error in failed:
        params = {**(trial.user_attrs.get(S.ATTR_TRIAL_PARAMS) or {}),
                  **flat_features(trial.user_attrs.get(S.ATTR_TRIAL_FEATURES) or {})}
        log_trial(tracker, study_run, study_name=study_name, number=trial.number,
                  retriever=retriever, params=params, metrics={"trial_number": trial.number},
                  error=error, echo=echo)


def log_best_on_test(tracker, study_run: StudyRun, *, ds, result: SweepResult, spec, res,
                     folder: Path) -> str | None:
    """The ``best-on-test`` child: params, test metrics (macro, ``micro_*``, timings, the
    validation objective) and the run folder's files; its id."""
    run_id = tracker.start_run(study_run.experiment, run_name=S.best_on_test_run_name(),
                               parent_run_id=study_run.parent(),
                               tags=S.best_on_test_tags(ds, study_name=result.study_name,
                                                        best_trial=result.best_trial,
                                                        retriever=spec.name))
    tracker.log_params(run_id, {"retriever": spec.name, **res.params,
                                **flat_features(result.best_features)})
    metrics = dict(res.macro)
    metrics.update({f"micro_{k}": v for k, v in res.micro.items()})
    metrics.update({"fit_seconds": res.fit_seconds, "search_seconds": res.search_seconds,
                    f"val_{result.objective}": result.best_value})
    tracker.log_metrics(run_id, metrics)
    tracker.log_artifacts(run_id, folder)
    tracker.end_run(run_id, "FINISHED")
    return run_id


def log_study_outputs(tracker, study_run: StudyRun | None, result: SweepResult,
                      space: SearchSpace, folder: Path, echo) -> None:
    """On the study run: plots, trials.csv, best.json, outcome tags, best metrics; FINISHED."""
    if tracker is None or study_run is None:
        return
    from bench.metrics import METRICS
    try:
        parent = study_run.parent()
        tracker.log_artifacts(parent, folder / "plots", "plots")
        tracker.log_artifact(parent, folder / "trials.csv")
        tracker.log_artifact(parent, folder / "best.json")
        tracker.set_tags(parent, S.study_outcome_tags(
            result.states, result.best_trial,
            {**result.best_params, **flat_features(result.best_features)}))
        if result.best_trial is not None:
            metrics = {"best_value": result.best_value,
                       f"best_val_{space.objective_name}": result.best_value}
            if result.test_metrics:
                metrics.update({f"test_{k}": v for k, v in result.test_metrics.items()
                                if k.split("_at_")[0] in METRICS})
            tracker.log_metrics(parent, metrics)
        tracker.end_run(parent, "FINISHED")
    except Exception as exc:
        _warn(echo, "MLflow logging", exc)
