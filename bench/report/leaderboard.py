"""The leaderboard of one run folder: retrievers ranked on the headline metric with 95% bootstrap
CIs over users, the best floor baseline, and each retriever's paired difference to it.

Used for the MLflow parent (its logged table and description, :mod:`bench.tracking.benchmark`)
and the report's ranked bar chart (:func:`bench.report.plots.plot_leaderboard`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.metrics import metric_name
from bench.report.folder import RunFolder
from bench.report.stats import FLOOR_BASELINES, bootstrap_ci, floor_deltas, user_means


@dataclass
class Leaderboard:
    """``table``: one row per retriever with results, best first (columns rank, retriever,
    registered, the headline metric, ci_low, ci_high, n_users, floor, delta_vs_best_floor,
    delta_ci_low, delta_ci_high, then the other metrics at the largest k). ``winner``: the
    first row's label; ``best_floor``: the strongest floor baseline (None without one);
    ``challenger``: the best retriever that is not a floor baseline (None without one)."""

    metric: str
    table: pd.DataFrame
    winner: str
    best_floor: str | None
    challenger: str | None

    def row(self, label: str) -> pd.Series:
        return self.table.set_index("retriever").loc[label]


def leaderboard(rf: RunFolder, metric: str | None = None, n_boot: int = 2000,
                seed: int = 0) -> Leaderboard:
    """Rank ``rf``'s retrievers on ``metric`` (default M-MRR at the largest k); ties by label."""
    kmax = max(rf.ks)
    metric = metric or metric_name("m_mrr", kmax)
    others = [m for m in (metric_name(x, kmax) for x in ("mrr", "recall", "ndcg"))
              if m != metric and all(m in df for df in rf.per_request.values())]
    floor, deltas = floor_deltas(rf.per_request, rf.names, metric, n_boot, seed)
    rows = []
    for lb, df in rf.per_request.items():
        users = user_means(df, [metric, *others])
        low, high = bootstrap_ci(users[metric].to_numpy(), n_boot, seed)
        delta = deltas.get(lb, (np.nan, np.nan, np.nan))
        rows.append({"retriever": lb, "registered": rf.names.get(lb, lb),
                     metric: float(users[metric].mean()), "ci_low": low, "ci_high": high,
                     "n_users": len(users), "floor": rf.names.get(lb, lb) in FLOOR_BASELINES,
                     "delta_vs_best_floor": delta[0] if lb != floor else 0.0,
                     "delta_ci_low": delta[1], "delta_ci_high": delta[2],
                     **{m: float(users[m].mean()) for m in others}})
    table = pd.DataFrame(rows).sort_values([metric, "retriever"], ascending=[False, True],
                                           kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    non_floor = table.loc[~table["floor"], "retriever"]
    return Leaderboard(metric, table, str(table["retriever"].iloc[0]), floor,
                       str(non_floor.iloc[0]) if len(non_floor) else None)


def key_labels(labels, winner: str | None, best_floor: str | None,
               baseline: str | None = None, limit: int = 5) -> list[str]:
    """The few retrievers a per-k plot draws by default, in this order and present in
    ``labels``: the winner, the best floor baseline, ``persrv``, ``bm25``, the report's
    baseline; at most ``limit``."""
    present = list(dict.fromkeys(str(lb) for lb in labels))
    out: list[str] = []
    for lb in (winner, best_floor, "persrv", "bm25", baseline):
        if lb and lb in present and lb not in out:
            out.append(lb)
    return out[:limit]


def describe(board: Leaderboard, pretty_metric: str, n_requests: int | None = None) -> str:
    """Markdown for the MLflow run description: the winner, the best floor baseline, and the
    margin (paired 95% bootstrap CI over users) of the best non-floor retriever to it."""
    t = board.table.set_index("retriever")
    m = board.metric
    win = t.loc[board.winner]
    users = int(win["n_users"])
    lines = [f"**Winner: {board.winner}** — {pretty_metric} = {win[m]:.4f} "
             f"(95% CI {win['ci_low']:.4f}–{win['ci_high']:.4f}, {users} users"
             + (f", {n_requests} requests" if n_requests else "") + ")."]
    if board.best_floor is None:
        lines.append("No floor baseline (query-lookup, user-history, popularity) ran: "
                     "add one to see what a lookup table already achieves.")
    else:
        floor = t.loc[board.best_floor]
        lines.append(f"Best floor baseline: {board.best_floor} ({floor[m]:.4f}).")
        if board.challenger is not None:
            ch = t.loc[board.challenger]
            d, lo, hi = ch["delta_vs_best_floor"], ch["delta_ci_low"], ch["delta_ci_high"]
            verdict = "better" if lo > 0 else "worse" if hi < 0 else "not separable"
            lines.append(f"Margin of the best non-floor retriever, {board.challenger}, over "
                         f"{board.best_floor}: {d:+.4f} (paired 95% bootstrap CI over users "
                         f"{lo:+.4f} to {hi:+.4f}: {verdict}).")
        if board.winner == board.best_floor:
            lines.append(f"The winner is a floor baseline: no retriever beats {board.winner}.")
    lines.append(f"Headline metric: `{m}` (the leaderboard is the artifact leaderboard.json; "
                 f"in the runs table add the column Metrics › {m} and sort by it).")
    return "\n\n".join(lines)


def child_description(board: Leaderboard, label: str, pretty_metric: str) -> str:
    """One line for a retriever's child run: its rank, headline value, CI and margin."""
    row = board.row(label)
    m = board.metric
    text = (f"Rank {int(row['rank'])} of {len(board.table)} — {pretty_metric} = {row[m]:.4f} "
            f"(95% CI {row['ci_low']:.4f}–{row['ci_high']:.4f}).")
    if board.best_floor and label != board.best_floor and np.isfinite(row["delta_vs_best_floor"]):
        text += (f" {row['delta_vs_best_floor']:+.4f} vs the best floor baseline "
                 f"{board.best_floor} (paired CI {row['delta_ci_low']:+.4f} to "
                 f"{row['delta_ci_high']:+.4f}).")
    return text
