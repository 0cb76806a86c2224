"""The MLflow schema (DESIGN §8): the one place that knows run names, tag keys and kinds.

Every writer (benchmark run, sweep, perf, VLM training) builds its tags here, so the names the UI
and ``persrv-bench report`` rely on are defined once. Metric names live in :mod:`bench.metrics`.

Kinds (tag ``persrv.kind``): ``benchmark`` (a ``run`` parent), ``retriever`` (its children),
``sweep`` (a study), ``trial`` and ``best-on-test`` (the study's children), ``perf``, ``vlm-train``,
``vlm-bench``, ``seed-group`` (``run --seeds``: the per-seed parents nest under it),
``launcher`` (an ``mlflow run`` shell run pointing at the real parent), ``calibration``
(``persrv-bench calibrate``: the dose-response table of a bed).
"""

from __future__ import annotations

from typing import Any

KIND = "persrv.kind"
KIND_BENCHMARK = "benchmark"
KIND_RETRIEVER = "retriever"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
KIND_BEST_ON_TEST = "best-on-test"
KIND_PERF = "perf"
KIND_VLM_TRAIN = "vlm-train"
KIND_VLM_BENCH = "vlm-bench"
KIND_CLIP_TRAIN = "clip-train"
KIND_SEED_GROUP = "seed-group"
KIND_LAUNCHER = "launcher"
KIND_CALIBRATION = "calibration"  #: ``persrv-bench calibrate``: one run per bed self-test

GIT_COMMIT = "mlflow.source.git.commit"
PARENT_RUN_ID = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
#: MLflow 3 opens an experiment with this tag on its training-runs table, not the GenAI page.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_VALUE = "custom_model_development"

DATASET_NAME = "dataset.name"
DATASET_FINGERPRINT = "dataset.fingerprint"
DATASET_SIMULATED = "dataset.simulated_users"
DATASET_PATH = "dataset.path"
CONFIG_HASH = "config.hash"
CONFIG_PATH = "config.path"
RETRIEVER_NAME = "retriever.name"
RETRIEVER_LABEL = "retriever.label"
BEST_RETRIEVER = "best_retriever"
#: The metric a run is ranked on (``m_mrr_at_<largest k>``) and, on children, the rank by it.
HEADLINE_METRIC = "headline_metric"
RANK = "rank"
#: MLflow's run description (markdown, shown on the run page and as a runs-table column).
NOTE = "mlflow.note.content"
#: The parent's leaderboard table (``MlflowClient.log_table``: the UI's artifact table view).
LEADERBOARD_FILE = "leaderboard.json"
STUDY_NAME = "optuna.study_name"
TRIAL_NUMBER = "optuna.trial_number"
TRIAL_STATE = "optuna.trial_state"
BEST_TRIAL = "optuna.best_trial"
EVAL_SPLIT = "eval_split"
FILL = "evaluation.fill"
#: How many evaluations of this split the dataset fingerprint has had (the run folder's ledger).
TEST_EVALUATIONS = "dataset.test_evaluations"
HOST = "persrv.host"
PID = "persrv.pid"
FOLDER = "persrv.folder"
WORKER = "persrv.worker"
ERROR = "error"
STORAGE = "optuna.storage"
STORAGE_HASH = "optuna.storage_hash"
DIRECTION = "optuna.direction"
SAMPLER = "optuna.sampler"
N_TRIALS_TARGET = "optuna.n_trials_target"
N_TRIALS = "optuna.n_trials"
SWEEP_KEY = "sweep.key"
SWEEP_SPACE = "sweep.space"
#: Study-run tags ``best.trial`` and ``best.<param>`` (the best trial's parameters).
BEST_PREFIX = "best."

#: Sweep study user attributes (stored in Optuna, not MLflow, but part of the same contract).
ATTR_BEST_ON_TEST = "persrv.best_on_test"
ATTR_STUDY_KEY = "persrv.study_key"
ATTR_MLFLOW_RUN = "persrv.mlflow_run_id"
ATTR_HEARTBEAT = "persrv.heartbeat"
ATTR_GRID_POINT = "persrv.grid_point"
ATTR_OBJECTIVE = "persrv.objective"
ATTR_SPACE = "persrv.space"
ATTR_RETRIEVER = "persrv.retriever"
#: Trial attribute: the worker running it (host, pid, process start time, pid namespace).
ATTR_WORKER = "persrv.worker"
ATTR_TRIAL_PARAMS = "retriever_params"
ATTR_TRIAL_FEATURES = "features"
ATTR_TRIAL_ERROR = "error"
ATTR_TRIAL_TRACEBACK = "traceback"


def experiment_tags() -> dict[str, str]:
    """Tags every experiment the harness creates carries."""
    return {EXPERIMENT_KIND: EXPERIMENT_KIND_VALUE}


def dataset_tags(ds: Any) -> dict[str, str]:
    """Name, fingerprint, whether users are simulated, and the resolved directory of a dataset."""
    meta = getattr(ds, "meta", None) or {}
    tags = {DATASET_NAME: str(ds.name), DATASET_FINGERPRINT: str(ds.fingerprint),
            DATASET_SIMULATED: str(bool(meta.get("simulator")))}
    root = getattr(ds, "root", None)
    if root is not None:
        tags[DATASET_PATH] = str(root)
    return tags


def error_tag(error: str | None) -> dict[str, str]:
    return {ERROR: error[:5000]} if error else {}


def parent_run_name(config_name: str, dataset: str, when: float | None = None,
                    short_id: str | None = None) -> str:
    """A benchmark parent's name, distinct per run: ``quickstart · synthetic · 12-07 02:41 ·
    3fa2`` (config, dataset, local start time, a short random id)."""
    import time
    import uuid
    stamp = time.strftime("%m-%d %H:%M", time.localtime(when))
    return f"{config_name} · {dataset} · {stamp} · {short_id or uuid.uuid4().hex[:4]}"


def process_tags(identity: dict[str, Any], folder: Any = None) -> dict[str, str]:
    """The writing process (a :func:`bench.processes.worker_identity`: host and pid readable,
    the whole identity as JSON) and its run folder; a later run marks the parent KILLED if that
    process is gone while the run still says RUNNING."""
    import json
    tags = {HOST: str(identity.get("host")), PID: str(identity.get("pid")),
            WORKER: json.dumps(identity, sort_keys=True)}
    if folder is not None:
        tags[FOLDER] = str(folder)
    return tags


def parent_tags(ds: Any, *, config_hash: str, config_path: str | None,
                git_commit: str | None) -> dict[str, str]:
    """Tags of a benchmark run's parent."""
    return {KIND: KIND_BENCHMARK, GIT_COMMIT: git_commit or "unknown", **dataset_tags(ds),
            CONFIG_HASH: config_hash, CONFIG_PATH: config_path or ""}


def child_run_name(label: str) -> str:
    return label


def child_tags(ds: Any, *, name: str, label: str, error: str | None = None) -> dict[str, str]:
    """Tags of one retriever's child run."""
    return {KIND: KIND_RETRIEVER, RETRIEVER_NAME: name, RETRIEVER_LABEL: label,
            DATASET_NAME: str(ds.name), DATASET_FINGERPRINT: str(ds.fingerprint),
            **error_tag(error)}


def study_run_name(study_name: str) -> str:
    return f"sweep-{study_name}"


def study_run_filter(study_name: str, storage_hash: str | None = None) -> str:
    """MLflow search filter that finds a study's run (of one storage when ``storage_hash``)."""
    text = f"tags.`{KIND}` = '{KIND_SWEEP}' and tags.`{STUDY_NAME}` = '{study_name}'"
    if storage_hash is not None:
        text += f" and tags.`{STORAGE_HASH}` = '{storage_hash}'"
    return text


def study_outcome_tags(states: dict[str, int], best_trial: int | None = None,
                       best_params: dict[str, Any] | None = None) -> dict[str, str]:
    """Tags a finished study run gets: trial counts per state, the best trial and its params."""
    tags = {N_TRIALS: str(sum(states.values())),
            **{f"optuna.n_{k.lower()}": str(v) for k, v in states.items()}}
    if best_trial is not None:
        tags[f"{BEST_PREFIX}trial"] = str(best_trial)
        tags.update({f"{BEST_PREFIX}{k}": str(v) for k, v in (best_params or {}).items()})
    return tags


def study_tags(ds: Any, *, study_name: str, config_hash: str, git_commit: str | None,
               **extra: Any) -> dict[str, str]:
    """Tags of a sweep's study run (``extra``: storage, sampler, direction, space, ...)."""
    return {KIND: KIND_SWEEP, STUDY_NAME: study_name, GIT_COMMIT: git_commit or "unknown",
            **dataset_tags(ds), CONFIG_HASH: config_hash, EVAL_SPLIT: "validation",
            **{k: str(v) for k, v in extra.items()}}


#: Metric-key prefix per evaluation split: sweep trials log ``val_m_mrr_at_20``; benchmark
#: children and ``best-on-test`` log test scores under the bare name (``m_mrr_at_20``).
SPLIT_PREFIX = {"validation": "val_", "test": ""}


def split_metric_key(split: str, metric: str) -> str:
    """``metric`` as logged for ``split``: ``split_metric_key("validation", "m_mrr_at_20")`` is
    ``val_m_mrr_at_20``."""
    return f"{SPLIT_PREFIX[split]}{metric}"


def trial_run_name(number: int) -> str:
    return f"trial-{number}"


def trial_tags(*, study_name: str, number: int, state: str, retriever: str,
               error: str | None = None) -> dict[str, str]:
    return {KIND: KIND_TRIAL, STUDY_NAME: study_name, TRIAL_NUMBER: str(number),
            TRIAL_STATE: state, RETRIEVER_NAME: retriever, EVAL_SPLIT: "validation",
            **error_tag(error)}


def best_on_test_run_name() -> str:
    return "best-on-test"


def best_on_test_tags(ds: Any, *, study_name: str, best_trial: int, retriever: str
                      ) -> dict[str, str]:
    return {KIND: KIND_BEST_ON_TEST, STUDY_NAME: study_name, BEST_TRIAL: str(best_trial),
            RETRIEVER_NAME: retriever, EVAL_SPLIT: "test", DATASET_NAME: str(ds.name),
            DATASET_FINGERPRINT: str(ds.fingerprint)}


def perf_run_name(size: str) -> str:
    return f"perf-{size}"


def perf_tags(dataset: dict[str, Any], *, git_commit: str | None, **extra: Any) -> dict[str, str]:
    return {KIND: KIND_PERF, GIT_COMMIT: git_commit or "unknown",
            DATASET_NAME: str(dataset.get("name", "")),
            DATASET_FINGERPRINT: str(dataset.get("fingerprint", "")),
            **{k: str(v) for k, v in extra.items()}}


def _train_tags(kind: str, dataset: str, fingerprint: str, config_hash: str,
                git_commit: str | None, extra: dict[str, str]) -> dict[str, str]:
    """Tags of a training run (``train-vlm``, ``train-clip``)."""
    tags = {KIND: kind, "dataset": dataset, "dataset_fingerprint": fingerprint,
            "config_hash": config_hash, **extra}
    if git_commit:
        tags[GIT_COMMIT] = git_commit
    return tags


def vlm_train_tags(*, dataset: str, fingerprint: str, config_hash: str, model: str,
                   git_commit: str | None) -> dict[str, str]:
    return _train_tags(KIND_VLM_TRAIN, dataset, fingerprint, config_hash, git_commit,
                       {"model": model})


def clip_train_tags(*, dataset: str, fingerprint: str, config_hash: str, mode: str,
                    git_commit: str | None) -> dict[str, str]:
    """Tags of a ``train-clip`` run (its ``clip`` artifact is the checkpoint)."""
    return _train_tags(KIND_CLIP_TRAIN, dataset, fingerprint, config_hash, git_commit,
                       {"clip.mode": mode})


def vlm_bench_tags(*, shape: str, device: str, git_commit: str | None) -> dict[str, str]:
    return {KIND: KIND_VLM_BENCH, "vlm.shape": shape, "device": device,
            GIT_COMMIT: git_commit or "unknown"}
