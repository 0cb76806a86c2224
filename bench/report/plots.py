"""Report plots (PNG, matplotlib Agg): the leaderboard (ranked bars with CIs, winner and best
floor highlighted), M-MRR@k curves of the few retrievers that matter (with CI bands in the
report, without in the runner's ``plots/``; every retriever on request), ablation bars against
the full PerSRV, and one sample user's history embeddings by cluster.

Every retriever keeps one look across every plot of a run: :func:`style_for` maps the run's labels
to (colour, line style, marker) — baselines in grey tones with dashed lines, PerSRV variants in
shades of blue, the full ``persrv`` solid, darkest and thickest, anything else in other hues; no
two labels share a (colour, line style) pair. Legends sit outside the axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.names import pretty

MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">", "X", "p")
#: registered baselines drawn grey and dashed (also any label starting with ``dense-``/``bm25``)
BASELINES = ("bm25", "bm25-rank-bm25", "random", "popularity", "query-lookup", "user-history")
_BASELINE_PREFIXES = ("bm25", "dense-")
# palettes of coprime lengths: the i-th label of a group gets (colour i % a, style i % b), so the
# first a * b labels of a group never share a pair; later ones get a dash pattern of their own
_GREYS = ("#262626", "#8c8c8c", "#4d4d4d", "#a8a8a8", "#666666")
_GREY_DASHES = ("--", ":", "-.", (0, (5, 2, 1, 2, 1, 2)))
_FULL_PERSRV = "#08306b"
_BLUES = ("#2171b5", "#6baed6", "#08519c", "#4292c6", "#9ecae1", "#3182bd")
_BLUE_LINES = ("-", (0, (6, 1.5)), "-.", (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)))
_HUES = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22")
_HUE_LINES = ("-", "-.", (0, (1, 1)), (0, (8, 2)))
Style = tuple  # (colour, linestyle, marker)
#: Highlights of the leaderboard and the per-k plot: the winner, the best floor baseline, others.
WINNER_COLOUR = "#d95f02"
FLOOR_COLOUR = "#222222"
OTHER_BAR = "#a6bddb"
#: Colours of the other few lines a per-k plot shows by default (colour-blind safe, Dark2).
KEY_COLOURS = ("#1b9e77", "#7570b3", "#e7298a", "#66a61e")


def _group(label: str) -> str:
    if label == "persrv":
        return "full"
    if label.startswith("persrv"):
        return "persrv"
    if label in BASELINES or label.startswith(_BASELINE_PREFIXES):
        return "baseline"
    return "other"


def _pick(i: int, colours: tuple, lines: tuple):
    if i < len(colours) * len(lines):
        return colours[i % len(colours)], lines[i % len(lines)]
    # beyond the palettes: a dash-dot whose dash length is unique among the labels of its colour
    return colours[i % len(colours)], (0, (1.0 + 0.5 * (i // len(colours)), 1.5, 1, 1.5))


def style_for(labels) -> dict[str, Style]:
    """``{label: (colour, linestyle, marker)}`` for the retrievers of one run.

    Depends only on the set of labels (not their order), so every plot built from the same run
    draws a retriever the same way. Baselines: grey tones, dashed/dotted; ``persrv*`` variants:
    shades of blue; ``persrv``: darkest blue, solid (thickest, see :func:`linewidth_for`)."""
    def rank(lb: str):
        return (BASELINES.index(lb) if lb in BASELINES else len(BASELINES), lb)

    ordered = sorted(dict.fromkeys(str(lb) for lb in labels), key=lambda lb: (
        ("full", "persrv", "other", "baseline").index(_group(lb)), rank(lb)))
    seen = {"baseline": 0, "persrv": 0, "other": 0}
    out: dict[str, Style] = {}
    for j, lb in enumerate(ordered):
        group = _group(lb)
        marker = MARKERS[j % len(MARKERS)]
        if group == "full":
            out[lb] = (_FULL_PERSRV, "-", marker)
            continue
        i = seen[group]
        seen[group] += 1
        palette = {"baseline": (_GREYS, _GREY_DASHES), "persrv": (_BLUES, _BLUE_LINES),
                   "other": (_HUES, _HUE_LINES)}[group]
        out[lb] = (*_pick(i, *palette), marker)
    return out


def linewidth_for(label: str) -> float:
    """Line width in points: the full PerSRV thickest, baselines thinnest."""
    return {"full": 3.0, "persrv": 1.9, "other": 1.9, "baseline": 1.5}[_group(str(label))]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _legend_outside(ax, **kwargs):
    """The legend to the right of the axes, so it never covers the data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     fontsize=8, frameon=False, **kwargs)


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as PNG (cropped to include the outside legend) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def highlighted(styles: dict[str, Style], winner: str | None, best_floor: str | None,
                shown: list[str] | None = None
                ) -> tuple[dict[str, Style], dict[str, str], dict[str, float]]:
    """The run's styles with the winner drawn solid in the highlight colour and the best floor
    baseline black and dashed; when only the few ``shown`` labels are drawn, the others among
    them (but ``persrv``) get distinct colours of their own. Returns (styles, legend names
    with their role, line widths)."""
    styles = dict(styles)
    names: dict[str, str] = {}
    widths: dict[str, float] = {}
    rest = [lb for lb in (shown or []) if lb not in (winner, best_floor, "persrv")]
    for i, lb in enumerate(rest):
        styles[lb] = (KEY_COLOURS[i % len(KEY_COLOURS)], "-.", styles.get(lb, (0, 0, "^"))[2])
        widths[lb] = 1.8
    if best_floor:
        styles[best_floor] = (FLOOR_COLOUR, "--", styles.get(best_floor, (0, 0, "s"))[2])
        names[best_floor] = f"{best_floor} (best floor)"
        widths[best_floor] = 2.2
    if winner:
        styles[winner] = (WINNER_COLOUR, "-" if winner != best_floor else "--",
                          styles.get(winner, (0, 0, "o"))[2])
        names[winner] = f"{winner} (winner" + (", best floor)" if winner == best_floor else ")")
        widths[winner] = 3.2
    return styles, names, widths


def curves_figure(series: dict[str, tuple], ks: list[int], styles: dict[str, Style],
                  title: str, names: dict[str, str] | None = None,
                  widths: dict[str, float] | None = None):
    """M-MRR@k against k, one line per label; ``series``: label -> (means, ci_low, ci_high), each
    of length len(ks) (the bounds may be None: no band); ``names``/``widths``: legend text and
    line width per label where not the defaults. Returns the matplotlib Figure."""
    plt = _pyplot()
    names, widths = names or {}, widths or {}
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    for lb, (mean, low, high) in series.items():
        colour, line, marker = styles.get(lb) or style_for([lb])[lb]
        ax.plot(ks, mean, color=colour, linestyle=line, marker=marker, markersize=5,
                linewidth=widths.get(lb, linewidth_for(lb)), label=names.get(lb, lb),
                zorder=4 if widths.get(lb, 0) >= 3 else 3 if lb in widths or lb == "persrv"
                else 2)
        if low is not None and high is not None:
            ax.fill_between(ks, low, high, color=colour, alpha=0.12, linewidth=0)
    ax.set_xlabel("cutoff k (ranks)")
    ax.set_ylabel("M-MRR@k (mean over users; unitless)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    _legend_outside(ax, title="retriever")
    ax.set_title(title, fontsize=10)
    return fig


def _winner_and_floor(means: dict[str, float], names: dict[str, str] | None = None):
    """(label with the highest mean, strongest floor baseline or None); ties by label."""
    from bench.report.stats import FLOOR_BASELINES
    names = names or {}
    if not means:
        return None, None
    winner = max(means, key=lambda lb: (means[lb], lb))
    floors = {lb: v for lb, v in means.items() if names.get(lb, lb) in FLOOR_BASELINES}
    return winner, (max(floors, key=lambda lb: (floors[lb], lb)) if floors else None)


def _shown(labels: list[str], means: dict[str, float], names: dict[str, str] | None,
           baseline: str | None, show: str | list[str]) -> tuple[list[str], str | None,
                                                                   str | None]:
    """The labels a per-k plot draws: ``show="key"`` the few that matter
    (:func:`bench.report.leaderboard.key_labels`), ``"all"`` every one, or a list of labels."""
    from bench.report.leaderboard import key_labels
    winner, floor = _winner_and_floor(means, names)
    if show == "all":
        return list(labels), winner, floor
    if show == "key":  # best first, so the legend reads in the order of the lines at the right
        key = key_labels(labels, winner, floor, baseline)
        return sorted(key, key=lambda lb: (-means[lb], lb)), winner, floor
    missing = [lb for lb in show if lb not in labels]
    if missing:
        from bench.report.names import ReportError
        raise ReportError(f"plot: no results for {', '.join(missing)}; have {', '.join(labels)}")
    return list(show), winner, floor


def plot_curves(summary: pd.DataFrame, labels: list[str], ks: list[int], path: Path,
                styles: dict[str, Style] | None = None, *, show: str | list[str] = "key",
                baseline: str | None = None, names: dict[str, str] | None = None) -> Path:
    """M-MRR@k against k per retriever, with its 95% bootstrap CI as a band.

    ``summary``: rows retriever, metric, mean, ci_low, ci_high (``m_mrr_at_{k}`` for each k);
    ``styles`` (default ``style_for(labels)``): the run's retriever styles. ``show``: ``"key"``
    (default: the winner, the best floor baseline, persrv, bm25 and ``baseline``, at most 5),
    ``"all"``, or a list of labels. ``names``: label -> registered name (floor detection)."""
    rows = summary.set_index(["retriever", "metric"])
    series = {}
    for lb in labels:
        keys = [(lb, f"m_mrr_at_{k}") for k in ks]
        if all(key in rows.index for key in keys):
            sub = rows.loc[keys]
            series[lb] = (sub["mean"].to_numpy(float), sub["ci_low"].to_numpy(float),
                          sub["ci_high"].to_numpy(float))
    means = {lb: float(v[0][-1]) for lb, v in series.items()}
    shown, winner, floor = _shown(list(series), means, names, baseline, show)
    st, legend, widths = highlighted(styles or style_for(labels), winner, floor,
                                     shown if show != "all" else None)
    hidden = len(series) - len(shown)
    title = "M-MRR@k (bands: 95% bootstrap CI over users)" + \
        (f"; {hidden} more retrievers in the leaderboard" if hidden else "")
    fig = curves_figure({lb: series[lb] for lb in shown}, ks, st, title, legend, widths)
    return save_figure(fig, path)


def plot_m_mrr(table, ks: list[int], path: Path, styles: dict[str, Style] | None = None, *,
               show: str | list[str] = "key", baseline: str | None = None) -> Path:
    """PNG: M-MRR@k against k for the runner's results table: by default the few retrievers that
    matter (see :func:`plot_curves`; ``show="all"`` draws every one). Failed rows are not drawn
    but keep their style slot, so the look matches the report's plots."""
    styles = styles or style_for(table["retriever"])
    ok = table[table["status"] == "ok"]
    series = {str(row["retriever"]): ([row[f"m_mrr_at_{k}"] for k in ks], None, None)
              for _, row in ok.iterrows()}
    means = {lb: float(v[0][-1]) for lb, v in series.items()}
    shown, winner, floor = _shown(list(series), means, None, baseline, show)
    st, legend, widths = highlighted(styles, winner, floor, shown if show != "all" else None)
    hidden = len(series) - len(shown)
    title = "M-MRR@k per retriever" + (f" ({hidden} more in results.md)" if hidden else "")
    return save_figure(curves_figure({lb: series[lb] for lb in shown}, ks, st, title, legend,
                                     widths), path)


def plot_leaderboard(board, path: Path, pretty_metric: str | None = None) -> Path:
    """Ranked horizontal bars of the headline metric with 95% CI whiskers, best at the top,
    each bar labelled with its value; the winner in the highlight colour, the best floor
    baseline black (its mean a dashed line across the chart). ``board``: a
    :class:`bench.report.leaderboard.Leaderboard`."""
    plt = _pyplot()
    t = board.table
    m = board.metric
    label = pretty_metric or pretty(m)
    n = len(t)
    fig, ax = plt.subplots(figsize=(7.6, 0.38 * n + 1.4), dpi=120)
    y = np.arange(n)
    mean = t[m].to_numpy(float)
    err = np.vstack([mean - t["ci_low"].to_numpy(float), t["ci_high"].to_numpy(float) - mean])
    colours = [WINNER_COLOUR if lb == board.winner else FLOOR_COLOUR if lb == board.best_floor
               else OTHER_BAR for lb in t["retriever"]]
    ax.barh(y, mean, xerr=err, color=colours, height=0.7, capsize=3,
            error_kw={"elinewidth": 1, "ecolor": "#555555"})
    if board.best_floor is not None:
        ax.axvline(float(t.set_index("retriever").at[board.best_floor, m]), color=FLOOR_COLOUR,
                   linestyle="--", linewidth=1, zorder=0)
    top = float(np.nanmax(t["ci_high"])) if n else 1.0
    for yi, (lb, v, hi) in enumerate(zip(t["retriever"], mean, t["ci_high"].to_numpy(float))):
        role = ", ".join(r for r, on in (("winner", lb == board.winner),
                                         ("best floor", lb == board.best_floor)) if on)
        ax.text(hi + top * 0.01, yi, f"{v:.3f}{'  ← ' + role if role else ''}", va="center",
                fontsize=8, fontweight="bold" if role else "normal")
    ax.set_yticks(y)
    ax.set_yticklabels(t["retriever"], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.32 if top > 0 else 1)
    ax.set_xlabel(f"{label} (mean over users; whiskers: 95% bootstrap CI)")
    ax.set_title(f"Leaderboard: {label}, {n} retrievers"
                 + (f" (dashed: best floor, {board.best_floor})" if board.best_floor else ""),
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return save_figure(fig, path)


def plot_ablation(summary: pd.DataFrame, significance: pd.DataFrame, group: list[str],
                  full: str | None, metric: str, path: Path,
                  styles: dict[str, Style] | None = None) -> Path | None:
    """Bars with CI error bars for the ``persrv*`` retrievers on ``metric``, in each retriever's
    colour; the full PerSRV is a dashed reference line with its CI band, each variant is
    annotated with its difference (green above, red below; ``†``: Holm-significant in the
    ablation family). None when there is no ablation group."""
    if len(group) < 2:
        return None
    plt = _pyplot()
    styles = styles or style_for(group)
    rows = summary[summary["metric"] == metric].set_index("retriever").reindex(group)
    abl = significance[(significance["family"] == "ablation") & (significance["metric"] == metric)]
    abl = abl.set_index("retriever")
    mean = rows["mean"].to_numpy(dtype=float)
    err = np.vstack([mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean])
    ref = float(rows.at[full, "mean"]) if full else None
    colours = [(styles.get(lb) or style_for([lb])[lb])[0] for lb in group]
    fig, ax = plt.subplots(figsize=(max(4.8, 1.1 * len(group) + 1.5), 4.2), dpi=120)
    x = np.arange(len(group))
    ax.bar(x, mean, yerr=err, color=colours, capsize=4, edgecolor="black", linewidth=0.5)
    if ref is not None:
        ax.axhline(ref, color=styles.get(full, (_FULL_PERSRV,))[0], linestyle="--", linewidth=1,
                   label=f"{full} (full), 95% CI band")
        ax.axhspan(rows.at[full, "ci_low"], rows.at[full, "ci_high"], color="#444444", alpha=0.08)
        top = float(np.nanmax(rows["ci_high"]))
        for xi, lb, m in zip(x, group, mean):
            if lb == full:
                continue
            mark = " †" if lb in abl.index and bool(abl.at[lb, "significant"]) else ""
            ax.annotate(f"Δ {m - ref:+.3f}{mark}", (xi, float(rows.at[lb, "ci_high"])),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=9, fontweight="bold",
                        color="#1a7f37" if m >= ref else "#b42318")
        ax.set_ylim(0, top * 1.18 if top > 0 else 1)
        _legend_outside(ax)
    ax.set_xticks(x)
    ax.set_xticklabels(group, rotation=25, ha="right", fontsize=8)
    ax.set_xlabel("retriever")
    ax.set_ylabel(f"{pretty(metric)} (mean over users, 95% CI)")
    ax.set_title("Ablations against the full PerSRV (†: Holm-significant)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


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
    ax.set_xlabel(f"PC1 (embedding units; {var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 (embedding units; {var[1]:.0%})" if len(var) > 1 else "")
    ax.set_title(f"user {user}: {len(rows)} history stickers, k-means k={k} (colour)", fontsize=10)
    leg = _legend_outside(ax)
    for handle in leg.legend_handles:
        handle.set_facecolor("white")
        handle.set_edgecolor("black")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
