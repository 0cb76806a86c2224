"""Optuna sweeps (DESIGN §3, §8): one study = one MLflow parent run, one child run per trial.

:func:`run_sweep` tunes one retriever of an experiment config over a YAML search space
(:mod:`bench.sweep.space`). The objective is the macro metric@k (default M-MRR@20) on the
**validation** split, with everything fitted on **train** only; ``test`` is touched once, after the
sweep, by the best parameters (fitted on train + validation): the ``best-on-test`` child run.
Per-process reuse (data, features, fitted bases): :mod:`bench.sweep.session`. Storage and locks:
:mod:`bench.sweep.storage`. MLflow: :mod:`bench.sweep.study`. Outputs: :mod:`bench.sweep.finish`.

**Trial budget.** ``n_trials`` is the total for the study over all workers, not per process:
each worker asks for a new trial only while fewer than ``n_trials`` trials are finished
(COMPLETE, FAIL or PRUNED, the states ``MaxTrialsCallback(n, states=...)`` counts) or running.
The check and the ask happen under the storage's lock, so concurrent workers never overshoot —
``MaxTrialsCallback`` alone checks only after each trial and lets each extra worker run one
more. Re-running with the same study name resumes the study (``load_if_exists``) and runs
trials until the study has ``n_trials`` in total. A trial whose worker died is marked FAIL by
the next worker (:mod:`bench.sweep.liveness`: at once on the same host, after
:data:`STALE_SECONDS` without a heartbeat elsewhere). A trial that raises is recorded as FAIL
(with the error, in Optuna and MLflow) and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ExperimentConfig, RetrieverSpec
from bench.errors import BenchError, ConfigError
from bench.sweep.finish import claim_final, finalize
from bench.sweep.liveness import (
    HEARTBEAT_SECONDS,
    STALE_SECONDS,
    Heartbeat,
    counted,
    fail_abandoned,
    worker_identity,
)
from bench.sweep.result import (
    SweepResult,
    fill_result,
    flat_features,
    print_summary,
    show_params,
)
from bench.sweep.session import SweepSession, resolve_target
from bench.sweep.space import SearchSpace
from bench.sweep.space_parse import load_space, parse_space
from bench.sweep.storage import StorageHandle, default_storage
from bench.sweep.study import (
    StudyRun,
    log_abandoned,
    log_trial,
    open_study_run,
    start_tracking,
)
from bench.tracking import mask_credentials
from bench.tracking import schema as S

log = logging.getLogger(__name__)


@dataclass
class _Worker:
    """What one worker's trials share."""

    study: Any
    handle: StorageHandle
    space: SearchSpace
    spec: RetrieverSpec
    session: SweepSession
    echo: Callable[[str], None]
    stale_after: float
    heartbeat: float
    tracker: Any = None
    study_run: StudyRun | None = None

    def fail_abandoned(self) -> None:
        """Under the budget lock: fail trials of dead workers and give each a FAILED child."""
        failed = fail_abandoned(self.study, self.handle.open(), self.stale_after, self.echo)
        log_abandoned(self.tracker, self.study_run, failed, study_name=self.study.study_name,
                      retriever=self.spec.name, echo=self.echo)


def _config_key(cfg: ExperimentConfig, spec: RetrieverSpec, space: SearchSpace) -> str:
    body = {"dataset": cfg.dataset.model_dump(mode="json"), "split": cfg.split.model_dump(),
            "features": cfg.features.raw(), "retriever": spec.model_dump(mode="json"),
            "seed": cfg.seed, "space": space.fingerprint()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]


def make_sampler(kind: str, seed: int | None, space: SearchSpace):
    import optuna
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":  # grid points are enqueued; anything left over is drawn at random
        return optuna.samplers.RandomSampler(seed=seed)
    if kind != "tpe":
        raise ConfigError(f"unknown sampler {kind!r} (expected tpe, random or grid)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          group=space.has_conditional, constant_liar=True,
                                          warn_independent_sampling=False)


def _trial_seed(seed: int, number: int) -> int:
    """Every trial number gets its own sampler stream: one worker is reproducible, and
    concurrent workers never draw the same random point."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{number}".encode(), digest_size=4).digest(),
                          "big")


def _next_grid_point(study, points: list[dict[str, Any]], order: list[int]) -> int | None:
    taken = set()
    for t in study.get_trials(deepcopy=False):
        idx = t.user_attrs.get(S.ATTR_GRID_POINT)
        if idx is not None:
            taken.add(int(idx))
        elif t.params:
            with contextlib.suppress(ValueError):
                taken.add(points.index(dict(t.params)))
    return next((i for i in order if i not in taken), None)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _dump_yaml(raw: dict) -> str:
    import yaml
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def _resolve_inputs(space, cfg: ExperimentConfig, n_trials, sampler, seed, study_name):
    """Validate before any work: (space, target spec, n_trials, sampler, seed, study name)."""
    from bench.registry import get_retriever_class, make_retriever, param_specs
    if isinstance(space, (str, Path)):
        space = load_space(space)
    elif isinstance(space, dict):
        space = parse_space(space)
    spec = resolve_target(space, cfg)
    space.check_names(spec.name, param_specs(get_retriever_class(spec.name)))
    make_retriever(spec.name, dict(spec.params))  # the base parameters, before any work
    space.check_values(get_retriever_class(spec.name), dict(spec.params))
    n_trials = n_trials or space.n_trials
    if not n_trials or n_trials < 1:
        raise ConfigError("the number of trials is missing: pass --n-trials N (or set n_trials "
                          "in the space file)")
    sampler_kind = sampler or space.sampler or "tpe"
    seed = cfg.seed if seed is None else int(seed)
    if study_name is None:
        stem = Path(space.source).stem if space.source != "space" else "space"
        study_name = f"{cfg.name}-{stem}"
    if any(c in study_name for c in "'`\"\\"):
        raise ConfigError(f"--study-name {study_name!r}: quotes and backslashes are not allowed")
    return space, spec, n_trials, sampler_kind, seed, study_name


def _open_study(handle: StorageHandle, study_name: str, space: SearchSpace, key: str,
                spec: RetrieverSpec):
    """Create or load the study; refuse one made with another space or config."""
    import optuna
    with handle.lock("init", study_name):
        study = optuna.create_study(storage=handle.open(), study_name=study_name,
                                    direction=space.direction, load_if_exists=True)
        have = study.user_attrs.get(S.ATTR_STUDY_KEY)
        if have is None:
            study.set_user_attr(S.ATTR_STUDY_KEY, key)
            study.set_user_attr(S.ATTR_OBJECTIVE, space.objective_name)
            study.set_user_attr(S.ATTR_SPACE, space.source)
            study.set_user_attr(S.ATTR_RETRIEVER, spec.display)
            with warnings.catch_warnings():  # optuna-dashboard shows it, not "Objective 0"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([S.split_metric_key("validation", space.objective_name)])
        elif have != key:
            raise ConfigError(f"study {study_name!r} in {handle.display} was made with another "
                              f"space or experiment config (key {have}, now {key}); pass a new "
                              "--study-name, or the same space and config to resume it")
    if study.direction.name.lower() != space.direction:
        raise ConfigError(f"study {study_name!r} {study.direction.name.lower()}s; the space "
                          f"says {space.direction}")
    return study


def _start_session(cfg: ExperimentConfig, spec: RetrieverSpec, space: SearchSpace,
                   echo) -> SweepSession:
    ks = sorted(set(cfg.ks) | {space.k})
    session = SweepSession(cfg, spec, ks, max(ks))
    ds = session.ds
    if len(session.requests) == 0:
        need = cfg.split.min_train_groups + cfg.split.val_groups + cfg.split.test_groups
        raise BenchError(f"dataset {ds.name}: the validation split has no requests (users need "
                         f"at least {need} click-groups and split.val_groups >= 1)")
    echo(f"dataset {ds.name} ({ds.fingerprint}): {len(session.requests)} validation requests "
         f"from {len(set(session.requests.users.values()))} users; tuning {spec.display} "
         f"({spec.name}) on {space.objective_name}")
    return session


def run_sweep(space: SearchSpace | str | Path | dict, cfg: ExperimentConfig,
              n_trials: int | None = None, storage: str | None = None,
              study_name: str | None = None, sampler: str | None = None,
              seed: int | None = None, *, tracking_uri: str | None = None,
              final_test: bool = True, output_dir: str | Path | None = None,
              echo: Callable[[str], None] = print,
              stale_after: float = STALE_SECONDS,
              heartbeat: float = HEARTBEAT_SECONDS) -> SweepResult:
    """Run (or join, or resume) a study until it has ``n_trials`` trials in total.

    ``space``: a :class:`SearchSpace`, a YAML path or a mapping. ``cfg``: the experiment config
    (its dataset, split, features and the tuned retriever's base parameters). ``storage``: RDB
    URL or journal path (default: :func:`default_storage`). ``study_name``: default
    ``<config name>-<space file stem>``. ``sampler``: tpe (default), random or grid. ``seed``:
    default ``cfg.seed``. See the module doc for the budget, MLflow and test rules.
    """
    import optuna

    from bench.tracking import check_reachable, resolve_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, spec, n_trials, sampler_kind, seed, study_name = _resolve_inputs(
        space, cfg, n_trials, sampler, seed, study_name)
    grid_points = space.grid_points() if sampler_kind == "grid" else None
    from bench.secrets import register_tree, register_url
    register_tree(cfg.model_dump(mode="json"))  # secret-named params: masked in every output
    register_url(storage)
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri) if cfg.tracking.enabled else None
    if uri:
        check_reachable(uri)
    handle = StorageHandle(storage or default_storage(uri))
    if not handle.exact_budget:
        echo(f"note: storage {handle.display} has no lock: concurrent workers may overshoot "
             f"--n-trials by up to one trial each")
    handle.open()
    key = _config_key(cfg, spec, space)
    study = _open_study(handle, study_name, space, key, spec)
    done, _ = counted(study)
    echo(f"study {study_name!r} ({handle.display}): {done} trial(s) so far, target "
         f"{n_trials} in total; sampler {sampler_kind}, seed {seed}")
    session = _start_session(cfg, spec, space, echo)
    experiment = cfg.tracking.experiment or session.ds.name
    folder = Path(output_dir or cfg.output_dir) / f"sweep-{study_name}"
    folder.mkdir(parents=True, exist_ok=True)
    worker = _Worker(study, handle, space, spec, session, echo, stale_after, heartbeat)
    worker.tracker, worker.study_run = _tracking(uri, experiment, worker, sampler_kind, key,
                                                 n_trials, folder, cfg)
    ran = _trial_loop(worker, n_trials, sampler_kind, seed, grid_points)
    result = SweepResult(study_name=study_name, storage=handle.display, n_trials=n_trials,
                         states={}, ran=ran, objective=space.objective_name,
                         direction=space.direction,
                         experiment=experiment if worker.tracker else None,
                         study_run_id=worker.study_run.parent() if worker.study_run else None,
                         folder=folder, base_fits=session.base_fits)
    with handle.lock("budget", study_name):
        worker.fail_abandoned()
        _, running = counted(study)
        claim = None
        if running:
            echo(f"{running} trial(s) still running in other workers; the last worker to finish "
                 "writes the plots and runs the best parameters on test")
        else:
            claim = claim_final(study)
    fill_result(result, study, space)
    if claim is not None:
        finalize(study, claim, result, space, session, folder, final_test=final_test,
                 tracker=worker.tracker, study_run=worker.study_run, echo=echo)
    print_summary(result, echo)
    return result


def _tracking(uri, experiment: str, worker: _Worker, sampler_kind: str, key: str,
              n_trials: int, folder: Path, cfg: ExperimentConfig):
    """The Tracker and the adopted / created study run, or ``(None, None)``."""
    tracker, study_run = start_tracking(uri, experiment, worker.study.study_name, worker.handle,
                                        worker.echo)
    if study_run is None:
        return None, None
    try:
        (folder / "space.yaml").write_text(_dump_yaml(worker.space.raw), encoding="utf-8")
        run_id = open_study_run(tracker, study_run, ds=worker.session.ds, cfg=cfg,
                                spec=worker.spec, space=worker.space, handle=worker.handle,
                                sampler=sampler_kind, key=key, n_trials=n_trials,
                                space_file=folder / "space.yaml")
        worker.study.set_user_attr(S.ATTR_MLFLOW_RUN, run_id)
    except Exception as exc:
        worker.echo(f"warning: MLflow logging failed ({type(exc).__name__}: "
                    f"{mask_credentials(str(exc))[:300]}); continuing without it")
        return None, None
    return tracker, study_run


def _trial_loop(worker: _Worker, n_trials: int, sampler_kind: str, seed: int,
                grid_points: list[dict[str, Any]] | None) -> int:
    """Ask and run trials while the study has fewer than ``n_trials``; the number run here."""
    from optuna.trial import TrialState
    study, echo = worker.study, worker.echo
    order = list(range(len(grid_points or [])))
    if grid_points:
        import random
        random.Random(seed).shuffle(order)
        echo(f"grid: {len(grid_points)} point(s)")
    ran = 0
    while True:
        with worker.handle.lock("budget", study.study_name):
            worker.fail_abandoned()
            if counted(study)[0] >= n_trials:
                break
            number = len(study.get_trials(deepcopy=False))
            study.sampler = make_sampler(sampler_kind, _trial_seed(seed, number), worker.space)
            if grid_points is not None and not study.get_trials(
                    deepcopy=False, states=(TrialState.WAITING,)):
                idx = _next_grid_point(study, grid_points, order)
                if idx is None:
                    echo(f"grid exhausted: every one of its {len(grid_points)} point(s) has a "
                         "trial")
                    break
                study.enqueue_trial(grid_points[idx], user_attrs={S.ATTR_GRID_POINT: idx})
            trial = study.ask()
            trial.set_user_attr(S.ATTR_WORKER, worker_identity())
        ran += 1
        _run_trial(worker, trial)
    return ran


def _evaluate_trial(worker: _Worker, trial) -> tuple[dict, dict, dict, float | None, str | None]:
    """Sample and score one trial: (retriever params, features, metrics, objective, error)."""
    from optuna.trial import TrialState
    space = worker.space
    rparams: dict[str, Any] = {}
    features: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    try:
        rparams, features = space.suggest(trial)
        trial.set_user_attr(S.ATTR_TRIAL_PARAMS, _jsonable(rparams))
        if features:
            trial.set_user_attr(S.ATTR_TRIAL_FEATURES, _jsonable(features))
        metrics = worker.session.evaluate(rparams, features)
        value = float(metrics[space.objective_name])
        if not math.isfinite(value):
            raise ValueError(f"{space.objective_name} is {value}")
        return rparams, features, metrics, value, None
    except KeyboardInterrupt:
        worker.study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {mask_credentials(str(exc))}"
        log.debug("trial %d failed", trial.number, exc_info=True)
        with contextlib.suppress(Exception):
            trial.set_user_attr(S.ATTR_TRIAL_ERROR, error[:2000])
            trial.set_user_attr(S.ATTR_TRIAL_TRACEBACK,
                                mask_credentials(traceback.format_exc())[-4000:])
        return rparams, features, metrics, None, error


def _run_trial(worker: _Worker, trial) -> None:
    """Run one trial under a heartbeat, tell Optuna, print one line, log the child run."""
    from optuna.trial import TrialState
    study, space = worker.study, worker.space
    t0 = time.perf_counter()
    with Heartbeat(trial, worker.heartbeat):
        rparams, features, metrics, value, error = _evaluate_trial(worker, trial)
    duration = time.perf_counter() - t0
    if error is None:
        study.tell(trial, value)
    else:
        study.tell(trial, state=TrialState.FAIL)
    shown = show_params({**rparams, **flat_features(features)})
    if error is None:
        try:
            best = study.best_trial
            best_txt = f" (best {best.value:.4f} #{best.number})"
        except ValueError:
            best_txt = ""
        worker.echo(f"trial {trial.number}: {space.objective_name}={value:.4f}{best_txt}  "
                    f"{shown}  [{duration:.1f}s]")
    else:
        worker.echo(f"trial {trial.number} FAILED: {error[:300]}  {shown}  [{duration:.1f}s]")
    out = {"duration_seconds": duration, "trial_number": trial.number}
    if error is None:  # validation scores: the split in the key, never a test score's name
        out.update({S.split_metric_key("validation", k): v for k, v in metrics.items()})
        out["objective"] = value
    log_trial(worker.tracker, worker.study_run, study_name=study.study_name,
              number=trial.number, retriever=worker.spec.name,
              params={**rparams, **flat_features(features)}, metrics=out, error=error,
              echo=worker.echo)
