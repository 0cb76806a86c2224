"""Everything MLflow (DESIGN §8): tracking URI, credential masking, parent/child runs, batched logging.

MLflow is imported lazily. Runs are created with ``MlflowClient`` (not the fluent API), so nested
runs never depend on global state or on ``MLFLOW_RUN_ID`` leaking into child runs; under
``mlflow run`` the parent reuses the run MLflow Projects created.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

from bench.errors import BenchError
from bench.tracking.schema import KIND, KIND_LAUNCHER

log = logging.getLogger(__name__)

from bench.secrets import is_secret_name, mask_credentials, register_url  # noqa: F401 (re-exported)

#: Bounds on MLflow's HTTP client (unless the user set them): a dead server is noticed in
#: seconds, not after minutes of retries with exponential back-off.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingError(BenchError):
    """The tracking server is unreachable or refused a request."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default: ``sqlite:///<cwd>/mlflow.db``
    (one with credentials also silences MLflow's own URL lines: :func:`quiet_mlflow_urls`)."""
    resolved = uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    register_url(resolved)
    quiet_mlflow_urls(resolved)
    return resolved


def quiet_mlflow_urls(uri: str | None) -> None:
    """MLflow prints "View run <name> at: <server url>" (and the experiment's URL) to stdout
    whenever a run ends on an HTTP server, credentials included; when ``uri`` holds credentials
    those lines are turned off (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``). The harness prints
    the masked URI itself."""
    if uri and mask_credentials(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def bound_http_retries() -> None:
    """Set :data:`HTTP_LIMITS` in the environment where the user has not (MLflow reads them per
    request): MLflow's defaults retry 7 times with back-off 2 and a 120 s timeout."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any expensive work, if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit
    parts = urlsplit(uri)
    health = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}" \
             f"{parts.path.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout):  # noqa: S310 (user-given server)
            return
    except urllib.error.HTTPError:
        return  # it answered; auth or path issues surface on the first real call
    except Exception as exc:
        raise TrackingError(f"MLflow tracking server {mask_credentials(uri)} is unreachable "
                            f"({type(exc).__name__}: {getattr(exc, 'reason', exc)}). Start it, "
                            "fix --tracking-uri, or unset MLFLOW_TRACKING_URI to use the local "
                            "SQLite store.") from None


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``a.b`` keys with string values (masked, truncated to MLflow's limit)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else repr(value) if not isinstance(
                value, (int, float, bool, type(None))) else str(value)
            if value is not None and value != "" and is_secret_name(key):
                text = "***"
            out[name] = mask_credentials(text)[:6000]
    return out


class Tracker:
    """A thin, batched MLflow writer. ``Tracker(None)`` (tracking disabled) does nothing."""

    def __init__(self, uri: str | None):
        self.uri = uri
        self._client = None
        if uri is not None:
            register_url(uri)
            quiet_mlflow_urls(uri)
            bound_http_retries()
            import mlflow
            from mlflow.tracking import MlflowClient
            mlflow.set_tracking_uri(uri)
            with self._migration_lock():  # MlflowClient() opens the store: it migrates there
                self._client = MlflowClient(tracking_uri=uri)

    def _migration_lock(self):
        """A fresh SQLite store is created (schema migration) under a file lock beside it:
        two first runs at once otherwise race in alembic and one run is lost."""
        import contextlib
        if not str(self.uri).startswith("sqlite:///"):
            return contextlib.nullcontext()
        from filelock import FileLock
        db = Path(str(self.uri)[len("sqlite:///"):])
        if not db.parent.is_dir():
            return contextlib.nullcontext()  # MLflow names the problem on first use
        return FileLock(str(db) + ".lock", timeout=300)

    def mark_orphans(self, experiment: str) -> list[str]:
        """Parents of this host whose process is gone (``kill -9``) but which still say RUNNING
        are set to KILLED (and their run folder's status.json, if it says running). Returns
        their ids."""
        if not self.enabled:
            return []
        import json

        from bench.processes import worker_alive
        from bench.run_status import read_status, write_status
        from bench.tracking.schema import FOLDER, WORKER
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        found = []
        runs = self._client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'",
                                        max_results=200)
        for run in runs:
            tags = run.data.tags
            try:
                identity = json.loads(tags.get(WORKER, "null"))
            except ValueError:
                continue
            if worker_alive(identity) is not False:  # alive, or of another host
                continue
            self._client.set_terminated(run.info.run_id, status="KILLED")
            folder = tags.get(FOLDER)
            if folder and read_status(folder) == "running":
                try:
                    write_status(folder, "killed", note="process gone; marked by a later run")
                except OSError:
                    pass
            found.append(run.info.run_id)
        return found

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def client(self):
        return self._client

    def experiment_id(self, name: str) -> str | None:
        if not self.enabled:
            return None
        from bench.tracking.schema import experiment_tags
        exp = self._client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self._client.restore_experiment(exp.experiment_id)
            for key, value in experiment_tags().items():
                if exp.tags.get(key) != value:  # older stores: open on the training-runs table
                    self._client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id
        try:
            return self._client.create_experiment(name, artifact_location=self._artifact_root(name),
                                                  tags=experiment_tags())
        except Exception:  # created concurrently
            return self._client.get_experiment_by_name(name).experiment_id

    def _artifact_root(self, experiment: str) -> str | None:
        """Artifacts of a local SQLite store go beside the database file, not into the CWD."""
        if not str(self.uri).startswith("sqlite:///"):
            return None
        db = Path(str(self.uri)[len("sqlite:///"):])
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
        return (db.resolve().parent / "mlruns" / safe).as_uri()

    def start_run(self, experiment: str, run_name: str, tags: dict[str, str] | None = None,
                  parent_run_id: str | None = None, reuse_env_run: bool = False,
                  start_time: float | None = None) -> str | None:
        """Create a run (``start_time``: seconds since the epoch, default now); returns its id.

        With ``reuse_env_run`` under ``mlflow run`` (``MLFLOW_RUN_ID`` set), the Projects run is
        adopted when it lives in ``experiment``; otherwise (MLflow put it in ``Default``) a new
        run is made in ``experiment`` and the Projects run is tagged as its launcher, so results
        always land in the dataset's experiment under a readable name."""
        if not self.enabled:
            return None
        tags = {k: mask_credentials(str(v))[:8000] for k, v in (tags or {}).items()}
        env_run = os.environ.get("MLFLOW_RUN_ID") if reuse_env_run else None
        if env_run:
            run = self._client.get_run(env_run)
            if run.info.experiment_id == self.experiment_id(experiment):
                self.set_tags(env_run, {**tags, "mlflow.runName": run_name})
                return env_run
        if parent_run_id:  # children live in their parent's experiment (the UI nests them there)
            exp_id = self._client.get_run(parent_run_id).info.experiment_id
            tags["mlflow.parentRunId"] = parent_run_id
        else:
            exp_id = self.experiment_id(experiment)
        started = int((start_time if start_time is not None else time.time()) * 1000)
        run = self._client.create_run(exp_id, run_name=run_name, tags=tags, start_time=started)
        if env_run:  # the mlflow-run launcher in another experiment points at the real run
            self.set_tags(env_run, {KIND: KIND_LAUNCHER, "persrv.run_id": run.info.run_id,
                                    "persrv.experiment": experiment,
                                    "mlflow.runName": f"{run_name} (launcher)"})
        return run.info.run_id

    def set_tags(self, run_id: str | None, tags: dict[str, Any]) -> None:
        if not self.enabled or not run_id or not tags:
            return
        from mlflow.entities import RunTag
        items = [RunTag(k, mask_credentials(str(v))[:8000]) for k, v in tags.items()]
        for chunk in _chunks(items, 100):
            self._client.log_batch(run_id, tags=chunk)

    def log_params(self, run_id: str | None, params: dict[str, Any]) -> None:
        if not self.enabled or not run_id or not params:
            return
        from mlflow.entities import Param
        items = [Param(k[:250], v) for k, v in flatten_params(params).items()]
        for chunk in _chunks(items, 100):
            self._client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        if not self.enabled or not run_id or not metrics:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for chunk in _chunks(items, 1000):
            self._client.log_batch(run_id, metrics=chunk)

    def log_series(self, run_id: str | None, series: dict[str, list[float]]) -> None:
        """Metrics with one value per step (training curves), in batches."""
        if not self.enabled or not run_id or not series:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, values in series.items()
                 for step, v in enumerate(values)]
        for chunk in _chunks(items, 1000):
            self._client.log_batch(run_id, metrics=chunk)

    def log_artifacts(self, run_id: str | None, local_dir: str | Path,
                      artifact_path: str | None = None) -> None:
        if not self.enabled or not run_id:
            return
        self._client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str | None, path: str | Path,
                     artifact_path: str | None = None) -> None:
        if not self.enabled or not run_id:
            return
        self._client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str | None, status: str = "FINISHED",
                end_time: float | None = None) -> None:
        """Mark a run ended (``end_time``: seconds since the epoch, default now)."""
        if not self.enabled or not run_id:
            return
        self._client.set_terminated(run_id, status=status, end_time=None if end_time is None
                                    else int(end_time * 1000))

    def log_dataset(self, run_id: str | None, frame: Any, *, name: str, digest: str,
                    source: str, context: str) -> None:
        """Record a dataset on a run (MLflow's Dataset column): ``frame`` is a small pandas
        summary of it (the schema is what MLflow shows), ``digest`` its fingerprint."""
        if not self.enabled or not run_id:
            return
        import warnings

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag
        with warnings.catch_warnings():
            # MLflow registers its local-path source class twice and warns on every dataset
            # that the path "can be interpreted in multiple ways" (both are the same class)
            warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in "
                                    "multiple ways", category=UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=mask_credentials(source), name=name,
                                              digest=digest[:36])
        self._client.log_inputs(run_id, datasets=[DatasetInput(
            dataset=dataset._to_mlflow_entity(),
            tags=[InputTag(key="mlflow.data.context", value=context)])])
