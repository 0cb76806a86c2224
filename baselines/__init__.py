"""Registered retrievers, one module each. Importing this package registers them all."""

from baselines import bm25, dense_text, popularity, random  # noqa: F401

try:  # PerSRV and dense CLIP land with the PerSRV issue
    from baselines import persrv  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "baselines.persrv":
        raise
