"""Registered retrievers, one module each. Importing this package registers them all."""

from baselines import (bm25, dense_clip, dense_text, fusion, ltr, persrv,  # noqa: F401
                       persrv_variants, popularity, query_lookup, random, user_history)
