"""Which trials still have a live worker: heartbeats, worker identity, abandoned trials.

Every RUNNING trial records its worker (:func:`bench.processes.worker_identity` under
:data:`~bench.tracking.schema.ATTR_WORKER`: host name,
pid, the process's start time and pid namespace) and a heartbeat every
:data:`HEARTBEAT_SECONDS`. Before asking for a trial, a worker marks FAIL every RUNNING trial
whose worker is gone:

- on this host (same host name and pid namespace): at once, when that pid is not running, is a
  zombie, or now belongs to a process started at another time (a reused pid);
- elsewhere: after :data:`STALE_SECONDS` without a heartbeat (no way to ask another machine).

So a worker killed mid-trial (``kill -9``, OOM) costs the next local worker nothing: it fails
the trial on start and, when that was the last one, writes the study's outputs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from bench.processes import worker_alive, worker_identity  # noqa: F401 (re-exported)
from bench.tracking.schema import ATTR_HEARTBEAT, ATTR_TRIAL_ERROR, ATTR_WORKER

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0


class Heartbeat:
    """A daemon thread that stamps :data:`ATTR_HEARTBEAT` on a trial every ``interval`` s."""

    def __init__(self, trial, interval: float):
        self.trial = trial
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.trial.set_user_attr(ATTR_HEARTBEAT, time.time())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        return False


def abandoned_reason(trial, now: float, stale_after: float) -> str | None:
    """Why a RUNNING trial has no live worker, or None when it may still be running."""
    info = trial.user_attrs.get(ATTR_WORKER)
    alive = worker_alive(info)
    if alive is False:
        return f"pid {info['pid']} on {info['host']} is no longer running"
    beat = trial.user_attrs.get(ATTR_HEARTBEAT)
    last = float(beat) if beat is not None else (
        trial.datetime_start.timestamp() if trial.datetime_start else now)
    if alive is None and now - last > stale_after:
        return f"no heartbeat for {now - last:.0f}s"
    return None


def fail_abandoned(study, storage, stale_after: float, echo: Callable[[str], None]) -> list:
    """Mark FAIL every RUNNING trial without a live worker (see the module doc); returns
    ``[(FrozenTrial as it was, error text)]`` for the trials this call failed."""
    from optuna.trial import TrialState
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = abandoned_reason(t, now, stale_after)
        if reason is None:
            continue
        error = f"abandoned: {reason}"
        try:
            storage.set_trial_user_attr(t._trial_id, ATTR_TRIAL_ERROR, error)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except Exception:  # another worker failed it first
            continue
        echo(f"trial {t.number}: abandoned by its worker ({reason}); marked FAIL")
        failed.append((t, error))
    return failed


def counted(study) -> tuple[int, int]:
    """(trials counted toward the budget: finished + running, running)."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                      TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials), running
