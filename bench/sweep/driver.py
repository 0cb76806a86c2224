"""Optuna sweeps (DESIGN §3, §8): one study = one MLflow parent run, one child run per trial.

:func:`run_sweep` tunes one retriever of an experiment config over a YAML search space
(:mod:`bench.sweep_space`). The objective is the macro metric@k (default M-MRR@20) on the
**validation** split, with everything fitted on **train** only; ``test`` is touched once, after the
sweep, by the best parameters (fitted on train + validation): the ``best-on-test`` child run.

Work done once per process and reused by every trial: the dataset, splits and offline features
(:func:`bench.runner.prepare`), and the fitted base retriever. A retriever with ``with_params``
(PerSRV) is fitted once and each trial calls ``base.with_params(**trial_params)``, which reuses
the BM25 index and the recall cache and only re-clusters / re-ranks what the trial changes; any
other retriever is constructed and fitted per trial. A trial that changes ``features.encoder``
(or ``features.encoder_params.*``) gets that encoder's embeddings once per process (from the
on-disk feature cache after the first time) and its own fitted base.

**Storage.** Default: an Optuna journal file (``JournalStorage(JournalFileBackend(...))``)
``optuna-journal.log`` beside the MLflow SQLite store (``./optuna-journal.log`` for a server).
Several local processes can share it safely: writes are appends under a file lock. A *fresh*
SQLite file is not safe that way: concurrent workers race in the schema migration (alembic) and
crash, and Optuna advises against SQLite for parallel work. ``--storage`` takes an RDB URL
(``postgresql://user:pw@host/db`` for many machines, ``sqlite:///file.db``) or a journal file
path. Credentials in URLs are masked in every print, param and tag.

**Trial budget.** ``n_trials`` is the total for the study over all workers, not per process:
each worker asks for a new trial only while fewer than ``n_trials`` trials are finished
(COMPLETE, FAIL or PRUNED, the states ``MaxTrialsCallback(n, states=...)`` counts) or running.
The check and the ask happen under a lock (``flock`` on the journal or SQLite file, a
PostgreSQL advisory lock, MySQL ``GET_LOCK``), so concurrent workers never overshoot —
``MaxTrialsCallback`` alone checks only after each trial and lets each extra worker run one
more. Re-running with the same study name resumes the study (``load_if_exists``) and runs
trials until the study has ``n_trials`` in total. A trial whose worker died (no heartbeat for
:data:`STALE_SECONDS`) is marked FAIL by the next worker. A trial that raises is recorded as FAIL
(with the error, in Optuna and MLflow) and the sweep goes on.

**MLflow.** The study run (tags ``persrv.kind=sweep``, ``optuna.study_name``,
``optuna.storage_hash``) is shared by every worker: a worker adopts the matching run if there is
one, else creates one; all then use the earliest-created (start time, then run id) and a worker
whose own run lost that race deletes it and moves its children to the winner. Children are made
with :class:`bench.tracking.Tracker` and ``parent_run_id`` (not Optuna's ``MLflowCallback``,
whose default puts children into another experiment). The last worker to finish (no trial
running) writes plots (``plots/``), ``trials.csv``, the best parameters and value, and runs the
best parameters once on test; a study user attribute records that it was done for that best
trial, so concurrent workers and resumes do not repeat it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.config import ExperimentConfig, RetrieverSpec
from bench.errors import BenchError, ConfigError
from bench.sweep_space import SearchSpace, load_space, parse_space

log = logging.getLogger(__name__)

JOURNAL_NAME = "optuna-journal.log"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
ATTR_FINAL = "persrv.best_on_test"
ATTR_KEY = "persrv.study_key"
ATTR_RUN = "persrv.mlflow_run_id"


@dataclass
class SweepResult:
    """What a worker saw: the study as it stood when this worker finished."""

    study_name: str
    storage: str                      # masked
    n_trials: int                     # the study's target total
    states: dict[str, int]            # trials per state
    ran: int                          # trials this process ran
    objective: str                    # e.g. m_mrr_at_20 (validation)
    direction: str
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)    # retriever params
    best_features: dict[str, Any] = field(default_factory=dict)  # features overrides
    test_metrics: dict[str, float] | None = None
    test_run_id: str | None = None
    study_run_id: str | None = None
    experiment: str | None = None
    finalized: bool = False           # this worker wrote plots / best (the last one to finish)
    folder: Path | None = None
    plots: list[Path] = field(default_factory=list)
    base_fits: int = 0


# --------------------------------------------------------------------------------- storage

def default_storage(tracking_uri: str | None) -> str:
    """``optuna-journal.log`` beside a SQLite MLflow store, else in the working directory."""
    if tracking_uri and tracking_uri.startswith("sqlite:///") and len(tracking_uri) > 10:
        return str(Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent
                   / JOURNAL_NAME)
    return str(Path.cwd() / JOURNAL_NAME)


class _NullLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FileLock:
    """An exclusive ``flock`` on a file, created if absent (processes on one machine)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self):
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        try:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None
        return False


class _DbLock:
    """A named lock held by the database: PostgreSQL advisory lock or MySQL ``GET_LOCK``."""

    def __init__(self, engine, name: str):
        self.engine = engine
        self.name = name
        self.key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(),
                                  "big", signed=True)
        self._conn = None

    def __enter__(self):
        from sqlalchemy import text
        self._conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        else:
            self._conn.execute(text("SELECT GET_LOCK(:n, -1)"), {"n": self.name[:64]})
        self._conn.commit()
        return self

    def __exit__(self, *exc):
        from sqlalchemy import text
        try:
            if self.engine.dialect.name == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name[:64]})
            self._conn.commit()
        finally:
            self._conn.close()
            self._conn = None
        return False


class StorageHandle:
    """An Optuna storage plus the lock that serialises the trial-budget check and ask."""

    def __init__(self, spec: str):
        self.spec = spec
        self.display = _mask(spec)
        self.kind, self._lock_base, self._engine = self._classify(spec)
        self.storage = None

    @staticmethod
    def _classify(spec: str):
        if "://" not in spec:
            p = Path(spec).expanduser()
            if p.suffix in (".db", ".sqlite", ".sqlite3"):
                raise ConfigError(f"--storage {spec}: looks like an SQLite file; pass "
                                  f"sqlite:///{spec} for an RDB store, or a .log path for a "
                                  "journal file")
            return "journal", p.resolve(), None
        scheme = spec.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme == "sqlite":
            path = spec[len("sqlite:///"):] if spec.startswith("sqlite:///") else ""
            return "rdb", (Path(path).expanduser().resolve() if path and path != ":memory:"
                           else None), None
        if scheme in ("postgresql", "postgres", "mysql"):
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool
            return "rdb", None, create_engine(_driver_url(spec), poolclass=NullPool)
        return "rdb", None, None

    def lock(self, purpose: str, study_name: str = "") -> Any:
        """``flock`` on the journal / SQLite file itself (no side files; independent of the
        journal's own lock and of SQLite's byte-range locks), or a database-held lock."""
        if self._engine is not None:
            return _DbLock(self._engine, f"persrv-bench:{purpose}:{study_name}")
        if self._lock_base is not None:
            return _FileLock(self._lock_base)
        return _NullLock()

    @property
    def exact_budget(self) -> bool:
        return self._engine is not None or self._lock_base is not None

    def open(self):
        """The Optuna storage (created under the init lock: a fresh RDB's schema once)."""
        import optuna
        if self.storage is not None:
            return self.storage
        with self.lock("init"):
            if self.kind == "journal":
                from optuna.storages import JournalStorage
                from optuna.storages.journal import JournalFileBackend
                self._lock_base.parent.mkdir(parents=True, exist_ok=True)
                self.storage = JournalStorage(JournalFileBackend(str(self._lock_base)))
            else:
                url = _driver_url(self.spec)
                if self._lock_base is not None:
                    self._lock_base.parent.mkdir(parents=True, exist_ok=True)
                self.storage = optuna.storages.RDBStorage(url)
        return self.storage

    def hash(self) -> str:
        """Identifies the storage in MLflow tags without its credentials."""
        base = str(self._lock_base) if self._lock_base is not None else self.display
        return hashlib.sha256(base.encode()).hexdigest()[:12]


def _driver_url(url: str) -> str:
    """``postgres://`` and a driver-less ``postgresql://`` get a driver that is installed:
    SQLAlchemy 2.1 defaults to psycopg 3, while psycopg2(-binary) is what we depend on."""
    import importlib.util
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _mask(text: Any) -> str:
    from bench.tracking import mask_credentials
    return mask_credentials(str(text))


# ---------------------------------------------------------------------------- the session

def resolve_target(space: SearchSpace, cfg: ExperimentConfig) -> RetrieverSpec:
    """The retriever a space tunes: a configured label, else the one configured retriever of that
    registered name, else the registered name with no base params; without ``retriever:`` the
    config's only retriever, or the one labelled persrv."""
    from bench.registry import registry
    labels = {s.display: s for s in cfg.retrievers}
    name = space.retriever
    if name is None:
        if len(cfg.retrievers) == 1:
            return cfg.retrievers[0]
        if "persrv" in labels:
            return labels["persrv"]
        raise ConfigError(f"{space.source}: no `retriever:`; name one of the config's "
                          f"retrievers ({', '.join(labels)}) or a registered retriever")
    if name in labels:
        return labels[name]
    same = [s for s in cfg.retrievers if s.name == name]
    if len(same) == 1:  # configured under another label: keep its base parameters
        return same[0]
    if name in registry():
        return RetrieverSpec(name=name)
    raise ConfigError(f"{space.source}: retriever: {name!r} is neither a retriever of the "
                      f"experiment config ({', '.join(labels)}) nor a registered retriever "
                      f"({', '.join(registry())})")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class SweepSession:
    """Per-process state shared by every trial: data, features per encoder, fitted bases."""

    def __init__(self, cfg: ExperimentConfig, spec: RetrieverSpec, ks: list[int], depth: int):
        from bench.registry import get_retriever_class
        from bench.runner import prepare
        self.cfg = cfg
        self.spec = spec
        self.cls = get_retriever_class(spec.name)
        self.ks = ks
        self.depth = depth
        self.val_cfg = cfg.model_copy(update={"eval_split": "validation"})
        self.ds, self.splits, self.requests, self.view, self.feature_report = prepare(self.val_cfg)
        self._resolved_encoder = (self.feature_report or {}).get("encoder")
        self._views: dict[str, Any] = {self._features_key({}): self.view}
        self._bases: dict[str, Any] = {}
        self.base_fits = 0

    # -------------------------------------------------------------------------- features
    def _effective_features(self, overrides: dict[str, Any]) -> dict[str, Any]:
        feats = copy.deepcopy(self.cfg.features.raw())
        for key, value in overrides.items():
            if key == "encoder_params":
                merged = dict(feats.get("encoder_params") or {})
                merged.update(value)
                feats["encoder_params"] = merged
            else:
                feats[key] = value
        return feats

    def _features_key(self, overrides: dict[str, Any]) -> str:
        """The features a view is built with, normalised: defaults filled in, and ``auto``
        replaced by the encoder it resolved to for this dataset, so a trial asking for the
        encoder the config already uses gets the shared base view and base retriever."""
        from bench.features.config import FeaturesConfig
        feats = self._effective_features(overrides)
        try:
            norm = FeaturesConfig.model_validate(feats).model_dump(mode="json")
        except Exception:
            norm = feats
        if norm.get("encoder") == "auto":
            norm["encoder"] = self._resolved_encoder
        return json.dumps(norm, sort_keys=True, default=str)

    def view_for(self, overrides: dict[str, Any], base_view=None, ds=None):
        """A TrainView with the features of ``overrides`` (embeddings from the cache after the
        first time; one view per encoder setting per process)."""
        from bench.retrieval import leak_safe_view
        from bench.runner import attach_configured_features
        base_view = base_view or self.view
        ds = ds or self.ds
        key = self._features_key(overrides)
        if base_view is self.view and key in self._views:
            return self._views[key]
        if key == self._features_key({}):
            return base_view
        stickers, embeddings, _ = attach_configured_features(ds, self._effective_features(
            overrides))
        view = leak_safe_view(stickers, base_view.clicks, meta=base_view.meta,
                              root=base_view.root, embeddings=embeddings, cache=base_view.cache,
                              seed=base_view.seed)
        if base_view is self.view:
            self._views[key] = view
        return view

    # ------------------------------------------------------------------------ retrievers
    def retriever(self, rparams: dict[str, Any], features: dict[str, Any]):
        from bench.registry import make_retriever
        view = self.view_for(features)
        if hasattr(self.cls, "with_params"):
            key = self._features_key(features)
            base = self._bases.get(key)
            if base is None:
                base = make_retriever(self.spec.name, dict(self.spec.params))
                base.fit(view)
                self.base_fits += 1
                self._bases[key] = base
            return base.with_params(**rparams) if rparams else base
        retriever = make_retriever(self.spec.name, {**self.spec.params, **rparams})
        retriever.fit(view)
        return retriever

    def evaluate(self, rparams: dict[str, Any], features: dict[str, Any]) -> dict[str, float]:
        """Macro metrics on the validation requests."""
        from bench.metrics import evaluate_run
        from bench.retrieval import Run, iter_batches
        retriever = self.retriever(rparams, features)
        run = Run(name=self.spec.display)
        reqs = self.requests.requests
        for batch in iter_batches(reqs, self.cfg.batch_size):
            part = retriever.search(list(batch), self.depth)
            for req in batch:
                run[req] = list(part.results.get(req, []))[:self.depth]
        _, macro, _ = evaluate_run(run, self.requests, self.ks)
        return macro


# ---------------------------------------------------------------------------- MLflow runs

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

    def _filter(self) -> str:
        return (f"tags.`persrv.kind` = 'sweep' and tags.`optuna.study_name` = "
                f"'{self.study_name}' and tags.`optuna.storage_hash` = '{self.storage_hash}'")

    def _candidates(self) -> list:
        client = self.tracker.client
        exp_id = self.tracker.experiment_id(self.experiment)
        runs = client.search_runs([exp_id], self._filter(), max_results=200)
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def ensure(self, tags: dict[str, Any], params: dict[str, Any]) -> str:
        runs = self._candidates()
        if not runs:
            self.own = self.tracker.start_run(self.experiment, run_name=f"sweep-{self.study_name}",
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
                self.tracker.set_tags(child, {"mlflow.parentRunId": first})
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


# ------------------------------------------------------------------------------ the driver

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


class _Heartbeat:
    def __init__(self, trial, interval: float):
        self.trial = trial
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.trial.set_user_attr("persrv.heartbeat", time.time())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        return False


def _fail_stale(study, storage, stale_after: float, echo) -> None:
    from optuna.trial import TrialState
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("persrv.heartbeat")
        last = float(beat) if beat is not None else (
            t.datetime_start.timestamp() if t.datetime_start else now)
        if now - last > stale_after:
            with contextlib.suppress(Exception):
                storage.set_trial_user_attr(t._trial_id, "error",
                                            f"abandoned: no heartbeat for {now - last:.0f}s")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                echo(f"trial {t.number}: abandoned by its worker (no heartbeat for "
                     f"{now - last:.0f}s); marked FAIL")


def _counted(study) -> tuple[int, int]:
    """(trials counted toward the budget: finished + running, running)."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                      TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials), running


def _next_grid_point(study, points: list[dict[str, Any]], order: list[int]) -> int | None:
    taken = set()
    for t in study.get_trials(deepcopy=False):
        idx = t.user_attrs.get("persrv.grid_point")
        if idx is not None:
            taken.add(int(idx))
        elif t.params:
            with contextlib.suppress(ValueError):
                taken.add(points.index(dict(t.params)))
    return next((i for i in order if i not in taken), None)


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
    from optuna.trial import TrialState

    from bench.metrics import METRICS
    from bench.tracking import check_reachable, git_commit, resolve_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(space, (str, Path)):
        space = load_space(space)
    elif isinstance(space, dict):
        space = parse_space(space)
    spec = resolve_target(space, cfg)
    from bench.registry import get_retriever_class, make_retriever, param_specs
    space.check_names(spec.name, param_specs(get_retriever_class(spec.name)))
    make_retriever(spec.name, dict(spec.params))  # the base parameters, before any work
    n_trials = n_trials or space.n_trials
    if not n_trials or n_trials < 1:
        raise ConfigError("the number of trials is missing: pass --n-trials N (or set n_trials "
                          "in the space file)")
    sampler_kind = sampler or space.sampler or "tpe"
    seed = cfg.seed if seed is None else int(seed)
    grid_points = space.grid_points() if sampler_kind == "grid" else None
    if study_name is None:
        stem = Path(space.source).stem if space.source != "space" else "space"
        study_name = f"{cfg.name}-{stem}"
    if any(c in study_name for c in "'`\"\\"):
        raise ConfigError(f"--study-name {study_name!r}: quotes and backslashes are not allowed")

    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri) if cfg.tracking.enabled else None
    if uri:
        check_reachable(uri)
    handle = StorageHandle(storage or default_storage(uri))
    if not handle.exact_budget:
        echo(f"note: storage {handle.display} has no lock: concurrent workers may overshoot "
             f"--n-trials by up to one trial each")
    ostorage = handle.open()
    key = _config_key(cfg, spec, space)
    with handle.lock("init", study_name):
        study = optuna.create_study(storage=ostorage, study_name=study_name,
                                    direction=space.direction, load_if_exists=True)
        have = study.user_attrs.get(ATTR_KEY)
        if have is None:
            study.set_user_attr(ATTR_KEY, key)
            study.set_user_attr("persrv.objective", space.objective_name)
            study.set_user_attr("persrv.space", space.source)
            study.set_user_attr("persrv.retriever", spec.display)
        elif have != key:
            raise ConfigError(f"study {study_name!r} in {handle.display} was made with another "
                              f"space or experiment config (key {have}, now {key}); pass a new "
                              "--study-name, or the same space and config to resume it")
    if study.direction.name.lower() != space.direction:
        raise ConfigError(f"study {study_name!r} {study.direction.name.lower()}s; the space "
                          f"says {space.direction}")

    done, _ = _counted(study)
    echo(f"study {study_name!r} ({handle.display}): {done} trial(s) so far, target "
         f"{n_trials} in total; sampler {sampler_kind}, seed {seed}")
    ks = sorted(set(cfg.ks) | {space.k})
    depth = max(ks)
    session = SweepSession(cfg, spec, ks, depth)
    ds = session.ds
    if len(session.requests) == 0:
        raise BenchError(f"dataset {ds.name}: the validation split has no requests (users need "
                         f"at least {cfg.split.min_train_groups + cfg.split.val_groups + cfg.split.test_groups} "
                         "click-groups and split.val_groups >= 1)")
    echo(f"dataset {ds.name} ({ds.fingerprint}): {len(session.requests)} validation requests "
         f"from {len(set(session.requests.users.values()))} users; tuning {spec.display} "
         f"({spec.name}) on {space.objective_name}")
    experiment = cfg.tracking.experiment or ds.name
    folder = Path(output_dir or cfg.output_dir) / f"sweep-{study_name}"
    folder.mkdir(parents=True, exist_ok=True)

    tracker, study_run = _start_tracking(uri, experiment, study_name, handle, echo)
    if study_run is not None:
        try:
            (folder / "space.yaml").write_text(_dump_yaml(space.raw), encoding="utf-8")
            study_run.ensure(tags={
                "persrv.kind": "sweep", "optuna.study_name": study_name,
                "optuna.storage": handle.display, "optuna.storage_hash": handle.hash(),
                "optuna.direction": space.direction, "optuna.sampler": sampler_kind,
                "mlflow.source.git.commit": git_commit() or "unknown",
                "dataset.name": ds.name, "dataset.fingerprint": ds.fingerprint,
                "dataset.simulated_users": str(bool(ds.meta.get("simulator"))),
                "config.hash": cfg.config_hash(), "sweep.key": key,
                "sweep.space": space.source, "eval_split": "validation",
            }, params={
                "retriever": spec.name, "retriever_label": spec.display,
                "base_params": dict(spec.params), "objective": space.objective_name,
                "direction": space.direction, "space": _flat_space(space),
                "features": cfg.features.raw(), "split": cfg.split.model_dump(),
                "dataset": cfg.dataset.model_dump(mode="json"),
            })
            tracker.log_artifact(study_run.run_id, folder / "space.yaml")
            tracker.set_tags(study_run.run_id, {"optuna.n_trials_target": n_trials})
            study.set_user_attr(ATTR_RUN, study_run.run_id)
        except Exception as exc:
            echo(f"warning: MLflow logging failed ({type(exc).__name__}: {_mask(exc)[:300]}); "
                 "continuing without it")
            tracker, study_run = None, None

    order = list(range(len(grid_points or [])))
    if grid_points:
        import random
        random.Random(seed).shuffle(order)
        echo(f"grid: {len(grid_points)} point(s)")
    ran = 0
    exhausted = False
    while True:
        with handle.lock("budget", study_name):
            _fail_stale(study, ostorage, stale_after, echo)
            counted, _ = _counted(study)
            if counted >= n_trials:
                break
            number = len(study.get_trials(deepcopy=False))
            study.sampler = make_sampler(sampler_kind, _trial_seed(seed, number), space)
            if grid_points is not None:
                waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if not waiting:
                    idx = _next_grid_point(study, grid_points, order)
                    if idx is None:
                        exhausted = True
                        break
                    study.enqueue_trial(grid_points[idx], user_attrs={"persrv.grid_point": idx})
            trial = study.ask()
        ran += 1
        _run_trial(study, trial, space, session, tracker, study_run, echo, heartbeat, spec)
    if exhausted:
        echo(f"grid exhausted: every one of its {len(grid_points)} point(s) has a trial")

    result = SweepResult(study_name=study_name, storage=handle.display, n_trials=n_trials,
                         states={}, ran=ran, objective=space.objective_name,
                         direction=space.direction, experiment=experiment if tracker else None,
                         study_run_id=study_run.parent() if study_run else None, folder=folder,
                         base_fits=session.base_fits)
    with handle.lock("budget", study_name):
        _fail_stale(study, ostorage, stale_after, echo)
        _, running = _counted(study)
        claim = None
        if running:
            echo(f"{running} trial(s) still running in other workers; the last worker to finish "
                 "writes the plots and runs the best parameters on test")
        else:
            claim = _claim_final(study)
    _fill_result(result, study, space)
    if claim is None:
        _print_summary(result, echo)
        return result

    result.finalized = True
    trials_df = study.trials_dataframe()
    trials_df.to_csv(folder / "trials.csv", index=False)
    result.plots = write_plots(study, space, folder / "plots")
    best_json = {"study": study_name, "objective": space.objective_name,
                 "best_value": result.best_value, "best_trial": result.best_trial,
                 "params": result.best_params, "features": result.best_features}
    if result.best_trial is not None and final_test:
        previous = claim.get("previous") or {}
        if previous.get("trial") == result.best_trial and previous.get("metrics"):
            result.test_metrics = previous["metrics"]
            result.test_run_id = previous.get("run_id")
            echo(f"best trial {result.best_trial} was already evaluated on test (run "
                 f"{result.test_run_id})")
        else:
            try:
                result.test_metrics, result.test_run_id = _best_on_test(
                    session, result, folder, tracker, study_run, echo)
            except Exception as exc:
                echo(f"error: the best parameters failed on test ({type(exc).__name__}: "
                     f"{_mask(exc)[:500]})")
                log.debug("best-on-test failed", exc_info=True)
        best_json["test"] = result.test_metrics
        final = {"trial": result.best_trial, "metrics": result.test_metrics,
                 "run_id": result.test_run_id}
    else:
        if result.best_trial is None:
            echo("no trial completed: nothing to evaluate on test")
        final = claim["previous"]
    with contextlib.suppress(Exception):
        study.set_user_attr(ATTR_FINAL, {**final, "state": "done"})
    (folder / "best.json").write_text(json.dumps(best_json, indent=2, default=str) + "\n",
                                      encoding="utf-8")
    if tracker is not None and study_run is not None:
        try:
            parent = study_run.parent()
            tracker.log_artifacts(parent, folder / "plots", "plots")
            tracker.log_artifact(parent, folder / "trials.csv")
            tracker.log_artifact(parent, folder / "best.json")
            tracker.set_tags(parent, {"optuna.n_trials": sum(result.states.values()),
                                      **{f"optuna.n_{k.lower()}": v
                                         for k, v in result.states.items()}})
            if result.best_trial is not None:
                tracker.set_tags(parent, {"best.trial": result.best_trial,
                                          **{f"best.{k}": v for k, v in
                                             {**result.best_params,
                                              **_flat_features(result.best_features)}.items()}})
                metrics = {"best_value": result.best_value,
                           f"best_val_{space.objective_name}": result.best_value}
                if result.test_metrics:
                    metrics.update({f"test_{k}": v for k, v in result.test_metrics.items()
                                    if k.split("_at_")[0] in METRICS})
                tracker.log_metrics(parent, metrics)
            tracker.end_run(parent, "FINISHED")
        except Exception as exc:
            echo(f"warning: MLflow logging failed ({type(exc).__name__}: {_mask(exc)[:300]})")
    _print_summary(result, echo)
    return result


def _claim_final(study) -> dict | None:
    """Under the budget lock: mark the study as being finalised by this worker (None when
    another worker is doing it right now). Returns what the last finalisation recorded."""
    prev = study.user_attrs.get(ATTR_FINAL)
    prev = prev if isinstance(prev, dict) else {}
    if prev.get("state") == "claimed" and time.time() - float(prev.get("at", 0)) < STALE_SECONDS:
        return None
    done = {k: prev.get(k) for k in ("trial", "metrics", "run_id")}
    study.set_user_attr(ATTR_FINAL, {**done, "state": "claimed", "pid": os.getpid(),
                                     "at": time.time()})
    return {"previous": done}


def _fill_result(result: SweepResult, study, space: SearchSpace) -> None:
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    result.states = states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.best_value = float(best.value)
        result.best_trial = best.number
        try:
            result.best_params, result.best_features = space.from_optuna(best.params)
        except KeyError:
            result.best_params = dict(best.user_attrs.get("retriever_params") or {})
            result.best_features = dict(best.user_attrs.get("features") or {})


def _print_summary(result: SweepResult, echo) -> None:
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.states.items()))
    echo(f"\nstudy {result.study_name}: {sum(result.states.values())} trial(s) ({states}); this "
         f"worker ran {result.ran}")
    if result.best_trial is not None:
        params = _show_params({**result.best_params, **_flat_features(result.best_features)})
        echo(f"best: trial {result.best_trial}, validation {result.objective} = "
             f"{result.best_value:.4f}  ({params})")
    if result.test_metrics:
        head = ", ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items()
                         if k.startswith(("m_mrr_at", "mrr_at", "recall_at", "ndcg_at"))
                         and k.endswith(f"_at_{result.objective.rsplit('_at_', 1)[1]}"))
        echo(f"best on test: {head}")
    if result.study_run_id:
        echo(f"MLflow: experiment {result.experiment!r}, study run {result.study_run_id}")
    if result.folder:
        echo(f"files: {result.folder}")


def _show_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def _flat_features(features: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in features.items():
        if isinstance(v, dict):
            out.update({f"features.{k}.{k2}": v2 for k2, v2 in v.items()})
        else:
            out[f"features.{k}"] = v
    return out


def _flat_space(space: SearchSpace) -> dict[str, str]:
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


def _dump_yaml(raw: dict) -> str:
    import yaml
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def _start_tracking(uri: str | None, experiment: str, study_name: str, handle: StorageHandle,
                    echo):
    if not uri:
        return None, None
    from bench.tracking import Tracker
    try:
        lock = _NullLock()
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = _FileLock(db)
        with lock:  # a fresh SQLite store is migrated by one process at a time
            tracker = Tracker(uri)
            tracker.client.search_experiments(max_results=1)
            tracker.experiment_id(experiment)
    except Exception as exc:
        echo(f"warning: MLflow unavailable ({type(exc).__name__}: {_mask(exc)[:300]}); "
             "trials are recorded in Optuna only")
        return None, None
    return tracker, StudyRun(tracker, experiment, study_name, handle.hash(), echo)


def _run_trial(study, trial, space: SearchSpace, session: SweepSession, tracker, study_run,
               echo, heartbeat: float, spec: RetrieverSpec) -> None:
    from optuna.trial import TrialState
    t0 = time.perf_counter()
    rparams: dict[str, Any] = {}
    features: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    error = None
    value = None
    with _Heartbeat(trial, heartbeat):
        try:
            rparams, features = space.suggest(trial)
            trial.set_user_attr("retriever_params", _jsonable(rparams))
            if features:
                trial.set_user_attr("features", _jsonable(features))
            metrics = session.evaluate(rparams, features)
            value = float(metrics[space.objective_name])
            if not math.isfinite(value):
                raise ValueError(f"{space.objective_name} is {value}")
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {_mask(exc)}"
            log.debug("trial %d failed", trial.number, exc_info=True)
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", error[:2000])
                trial.set_user_attr("traceback", _mask(traceback.format_exc())[-4000:])
    duration = time.perf_counter() - t0
    if error is None:
        study.tell(trial, value)
        state = "COMPLETE"
    else:
        study.tell(trial, state=TrialState.FAIL)
        state = "FAIL"
    shown = _show_params({**rparams, **_flat_features(features)})
    if error is None:
        try:
            best = study.best_trial
            best_txt = f" (best {best.value:.4f} #{best.number})"
        except ValueError:
            best_txt = ""
        echo(f"trial {trial.number}: {space.objective_name}={value:.4f}{best_txt}  {shown}  "
             f"[{duration:.1f}s]")
    else:
        echo(f"trial {trial.number} FAILED: {error[:300]}  {shown}  [{duration:.1f}s]")
    if tracker is None or study_run is None:
        return
    try:
        parent = study_run.parent()
        run_id = tracker.start_run(study_run.experiment, run_name=f"trial-{trial.number}",
                                   parent_run_id=parent, tags={
                                       "persrv.kind": "trial",
                                       "optuna.study_name": study.study_name,
                                       "optuna.trial_number": trial.number,
                                       "optuna.trial_state": state,
                                       "retriever.name": spec.name, "eval_split": "validation",
                                       **({"error": error[:5000]} if error else {}),
                                   })
        study_run.children.append(run_id)
        tracker.log_params(run_id, {**rparams, **_flat_features(features)})
        out = {"duration_seconds": duration, "trial_number": trial.number}
        if error is None:
            out.update(metrics)
            out["objective"] = value
        tracker.log_metrics(run_id, out)
        tracker.end_run(run_id, "FINISHED" if error is None else "FAILED")
    except Exception as exc:
        echo(f"warning: MLflow logging of trial {trial.number} failed ({type(exc).__name__}: "
             f"{_mask(exc)[:300]})")


def _best_on_test(session: SweepSession, result: SweepResult, folder: Path, tracker, study_run,
                  echo) -> tuple[dict[str, float], str | None]:
    """Fit the best parameters on train + validation, evaluate once on test, log a child run."""
    from bench.runner import evaluate_retriever, prepare
    cfg = session.cfg.model_copy(update={"eval_split": "test"})
    ds, _, requests, view, _ = prepare(cfg)
    if len(requests) == 0:
        raise BenchError("the test split has no requests")
    view = session.view_for(result.best_features, base_view=view, ds=ds)
    spec = RetrieverSpec(name=session.spec.name, label="best-on-test",
                         params={**session.spec.params, **result.best_params})
    sub = folder / "best-on-test"
    test_cfg = cfg.model_copy(update={"ks": session.ks})
    res = evaluate_retriever(spec, view, requests, test_cfg, sub)
    run_id = None
    if tracker is not None and study_run is not None:
        parent = study_run.parent()
        run_id = tracker.start_run(study_run.experiment, run_name="best-on-test",
                                   parent_run_id=parent, tags={
                                       "persrv.kind": "best-on-test",
                                       "optuna.study_name": result.study_name,
                                       "optuna.best_trial": result.best_trial,
                                       "retriever.name": spec.name, "eval_split": "test",
                                       "dataset.name": ds.name,
                                       "dataset.fingerprint": ds.fingerprint})
        tracker.log_params(run_id, {"retriever": spec.name, **res.params,
                                    **_flat_features(result.best_features)})
        metrics = dict(res.macro)
        metrics.update({f"micro_{k}": v for k, v in res.micro.items()})
        metrics.update({"fit_seconds": res.fit_seconds, "search_seconds": res.search_seconds,
                        f"val_{result.objective}": result.best_value})
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifacts(run_id, sub)
        tracker.end_run(run_id, "FINISHED")
    echo(f"best parameters on test ({len(requests)} requests, fitted on train + validation): "
         f"{result.objective} = {res.macro.get(result.objective, float('nan')):.4f}")
    return dict(res.macro), run_id


# ------------------------------------------------------------------------------------ plots

def write_plots(study, space: SearchSpace, out: Path) -> list[Path]:
    """PNGs: optimisation history, parameter importances (>= 2 complete trials), objective
    against n_clusters per clustering algorithm (when the space tunes n_clusters)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return written
    from optuna.visualization import matplotlib as ovm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ax = ovm.plot_optimization_history(study, target_name=space.objective_name)
            written.append(_save(ax.figure, out / "optimization_history.png"))
        except Exception as exc:
            log.warning("optimisation-history plot skipped: %s", exc)
        if len(complete) >= 2:
            try:
                ax = ovm.plot_param_importances(study, target_name=space.objective_name)
                written.append(_save(ax.figure, out / "param_importances.png"))
            except Exception as exc:  # e.g. every parameter constant
                log.info("parameter-importance plot skipped: %s", exc)
        plt.close("all")
    path = plot_objective_vs(study, space, "n_clusters", out / "objective_vs_n_clusters.png")
    if path is not None:
        written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.set_size_inches(7.5, 4.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_objective_vs(study, space: SearchSpace, param: str, path: Path) -> Path | None:
    """Objective against one integer parameter, one series per clustering algorithm (scatter of
    every trial and a line through the best per value); algorithms without that parameter
    (hdbscan) appear as a dashed line at their best value. None when the space lacks it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    df = study.trials_dataframe(attrs=("number", "value", "state", "params"))
    if df.empty or "value" not in df:
        return None
    df = df[df["state"] == "COMPLETE"]
    specs = [s for s in space.walk() if s.name == param and s.kind != "value"]
    if not specs or df.empty:
        return None
    algo_col = next((f"params_{s.optuna_name}" for s in space.params
                     if s.name == "cluster_algorithm" and s.kind == "choices"), None)
    fixed_algo = next((str(s.value) for s in space.walk() if s.name == "cluster_algorithm"
                       and s.kind == "value"), None)
    cols = [f"params_{s.optuna_name}" for s in specs if f"params_{s.optuna_name}" in df]
    if not cols:
        return None
    better = max if space.direction == "maximize" else min
    rows = []   # (algorithm, param value, objective)
    others: dict[str, float] = {}  # algorithm without the parameter -> best objective
    for _, r in df.iterrows():
        hit = next((s for s in specs if f"params_{s.optuna_name}" in df
                    and r[f"params_{s.optuna_name}"] == r[f"params_{s.optuna_name}"]), None)
        if hit is not None:
            if hit.branch:
                group = str(hit.branch[-1][1])
            elif algo_col and algo_col in df:
                group = str(r[algo_col])
            else:
                group = fixed_algo or "all"
            rows.append((group, int(r[f"params_{hit.optuna_name}"]), float(r["value"])))
        elif algo_col and algo_col in df:
            g = str(r[algo_col])
            others[g] = better(others[g], float(r["value"])) if g in others else float(r["value"])
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    groups = sorted({g for g, _, _ in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        pts = sorted((x, y) for gg, x, y in rows if gg == g)
        c = colors[i % len(colors)]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], color=c, alpha=0.5, s=18)
        best: dict[int, float] = {}
        for x, y in pts:
            best[x] = better(best[x], y) if x in best else y
        xs = sorted(best)
        ax.plot(xs, [best[x] for x in xs], color=c, marker="o", label=g)
    for j, (g, v) in enumerate(sorted(others.items())):
        ax.axhline(v, linestyle="--", color=colors[(len(groups) + j) % len(colors)],
                   label=f"{g} (best, no {param})")
    ax.set_xlabel(param)
    ax.set_ylabel(f"{space.objective_name} (validation)")
    ax.set_title(f"{space.objective_name} against {param} per algorithm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
