"""Registered retrievers, one module each. Importing this package registers them all."""

from baselines import (bm25, dense_clip, dense_text, persrv, popularity, query_lookup,  # noqa: F401
                       random, user_history)
