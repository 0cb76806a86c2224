"""Registered retrievers, one module each. Importing this package registers them all."""

import importlib

from baselines import bm25, dense_text, popularity, random  # noqa: F401

for _optional in ("persrv", "dense_clip"):  # land with the PerSRV issue
    try:
        importlib.import_module(f"baselines.{_optional}")
    except ModuleNotFoundError as exc:
        if exc.name != f"baselines.{_optional}":
            raise
