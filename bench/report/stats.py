"""Statistics over users (DESIGN §6): bootstrap CIs of the macro mean, paired tests between
retrievers, Holm-Bonferroni correction, and the per-run table of them (:func:`compute_stats`).

CIs and permutation tests are :mod:`scipy.stats` (``bootstrap``, ``permutation_test``,
``ttest_rel``); Holm is ours (see :func:`holm`). Rows are users: a user's value is the mean over
the user's requests, intervals resample users, tests pair users.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.metrics import metric_name
from bench.report.folder import RunFolder, ablation_group
from bench.report.names import ReportError

TESTS = ("permutation", "t-test")
CI_METHODS = ("percentile", "BCa")
_CHUNK = 4_000_000  # array elements per resampling batch (bounds memory at paper scale)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 method: str = "percentile"):
    """Bootstrap CI of the mean over rows (users), via :func:`scipy.stats.bootstrap`.

    ``values``: shape (n,) or (n, m); the columns share the resamples. ``method``: ``percentile``
    (the report's) or ``BCa``. Returns ``(low, high)``, each a float or an (m,) array; the same
    seed and n give the same resamples. Fewer than 2 rows: NaN (n = 0) or the value itself.
    """
    from scipy import stats
    if method not in CI_METHODS:
        raise ReportError(f"unknown CI method {method!r}; use one of {', '.join(CI_METHODS)}")
    x = np.asarray(values, dtype=np.float64)
    one = x.ndim == 1
    x = x.reshape(len(x), -1)
    n, m = x.shape
    if n < 2:  # scipy needs two rows; every resample of one row is that row
        low = high = np.full(m, np.nan) if n == 0 else x[0].copy()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # constant columns
            ci = stats.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level,
                                 method=method, axis=0, vectorized=True,
                                 batch=max(1, _CHUNK // (n * m)),
                                 rng=np.random.default_rng(seed)).confidence_interval
        low, high = np.atleast_1d(ci.low), np.atleast_1d(ci.high)
    return (float(low[0]), float(high[0])) if one else (low, high)


def _abs_mean(d, axis):
    return np.abs(np.mean(d, axis=axis))


def paired_test(a, b, test: str = "permutation", n_perm: int = 10000, seed: int = 0):
    """Two-sided p-values for mean(b - a) != 0 over paired rows (users), per column.

    ``permutation``: :func:`scipy.stats.permutation_test` on the differences with
    ``permutation_type='samples'`` (one sample: each user's sign is flipped at random), statistic
    ``|mean|`` with ``alternative='greater'``, so p = (hits + 1) / (n_perm + 1) for ``n_perm``
    seeded random flips (all 2^n flips, exactly, when that is fewer); the columns share the flips.
    ``t-test``: :func:`scipy.stats.ttest_rel`. Identical inputs give p = 1; a constant non-zero
    difference gives the smallest p.
    """
    if test not in TESTS:
        raise ReportError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    from scipy import stats
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    one = a.ndim == 1
    d = (b - a).reshape(len(a), -1)
    n, m = d.shape
    if n == 0:
        p = np.full(m, np.nan)
    elif test == "permutation":
        p = np.atleast_1d(stats.permutation_test(
            (d,), _abs_mean, permutation_type="samples", vectorized=True, n_resamples=n_perm,
            alternative="greater", axis=0, batch=max(1, _CHUNK // (n * m)),
            rng=np.random.default_rng(seed)).pvalue)
    else:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences
            p = np.atleast_1d(stats.ttest_rel(b.reshape(n, -1), a.reshape(n, -1), axis=0).pvalue)
        mean, constant = d.mean(axis=0), d.std(axis=0) == 0  # no variation: the mean decides
        p = np.where(constant, np.where(mean == 0, 1.0, 0.0), p)
    return float(p[0]) if one else p


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (same order as given; NaNs stay NaN and do not count).

    Ours, not a library's: :func:`scipy.stats.false_discovery_control` only does Benjamini-
    Hochberg/-Yekutieli (FDR, not the family-wise error Holm controls), and statsmodels'
    ``multipletests(method="holm")`` would be a new dependency for these six lines.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    order = np.argsort(q, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(q) - np.arange(len(q))) * q[order]))
    res = np.empty(len(q))
    res[order] = adjusted
    out[ok] = res
    return out


def user_means(per_request: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per user (index, sorted) the mean of each column over the user's requests."""
    return per_request.groupby(per_request["user_id"].astype(str), sort=True)[columns].mean()


@dataclass
class Stats:
    """``summary``: retriever, metric, mean, ci_low, ci_high, n_users; ``significance``: one row
    per comparison (family ``baseline`` for the table, ``ablation`` for ablations vs full)."""

    metrics: list[str]
    baseline: str
    summary: pd.DataFrame
    significance: pd.DataFrame
    test: str
    n_boot: int
    n_perm: int
    alpha: float


def _compare(users: dict[str, pd.DataFrame], ref: str, others: list[str], cols: list[str],
             family: str, test: str, n_perm: int, seed: int, alpha: float) -> pd.DataFrame:
    """Paired tests of each of ``others`` against ``ref`` on ``cols``, Holm within the family."""
    ref_u = users[ref][cols]
    pairs = {lb: ref_u.align(users[lb][cols], join="inner", axis=0) for lb in others}
    same = [lb for lb in others if pairs[lb][0].index.equals(ref_u.index)]
    p_values = {}
    if same:  # users agree: one pass of permutations over every comparison at once
        p = paired_test(np.tile(ref_u.to_numpy(), len(same)),
                        np.hstack([users[lb][cols].to_numpy() for lb in same]),
                        test, n_perm, seed).reshape(len(same), len(cols))
        p_values = dict(zip(same, p))
    out = []
    for lb in others:
        a, b = pairs[lb]
        if lb not in p_values:
            p_values[lb] = np.atleast_1d(paired_test(a.to_numpy(), b.to_numpy(), test, n_perm,
                                                     seed))
        diff = (b - a).mean(axis=0)
        out += [{"family": family, "retriever": lb, "baseline": ref, "metric": c,
                 "diff": float(diff[c]), "p_value": float(p_values[lb][j]),
                 "n_users": len(a)} for j, c in enumerate(cols)]
    frame = pd.DataFrame(out, columns=["family", "retriever", "baseline", "metric", "diff",
                                       "p_value", "n_users"])
    frame["p_holm"] = holm(frame["p_value"].to_numpy())
    frame["significant"] = frame["p_holm"] < alpha
    frame["direction"] = np.sign(frame["diff"]).astype(int)
    frame["test"] = test
    return frame


def compute_stats(rf: RunFolder, metrics: list[str], baseline: str, n_boot: int = 2000,
                  seed: int = 0, test: str = "permutation", alpha: float = 0.05,
                  n_perm: int = 10000) -> Stats:
    """Macro means, bootstrap CIs and Holm-corrected paired tests for every retriever x metric.

    ``n_perm`` is raised when needed so that the smallest attainable Holm-adjusted p-value is at
    most alpha / 10 (the Stats record the number used)."""
    if test not in TESTS:
        raise ReportError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    # the smallest Holm-adjusted p is (#comparisons) / (n_perm + 1): keep it well below alpha
    n_perm = max(n_perm, int(np.ceil(10 * (len(rf.labels) - 1) * len(metrics) / alpha)))
    main = metric_name("m_mrr", max(rf.ks))  # ablations are tested on it alone
    users = {lb: user_means(df, list(dict.fromkeys([*metrics, main])))
             for lb, df in rf.per_request.items()}
    rows = []
    for lb, u in users.items():
        low, high = bootstrap_ci(u[metrics].to_numpy(), n_boot, seed)
        for j, col in enumerate(metrics):
            rows.append({"retriever": lb, "metric": col, "mean": float(u[col].mean()),
                         "ci_low": low[j], "ci_high": high[j], "n_users": len(u)})
    summary = pd.DataFrame(rows)
    args = (test, n_perm, seed, alpha)
    parts = [_compare(users, baseline, [lb for lb in rf.labels if lb != baseline], metrics,
                      "baseline", *args)]
    group, full = ablation_group(rf)
    if full and len(group) > 1:
        parts.append(_compare(users, full, [lb for lb in group if lb != full], [main],
                              "ablation", *args))
    return Stats(metrics, baseline, summary, pd.concat(parts, ignore_index=True), test, n_boot,
                 n_perm, alpha)


#: The floor baselines (registered names): a retriever that does not beat the strongest of them
#: has learnt nothing a lookup table, the user's own history or popularity does not already say.
FLOOR_BASELINES = ("query-lookup", "user-history", "popularity")


def paired_delta_ci(a: pd.Series, b: pd.Series, n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``b - a`` over the users both have (index = user id) and its percentile bootstrap
    CI over users: (delta, low, high)."""
    a, b = a.align(b, join="inner")
    diff = (b - a).to_numpy(dtype=np.float64)
    if len(diff) == 0:
        return float("nan"), float("nan"), float("nan")
    low, high = bootstrap_ci(diff, n_boot, seed, level)
    return float(diff.mean()), float(low), float(high)


def best_floor(per_request: dict[str, pd.DataFrame], names: dict[str, str], metric: str
               ) -> str | None:
    """The label of the strongest floor baseline (macro ``metric``) among ``per_request``'s
    retrievers (``names``: label -> registered name); None when the run has none."""
    floors = {lb: user_means(df, [metric])[metric].mean() for lb, df in per_request.items()
              if names.get(lb) in FLOOR_BASELINES}
    return max(floors, key=lambda lb: (floors[lb], lb)) if floors else None


def floor_deltas(per_request: dict[str, pd.DataFrame], names: dict[str, str], metric: str,
                 n_boot: int = 2000, seed: int = 0) -> tuple[str | None, dict[str, tuple]]:
    """Per retriever, Δ ``metric`` vs the best floor baseline with its paired 95% CI over users:
    (best floor label, {label: (delta, low, high)}); the floor itself is left out."""
    floor = best_floor(per_request, names, metric)
    if floor is None:
        return None, {}
    ref = user_means(per_request[floor], [metric])[metric]
    out = {lb: paired_delta_ci(ref, user_means(df, [metric])[metric], n_boot, seed)
           for lb, df in per_request.items() if lb != floor}
    return floor, out
