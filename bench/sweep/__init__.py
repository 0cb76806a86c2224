"""Optuna sweeps (DESIGN §3, §8): tune one retriever on the validation split, one MLflow study run
with a child per trial, the best parameters evaluated once on test.

Modules, in the order a sweep uses them: ``space`` / ``space_parse`` (the YAML search space),
``storage`` (Optuna storage, locks), ``session`` (per-process data, features and fitted bases),
``liveness`` (worker identity, heartbeats, abandoned trials), ``driver`` (:func:`run_sweep`, the
ask/tell loop under the budget lock), ``study`` (the MLflow study run and its children),
``finish`` (trials.csv, plots, best.json and best-on-test, by the worker that finishes last),
``plots``, ``result``.
"""

from bench.sweep.driver import make_sampler, run_sweep
from bench.sweep.liveness import HEARTBEAT_SECONDS, STALE_SECONDS
from bench.sweep.plots import plot_objective_vs, write_plots
from bench.sweep.result import SweepResult
from bench.sweep.session import SweepSession, resolve_target
from bench.sweep.space import ParamSpec, SearchSpace
from bench.sweep.space_parse import load_space, parse_space
from bench.sweep.storage import (
           JOURNAL_NAME,
           StorageError,
           StorageHandle,
           default_storage,
)

__all__ = ["HEARTBEAT_SECONDS", "JOURNAL_NAME", "STALE_SECONDS", "ParamSpec", "SearchSpace",
           "StorageError", "StorageHandle", "SweepResult", "SweepSession", "default_storage",
           "load_space", "make_sampler", "parse_space", "plot_objective_vs", "resolve_target",
           "run_sweep", "write_plots"]
