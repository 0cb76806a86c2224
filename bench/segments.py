"""Request segments and per-segment metrics (DESIGN §6).

Every request of an evaluation split is labelled against the *fitting clicks* (the history the
retrievers learned from, ``Splits.history_for(target)``):

- ``query_segment``: ``seen_query`` / ``unseen_query`` — the query string occurs / never occurs
  in the fitting clicks (any user);
- ``history_segment``: ``refind`` / ``discover`` — the relevant set does / does not intersect the
  stickers the user clicked in the fitting clicks;
- ``cold_user``: the user has no fitting clicks (such a request is always ``discover``);
- ``cold_sticker``: no relevant sticker has any click in the fitting clicks (any user) — only
  content (image, text) can find it.

:func:`segment_metrics` aggregates per-request metrics within each segment exactly like
:func:`bench.metrics.aggregate` (macro: mean per user, then over users), named
``<metric>_at_<k>__<segment>`` (e.g. ``m_mrr_at_20__unseen_query``), plus ``n__<segment>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pandas as pd

from bench.metrics import DEFAULT_KS, aggregate, metric_names

if TYPE_CHECKING:  # pragma: no cover
    from bench.data.splits import Requests

SEGMENTS = ("seen_query", "unseen_query", "refind", "discover", "cold_user", "cold_sticker")
LABEL_COLUMNS = ("qid", "query_segment", "history_segment", "cold_user", "cold_sticker")


def label_requests(requests: "Requests", fitting_clicks: pd.DataFrame) -> pd.DataFrame:
    """One row per request (in ``requests`` order): qid, query_segment, history_segment,
    cold_user, cold_sticker (bool). ``fitting_clicks``: user_id, query, sticker_id."""
    seen_queries = set(fitting_clicks["query"].astype(str))
    clicked_stickers = set(fitting_clicks["sticker_id"].astype(str))
    own = (fitting_clicks.groupby("user_id")["sticker_id"].agg(lambda s: set(s.astype(str)))
           .to_dict() if len(fitting_clicks) else {})
    qids = requests.qids
    rows = []
    for req in requests.requests:
        clicked = own.get(req.user_id)
        rows.append((qids[req],
                     "seen_query" if req.query in seen_queries else "unseen_query",
                     "refind" if clicked and clicked & requests.relevant[req] else "discover",
                     clicked is None,
                     not (clicked_stickers & requests.relevant[req])))
    return pd.DataFrame(rows, columns=list(LABEL_COLUMNS)).astype({"cold_user": bool,
                                                                   "cold_sticker": bool})


def segment_masks(labels: pd.DataFrame) -> dict[str, pd.Series]:
    """Segment name -> boolean mask over ``labels`` rows."""
    return {"seen_query": labels["query_segment"] == "seen_query",
            "unseen_query": labels["query_segment"] == "unseen_query",
            "refind": labels["history_segment"] == "refind",
            "discover": labels["history_segment"] == "discover",
            "cold_user": labels["cold_user"].astype(bool),
            "cold_sticker": labels["cold_sticker"].astype(bool)}


def segment_metrics(per_request: pd.DataFrame, labels: pd.DataFrame,
                    ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Macro metrics within each segment: ``<metric>_at_<k>__<segment>`` and ``n__<segment>``
    (request count). ``per_request``: :func:`bench.metrics.per_request` / ``evaluate_run``
    output (qid, user_id, metric columns); ``labels``: :func:`label_requests`, joined on qid.
    An empty segment has only its count (0), no metric values."""
    cols = [c for c in metric_names(ks) if c in per_request.columns]
    frame = per_request[["qid", "user_id", *cols]].merge(labels, on="qid", how="inner",
                                                        validate="one_to_one")
    if len(frame) != len(per_request):
        raise ValueError(f"{len(per_request) - len(frame)} per-request rows have no segment "
                         "label (labels must come from the same requests' qids)")
    out: dict[str, float] = {}
    for segment, mask in segment_masks(frame).items():
        part = frame.loc[mask.to_numpy(), ["qid", "user_id", *cols]]
        out[f"n__{segment}"] = int(len(part))
        if len(part):
            out.update({f"{name}__{segment}": value
                        for name, value in aggregate(part, "macro").items()})
    return out
