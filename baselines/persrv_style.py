"""``persrv-style``: PerSRV whose re-rank reaches every candidate (issue 23.4).

PerSRV's re-rank only touches pooled stickers inside a cluster's radius; with a handful of
history stickers per user most clusters are single stickers of radius 0, so the default
``persrv`` lifts only stickers the user already sent (re-finding; see
:mod:`bench.persrv.diagnostics`). This variant floors every radius at 2 (the largest cosine
distance: every candidate is covered) and weighs the centroid similarity fully
(``rerank_weight=1``): each pooled sticker's score becomes ``score x (1 + max_c cos(e, c))``, a
boost toward the user's style for new stickers too. It is registered beside the ablations
(:mod:`baselines.persrv_variants`: the same class with other defaults) and is the positive
control of ``persrv-bench calibrate``.
"""

from __future__ import annotations

from baselines.persrv_variants import _variant

#: The parameters by which ``persrv-style`` differs from ``persrv``.
STYLE_PARAMS = dict(min_radius=2.0, rerank_weight=1.0)
PerSRVStyle = _variant("persrv-style", "PerSRV with a centroid-similarity boost for every candidate (radius floor 2, rerank_weight 1): personalises toward style, not only re-finding.", **STYLE_PARAMS)  # noqa: E501
