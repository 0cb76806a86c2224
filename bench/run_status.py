"""``status.json`` of a run folder: ``running`` / ``complete`` / ``failed`` / ``killed``.

Written by :mod:`bench.experiment` as a run goes, set to ``killed`` by a later run when the
writing process is gone (:meth:`bench.tracking.client.Tracker.mark_orphans`), read by
``persrv-bench report``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_status(folder: str | Path, state: str, **extra: Any) -> None:
    """Write ``status.json`` atomically: ``{"status": state, "time": <epoch s>, **extra}``."""
    from bench.data.format import write_json_atomic
    write_json_atomic(Path(folder) / STATUS_FILE, {"status": state, "time": time.time(), **extra})


def read_status(folder: str | Path) -> str | None:
    """The folder's status, or None when it has no readable ``status.json``."""
    try:
        state = json.loads((Path(folder) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state.get("status") if isinstance(state, dict) else None
