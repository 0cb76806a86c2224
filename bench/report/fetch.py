"""Fetching a benchmark's parent run and its retrievers' child runs from MLflow (a run folder)."""

from __future__ import annotations

import re
from pathlib import Path

from bench.report.names import RunNotFoundError


def read_parent_run(folder: str | Path) -> tuple[str | None, str | None]:
    """``(run id, tracking URI)`` from the runner's ``parent_run_id.txt``; the URI is None when
    absent or masked (then use --tracking-uri / $MLFLOW_TRACKING_URI)."""
    f = Path(folder) / "parent_run_id.txt"
    if not f.is_file():
        return None, None
    lines = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines()] + ["", ""]
    return lines[0] or None, (lines[1] if lines[1] and "***" not in lines[1] else None)


def fetch_run(run_id_or_experiment_name: str, tracking_uri: str | None = None,
              dest: str | Path | None = None, root: str | Path = "persrv-runs/fetched") -> Path:
    """Download a benchmark's parent-run artifacts and its children's into the run-folder layout.

    An experiment name means its most recent parent run (tag ``persrv.kind=benchmark``); a child
    run id means its parent. ``dest`` defaults to ``<root>/<parent run id>``. Errors:
    :class:`RunNotFoundError` (nothing matches), ``TrackingError`` (the store failed; URI masked).
    """
    from mlflow.tracking import MlflowClient

    from bench.tracking import TrackingError, mask_credentials, resolve_tracking_uri, schema
    uri = resolve_tracking_uri(tracking_uri)
    where = mask_credentials(uri)
    key = str(run_id_or_experiment_name)

    def call(fn, *args, missing_ok: bool = False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if missing_ok and getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST",
                                                                 "INVALID_PARAMETER_VALUE"):
                return None
            raise TrackingError(f"MLflow at {where}: {mask_credentials(str(exc))[:500]}") from None

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise RunNotFoundError(f"no MLflow store at {where}; pass --tracking-uri or set "
                               "MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    run = call(client.get_run, key, missing_ok=True) if re.fullmatch(r"[0-9a-fA-F]{8,64}", key) \
        else None
    if run is None:
        exp = call(client.get_experiment_by_name, key)
        if exp is None:
            known = [e.name for e in call(client.search_experiments, max_results=20)]
            raise RunNotFoundError(f"no MLflow run id or experiment named {key!r} at {where} "
                                   f"(experiments there: {', '.join(known) or 'none'})")
        runs = call(client.search_runs, [exp.experiment_id],
                    f"tags.`{schema.KIND}` = '{schema.KIND_BENCHMARK}'",
                    max_results=1, order_by=["attributes.start_time DESC"])
        if not runs:
            raise RunNotFoundError(f"experiment {key!r} at {where} has no benchmark run "
                                   "(tag persrv.kind=benchmark); run `persrv-bench run` first")
        run = runs[0]
    elif run.data.tags.get(schema.KIND) == schema.KIND_RETRIEVER and \
            schema.PARENT_RUN_ID in run.data.tags:
        run = call(client.get_run, run.data.tags[schema.PARENT_RUN_ID])
    run_id = run.info.run_id
    dest = Path(dest) if dest is not None else Path(root) / run_id
    dest.mkdir(parents=True, exist_ok=True)
    for info in call(client.list_artifacts, run_id):
        if info.path != "report":  # a previous report is rewritten, not fetched
            call(client.download_artifacts, run_id, info.path, str(dest))
    children = call(client.search_runs, [run.info.experiment_id],
                    f"tags.`{schema.PARENT_RUN_ID}` = '{run_id}'", max_results=5000)
    for child in children:
        label = child.data.tags.get(schema.RETRIEVER_LABEL) or child.info.run_name or \
            child.info.run_id
        sub = dest / "retrievers" / label
        sub.mkdir(parents=True, exist_ok=True)
        for info in call(client.list_artifacts, child.info.run_id):
            call(client.download_artifacts, child.info.run_id, info.path, str(sub))
    if not children:
        raise RunNotFoundError(f"run {run_id} at {where} has no child runs (retrievers); is it "
                               "a persrv-bench benchmark run?")
    (dest / "parent_run_id.txt").write_text(f"{run_id}\n{where}\n", encoding="utf-8")
    return dest
