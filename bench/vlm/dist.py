"""Process rank and gathering for multi-process (DDP) VLM runs, without importing Lightning."""

from __future__ import annotations

import os
from typing import Any


def env_rank() -> int:
    """This process's global rank as set by a launcher (0 for a plain process / the launcher)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows, concatenated in rank order (the rows themselves outside DDP)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]
