"""Registered retrievers, one module each. Importing this package registers them all."""

import importlib

for _mod in ("random", "popularity", "bm25", "dense_text"):
    try:
        importlib.import_module(f"baselines.{_mod}")
    except ModuleNotFoundError as exc:  # a module not written yet, never a missing dependency
        if exc.name != f"baselines.{_mod}":
            raise
