"""What a sweep worker returns (:class:`SweepResult`) and prints at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sweep.space import SearchSpace
from bench.tracking.schema import ATTR_TRIAL_FEATURES, ATTR_TRIAL_PARAMS


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


def fill_result(result: SweepResult, study, space: SearchSpace) -> None:
    """Trial counts per state and the best trial (its params decoded by the space)."""
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
            result.best_params = dict(best.user_attrs.get(ATTR_TRIAL_PARAMS) or {})
            result.best_features = dict(best.user_attrs.get(ATTR_TRIAL_FEATURES) or {})


def print_summary(result: SweepResult, echo: Callable[[str], None]) -> None:
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.states.items()))
    echo(f"\nstudy {result.study_name}: {sum(result.states.values())} trial(s) ({states}); this "
         f"worker ran {result.ran}")
    if result.best_trial is not None:
        params = show_params({**result.best_params, **flat_features(result.best_features)})
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


def show_params(params: dict[str, Any]) -> str:
    """``k=v, ...`` with floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def flat_features(features: dict[str, Any]) -> dict[str, Any]:
    """``{"encoder_params": {"size": 32}}`` -> ``{"features.encoder_params.size": 32}``."""
    out = {}
    for k, v in features.items():
        if isinstance(v, dict):
            out.update({f"features.{k}.{k2}": v2 for k2, v2 in v.items()})
        else:
            out[f"features.{k}"] = v
    return out
