"""Performance benchmark (``persrv-bench perf``): stage timings, peak memory, references.

Modules, in the order of the data flow: :mod:`~bench.perf.config` (what is measured, the
targets), :mod:`~bench.perf.workloads` (the ``zipf`` and ``concepts`` datasets, cached),
:mod:`~bench.perf.measure` (memory sampler, stage clock, one retriever / sweep trial /
``--help``), :mod:`~bench.perf.references` (rank-bm25, bm25s numba, tantivy) and
:mod:`~bench.perf.naive` (the naive per-candidate loop), :mod:`~bench.perf.scaling` (one fresh
process per corpus size), :mod:`~bench.perf.render` (perf.md, scaling.png) and
:mod:`~bench.perf.driver` (:func:`run_perf`, targets, MLflow). ``python -m bench.perf
point|build ...`` is the subprocess side (one scaling point; a dataset build).
"""

from bench.perf.config import PAPER_REQUESTS, PAPER_STICKERS, TARGETS, WORKLOADS, PerfConfig
from bench.perf.driver import evaluate_targets, log_to_mlflow, perf_metrics, run_perf
from bench.perf.measure import MemorySampler, StageClock, current_rss, max_rss, timed_methods

__all__ = ["PAPER_REQUESTS", "PAPER_STICKERS", "TARGETS", "WORKLOADS", "PerfConfig",
           "evaluate_targets", "log_to_mlflow", "perf_metrics", "run_perf", "MemorySampler",
           "StageClock", "current_rss", "max_rss", "timed_methods"]
