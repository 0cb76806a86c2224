"""The study's outputs, written once by whichever worker finishes the last trial.

When no trial is RUNNING any more (trials of dead workers are failed first, see
:mod:`bench.sweep.liveness`), the worker that sees it claims the study under the budget lock
(study attribute :data:`~bench.tracking.schema.ATTR_BEST_ON_TEST`, state ``claimed`` with the
worker's identity), then writes ``trials.csv``, ``plots/``, ``best.json``, runs the best
parameters once on test (fitted on train + validation: the ``best-on-test`` child run) and marks
the attribute ``done`` for that best trial, so concurrent workers and resumes do not repeat it.
A claim whose worker died (on this host: at once; elsewhere: after ``STALE_SECONDS``) is taken
over by the next worker that finishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bench.config import RetrieverSpec
from bench.errors import BenchError
from bench.sweep.liveness import STALE_SECONDS, worker_alive, worker_identity
from bench.sweep.plots import write_plots
from bench.sweep.result import SweepResult
from bench.sweep.session import SweepSession
from bench.sweep.space import SearchSpace
from bench.sweep.study import log_best_on_test, log_study_outputs
from bench.tracking import mask_credentials
from bench.tracking.schema import ATTR_BEST_ON_TEST

log = logging.getLogger(__name__)


def claim_final(study) -> dict | None:
    """Under the budget lock: mark the study as being finalised by this worker (None when a live
    worker is doing it right now). Returns ``{"previous": what the last finalisation recorded}``."""
    prev = study.user_attrs.get(ATTR_BEST_ON_TEST)
    prev = prev if isinstance(prev, dict) else {}
    if prev.get("state") == "claimed" and _claim_live(prev):
        return None
    done = {k: prev.get(k) for k in ("trial", "metrics", "run_id")}
    study.set_user_attr(ATTR_BEST_ON_TEST, {**done, "state": "claimed", "pid": os.getpid(),
                                            "worker": worker_identity(), "at": time.time()})
    return {"previous": done}


def _claim_live(claim: dict) -> bool:
    worker = claim.get("worker")
    if worker == worker_identity():  # this process: an earlier call of it stopped half-way
        return False
    alive = worker_alive(worker)
    if alive is not None:
        return alive
    return time.time() - float(claim.get("at", 0)) < STALE_SECONDS


def finalize(study, claim: dict, result: SweepResult, space: SearchSpace,
             session: SweepSession, folder: Path, *, final_test: bool, tracker, study_run,
             echo) -> None:
    """Write the study's outputs (see the module doc); on an error the claim is released."""
    result.finalized = True
    try:
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        result.plots = write_plots(study, space, folder / "plots")
        best_json = {"study": result.study_name, "objective": space.objective_name,
                     "best_value": result.best_value, "best_trial": result.best_trial,
                     "params": result.best_params, "features": result.best_features}
        final = _test_the_best(claim, result, session, folder, final_test, tracker, study_run,
                               echo)
        if result.best_trial is not None and final_test:
            best_json["test"] = result.test_metrics
    except BaseException:
        with contextlib.suppress(Exception):
            study.set_user_attr(ATTR_BEST_ON_TEST, {**claim["previous"], "state": "released"})
        raise
    with contextlib.suppress(Exception):
        study.set_user_attr(ATTR_BEST_ON_TEST, {**final, "state": "done"})
    (folder / "best.json").write_text(json.dumps(best_json, indent=2, default=str) + "\n",
                                      encoding="utf-8")
    log_study_outputs(tracker, study_run, result, space, folder, echo)


def _test_the_best(claim: dict, result: SweepResult, session: SweepSession, folder: Path,
                   final_test: bool, tracker, study_run, echo) -> dict[str, Any]:
    """The best trial on test, unless already done for that trial; what to record as done."""
    previous = claim.get("previous") or {}
    if result.best_trial is None or not final_test:
        if result.best_trial is None:
            echo("no trial completed: nothing to evaluate on test")
        return claim["previous"]
    if previous.get("trial") == result.best_trial and previous.get("metrics"):
        result.test_metrics = previous["metrics"]
        result.test_run_id = previous.get("run_id")
        echo(f"best trial {result.best_trial} was already evaluated on test (run "
             f"{result.test_run_id})")
    else:
        try:
            result.test_metrics, result.test_run_id = best_on_test(
                session, result, folder, tracker, study_run, echo)
        except Exception as exc:
            echo(f"error: the best parameters failed on test ({type(exc).__name__}: "
                 f"{mask_credentials(str(exc))[:500]})")
            log.debug("best-on-test failed", exc_info=True)
    return {"trial": result.best_trial, "metrics": result.test_metrics,
            "run_id": result.test_run_id}


def best_on_test(session: SweepSession, result: SweepResult, folder: Path, tracker, study_run,
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
        run_id = log_best_on_test(tracker, study_run, ds=ds, result=result, spec=spec, res=res,
                                  folder=sub)
    echo(f"best parameters on test ({len(requests)} requests, fitted on train + validation): "
         f"{result.objective} = {res.macro.get(result.objective, float('nan')):.4f}")
    return dict(res.macro), run_id
