"""Cutoffs worth computing: a top-k list can never be longer than the corpus.

For a corpus of ``n`` stickers every metric at a cutoff ``k >= n`` equals the metric at any other
cutoff ``>= n``: the lists are the same. :func:`effective_ks` keeps the requested cutoffs below
``n``, the smallest one ``>= n`` and the largest one (the run's depth: its headline metric, e.g.
``m_mrr_at_20``, keeps the name it was asked under), and drops the others before anything is
searched, scored or logged (``ks: 1..3000`` on 15 stickers: 16 cutoffs, not 3000). Metric code
already allocates only as deep as the longest ranking, so the largest k costs nothing extra.
"""

from __future__ import annotations

from typing import Iterable


def effective_ks(ks: Iterable[int], n_stickers: int) -> list[int]:
    """Sorted distinct cutoffs that can differ on a corpus of ``n_stickers`` (see module doc)."""
    wanted = sorted({int(k) for k in ks})
    n = max(int(n_stickers), 1)
    kept = [k for k in wanted if k < n]
    at_or_over = [k for k in wanted if k >= n]
    return kept + sorted(set(at_or_over[:1] + at_or_over[-1:]))


def dropped_ks(ks: Iterable[int], n_stickers: int) -> list[int]:
    """The requested cutoffs :func:`effective_ks` leaves out (their values equal its last)."""
    keep = set(effective_ks(ks, n_stickers))
    return sorted({int(k) for k in ks} - keep)
