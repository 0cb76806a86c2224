"""Names and errors shared by every module of :mod:`bench.report` (imports nothing of the package,
so build, stats, tables, plots and fetch can all use it without an import cycle)."""

from __future__ import annotations

import re

from bench.errors import BenchError

PRETTY = {"m_mrr": "M-MRR", "mrr": "MRR", "recall": "Recall", "ndcg": "NDCG"}
METRIC_RE = re.compile(r"^(m_mrr|mrr|recall|ndcg)_at_(\d+)$")
#: DESIGN §6 request segments, in display order: ``<metric>_at_<k>__<segment>``, ``n__<segment>``.
SEGMENTS = ("seen_query", "unseen_query", "refind", "discover", "cold_user", "cold_sticker")
#: segments.parquet columns holding those segments (``cold_user`` is a bool).
SEGMENT_COLUMNS = ("query_segment", "history_segment", "cold_user")


class ReportError(BenchError):
    """A run folder cannot be reported on (missing file, unknown baseline or metric)."""


class RunNotFoundError(ReportError):
    """No MLflow run or experiment matches what was asked for."""


def pretty(column: str) -> str:
    """``m_mrr_at_10`` -> ``M-MRR@10``; ``m_mrr_at_10__refind`` -> ``M-MRR@10 (refind)``."""
    base, _, segment = column.partition("__")
    m = METRIC_RE.match(base)
    if not m:
        return column
    return f"{PRETTY[m.group(1)]}@{m.group(2)}" + (f" ({segment})" if segment else "")
