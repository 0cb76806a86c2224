"""Is the process that wrote a record still running? One answer for sweep trials and run parents.

A process is recorded as :func:`worker_identity` (host name, pid, the process's start time and pid
namespace); :func:`worker_alive` says True / False for a process of this host, and None for one
of another host (no way to ask another machine). A pid that now belongs to a process started at
another time (a reused pid) or a zombie counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

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
    """This process: ``{"host", "pid", "started", "pidns"}``."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": _start_time(os.getpid()), "pidns": _pid_namespace()}


def worker_alive(info: Any) -> bool | None:
    """Whether the process ``info`` (a :func:`worker_identity`) still runs: True / False for a
    process on this host, None when it ran on another host (or recorded nothing usable)."""
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
