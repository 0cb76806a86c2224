"""Paired per-user deltas: mean, 95% CI and the minimum detectable effect.

For each user the metric is averaged over the user's requests in the segment, for the treatment
and the control arm (the same requests); ``d_u`` = treatment - control. The CI is the paired
t-interval ``mean +- t_{0.975, n-1} sd / sqrt(n)`` (:mod:`scipy.stats`); the minimum detectable
effect at 80% power, two-sided alpha = 0.05, is ``(z_{0.975} + z_{0.8}) sd / sqrt(n)``
(about 2.80 sd / sqrt(n)): a true mean delta smaller than that is missed more than 20% of the
time on a bed of this size.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

ALPHA = 0.05
POWER = 0.8


def user_deltas(treatment: pd.DataFrame, control: pd.DataFrame, column: str,
                qids: set[str] | None = None) -> pd.Series:
    """Per user (sorted) mean of ``column`` over the requests in ``qids`` (None: all) of
    ``treatment`` minus that of ``control`` (per-request frames with qid, user_id, column)."""
    def means(frame: pd.DataFrame) -> pd.Series:
        part = frame if qids is None else frame[frame["qid"].isin(qids)]
        return part.groupby(part["user_id"].astype(str), sort=True)[column].mean()
    t, c = means(treatment), means(control)
    return (t - c).dropna()


def mde_factor(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1 - alpha/2} + z_{power}`` (2.8016 for 0.05 / 0.8)."""
    from scipy.stats import norm
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def summarize(deltas: np.ndarray | pd.Series) -> dict[str, float]:
    """``delta`` (mean), ``ci_low``, ``ci_high``, ``sd``, ``n_users``, ``mde`` of paired
    per-user deltas (NaN where undefined: fewer than 2 users)."""
    from scipy.stats import t as student
    d = np.asarray(deltas, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    half = float(student.ppf(1 - ALPHA / 2, n - 1)) * se if n > 1 else math.nan
    return {"delta": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd,
            "n_users": n, "mde": mde_factor() * se if n > 1 else math.nan}
