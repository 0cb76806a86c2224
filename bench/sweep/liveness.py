"""Which trials still have a live worker: heartbeats, worker identity, abandoned trials.

Every RUNNING trial records its worker (:data:`~bench.tracking.schema.ATTR_WORKER`: host name,
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
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.tracking.schema import ATTR_HEARTBEAT, ATTR_TRIAL_ERROR, ATTR_WORKER

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
#: Two start times of one process (psutil, seconds) agree within this.
START_TIME_SLACK_S = 1.0


def _pid_namespace() -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return None


def _start_time(pid: int) -> float | None:
    import psutil
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return None


def worker_identity() -> dict[str, Any]:
    """This process as a trial records it: ``{"host", "pid", "started", "pidns"}``."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": _start_time(os.getpid()), "pidns": _pid_namespace()}


def worker_alive(info: Any) -> bool | None:
    """Whether the worker ``info`` (a :func:`worker_identity`) still runs: True / False for a
    worker on this host, None when it ran on another host (or recorded nothing usable)."""
    import psutil
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    if info.get("host") != socket.gethostname() or info.get("pidns") != _pid_namespace():
        return None
    try:
        proc = psutil.Process(info["pid"])
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = info.get("started")
        if started is not None and abs(proc.create_time() - float(started)) > START_TIME_SLACK_S:
            return False  # the pid was reused by a later process
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's live process
        return True


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
