"""Report plots (PNG, matplotlib Agg): M-MRR@k curves with CI bands, ablation bars against the
full PerSRV, and one sample user's history embeddings by cluster (see :mod:`bench.report`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_curves(summary: pd.DataFrame, labels: list[str], ks: list[int], path: Path) -> Path:
    """M-MRR@k against k per retriever, with its 95% bootstrap CI as a band.

    ``summary``: rows retriever, metric, mean, ci_low, ci_high (``m_mrr_at_{k}`` for each k)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rows = summary.set_index(["retriever", "metric"])
    for i, lb in enumerate(labels):
        keys = [(lb, f"m_mrr_at_{k}") for k in ks]
        if not all(key in rows.index for key in keys):
            continue
        sub = rows.loc[keys]
        color = f"C{i % 10}"
        ax.plot(ks, sub["mean"], marker="o", color=color, label=lb)
        ax.fill_between(ks, sub["ci_low"], sub["ci_high"], color=color, alpha=0.18, linewidth=0)
    ax.set_xlabel("k")
    ax.set_ylabel("M-MRR@k (macro over users)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("M-MRR@k per retriever (bands: 95% bootstrap CI over users)", fontsize=10)
    return _save(fig, path)


def plot_ablation(summary: pd.DataFrame, significance: pd.DataFrame, group: list[str],
                  full: str | None, metric: str, path: Path) -> Path | None:
    """Bars with CI error bars for the ``persrv*`` retrievers on ``metric``; the full PerSRV is a
    dashed reference line with its CI band, each variant is annotated with its difference
    (``†``: Holm-significant in the ablation family). None when there is no ablation group."""
    if len(group) < 2:
        return None
    plt = _pyplot()
    rows = summary[summary["metric"] == metric].set_index("retriever").reindex(group)
    abl = significance[(significance["family"] == "ablation") & (significance["metric"] == metric)]
    abl = abl.set_index("retriever")
    mean = rows["mean"].to_numpy(dtype=float)
    err = np.vstack([mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean])
    ref = float(rows.at[full, "mean"]) if full else None
    colors = ["#444444" if lb == full else ("#999999" if ref is None else
              ("#2a9d8f" if m >= ref else "#e76f51")) for lb, m in zip(group, mean)]
    fig, ax = plt.subplots(figsize=(max(4.8, 1.1 * len(group) + 1.5), 4.2), dpi=120)
    x = np.arange(len(group))
    ax.bar(x, mean, yerr=err, color=colors, capsize=4, edgecolor="black", linewidth=0.5)
    if ref is not None:
        ax.axhline(ref, color="#444444", linestyle="--", linewidth=1, label=f"{full} (full)")
        ax.axhspan(rows.at[full, "ci_low"], rows.at[full, "ci_high"], color="#444444", alpha=0.08)
        top = float(np.nanmax(rows["ci_high"]))
        for xi, lb, m in zip(x, group, mean):
            if lb == full:
                continue
            mark = " †" if lb in abl.index and bool(abl.at[lb, "significant"]) else ""
            inside = m > 0.25 * top  # the difference is written inside the bar when it fits
            ax.annotate(f"Δ {m - ref:+.3f}{mark}", (xi, m / 2 if inside else m),
                        xytext=(0, 0 if inside else 4), textcoords="offset points",
                        ha="center", va="center" if inside else "bottom", fontsize=9,
                        color="white" if inside else colors[xi], fontweight="bold")
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(x)
    ax.set_xticklabels(group, rotation=25, ha="right", fontsize=8)
    from bench.report import pretty
    ax.set_ylabel(f"{pretty(metric)} (macro over users, 95% CI)")
    ax.set_title("Ablations against the full PerSRV (†: Holm-significant)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_user_clusters(history: pd.DataFrame | None, path: Path, user: str | None = None,
                       seed: int = 0) -> Path | None:
    """2-D PCA of one user's history embeddings, coloured by k-means cluster (k = min(5, n)),
    marker shape by ``gt_style``, centroids as X. ``user`` defaults to the longest history in the
    sample. None without a usable sample (fewer than 3 stickers)."""
    if history is None or history.empty or "embedding" not in history.columns:
        return None
    sizes = history.groupby("user_id", sort=False).size()
    user = user if user is not None else sizes.idxmax()
    rows = history[history["user_id"] == user]
    if len(rows) < 3:
        return None
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    emb = np.vstack([np.asarray(e, dtype=np.float64) for e in rows["embedding"]])
    k = min(5, len(rows))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(emb)
    pca = PCA(n_components=min(2, emb.shape[1]), random_state=seed).fit(emb)
    xy, centers = pca.transform(emb), pca.transform(km.cluster_centers_)
    if xy.shape[1] == 1:
        xy = np.hstack([xy, np.zeros_like(xy)])
        centers = np.hstack([centers, np.zeros_like(centers)])
    styles = (rows["gt_style"] if "gt_style" in rows else pd.Series(None, index=rows.index)) \
        .astype(object).where(lambda s: s.notna(), "unknown").astype(str).to_numpy()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.8), dpi=120)
    for si, style in enumerate(sorted(set(styles))):
        m = styles == style
        ax.scatter(xy[m, 0], xy[m, 1], c=[f"C{c % 10}" for c in km.labels_[m]],
                   marker=MARKERS[si % len(MARKERS)], s=36, edgecolors="black", linewidths=0.3,
                   label=f"style {style}")
    for c, (cx, cy) in enumerate(centers):
        ax.scatter([cx], [cy], marker="X", s=220, c=f"C{c % 10}", edgecolors="black",
                   linewidths=1.2, zorder=3)
    ax.scatter([], [], marker="X", s=120, c="white", edgecolors="black", label="cluster centroid")
    var = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({var[1]:.0%})" if len(var) > 1 else "")
    ax.set_title(f"user {user}: {len(rows)} history stickers, k-means k={k} (colour)", fontsize=10)
    leg = ax.legend(fontsize=8, loc="best")
    for handle in leg.legend_handles:
        handle.set_facecolor("white")
        handle.set_edgecolor("black")
    ax.grid(alpha=0.3)
    return _save(fig, path)
