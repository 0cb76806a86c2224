"""PerSRV's ablations and the ``persrv-reference`` preset: :class:`baselines.persrv.PerSRV` with
other parameter defaults, each a registered subclass (DESIGN §7).

``persrv-reference`` follows the reference code (github.com/metildachee/persrv: ``recall.py``,
``prediction_fn.py``, ``gen_personalise.py``, ``rank.py``) where it is not a bug: utility =
versatility (distinct queries, ``utility_components="queries"``), recall pool = 5 x k
(``pool_per_k=5``), only its fields and boosts (OCR 1.0, historical queries 0.5, description
``desc_boost``; no other text column, VLM keywords off), a re-rank that only ever raises a score
(``rerank_never_lower``), and its geometry (``geometry="standardized"``: per-user standardised
embeddings, Euclidean radius and coverage). The README's fidelity table lists each divergence
of the default ``persrv`` (``benchmarks/fidelity_table.py`` measures them).
"""

from __future__ import annotations

from baselines.persrv import PerSRV
from bench.params import with_defaults
from bench.registry import register


def _variant(name: str, doc: str, **defaults) -> type:
    """A registered PerSRV subclass that differs only in parameter defaults (its ``Params`` is
    PerSRV's declaration with those defaults)."""
    qual = "PerSRV_" + name.removeprefix("persrv-").replace("-", "_")
    cls = type(qual, (PerSRV,), {"Params": with_defaults(PerSRV.Params, **defaults),
                                 "__doc__": doc, "__module__": __name__, "__qualname__": qual,
                                 "name": name})
    return register(name)(cls)


PerSRVNoPersonalization = _variant("persrv-no-personalization", "PerSRV without the personalised re-rank (BM25 fields + utility).", personalization=False)  # noqa: E501
PerSRVNoUtility = _variant("persrv-no-utility", "PerSRV without the utility boost (BM25 fields + personalization).", utility=False)  # noqa: E501
PerSRVNoOCR = _variant("persrv-no-ocr", "PerSRV without the OCR text field.", ocr_boost=0.0)
PerSRVNoQueries = _variant("persrv-no-queries", "PerSRV without the historical-query field.", queries_boost=0.0)  # noqa: E501
PerSRVNoDescription = _variant("persrv-no-description", "PerSRV without the VLM description field.", desc_boost=0.0)  # noqa: E501
PerSRVBM25 = _variant("persrv-bm25", "PerSRV's multi-field BM25 alone (no utility, no personalization).", utility=False, personalization=False)  # noqa: E501

#: The parameters by which ``persrv-reference`` differs from ``persrv`` (one fidelity row each).
#: (VLM keywords stay off, as in ``persrv``: ``keywords_boost`` = 0.)
REFERENCE_PARAMS = dict(utility_components="queries", pool_per_k=5, text_boost=0.0,
                        rerank_never_lower=True, geometry="standardized")
PerSRVReference = _variant("persrv-reference", "PerSRV as the reference code does it (versatility utility, pool 5 x k, its fields, never-lower re-rank, standardised Euclidean geometry).", **REFERENCE_PARAMS)  # noqa: E501
