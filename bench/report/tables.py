"""Tables: the runner's results table and its markdown, the DESIGN §6 segment table, and the
report's grids (markdown and LaTeX booktabs: best per column bold, † significance)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench.metrics import METRICS, metric_name
from bench.report.names import SEGMENTS, pretty

if TYPE_CHECKING:  # pragma: no cover
    from bench.report.stats import Stats

ARROWS = {1: "▲", -1: "▼"}
#: extra per-retriever columns a result may carry: ``<metric>_at_<k>__<segment>``, ``n__<segment>``.
SEGMENT_COLUMN_RE = re.compile(r"^(?:(?:m_mrr|mrr|recall|ndcg)_at_\d+|n)__(?P<segment>\w+)$")


# ------------------------------------------------------------------------------------ run tables

#: Per-retriever columns of the fair-comparison view (bench/listing.py, bench/metrics.py).
FAIR_SUFFIXES = ("_tie_aware", "_as_returned")
FAIR_COLUMNS = ("coverage", "tie_straddle_share")


def results_table(results, ks: list[int]) -> pd.DataFrame:
    """One row per retriever: macro metrics (the reported figures), the headline metric
    tie-aware and as returned, coverage, the share of requests with a tie straddling a relevant
    sticker, Δ of the headline vs the best floor baseline with its paired 95% CI over users
    (``delta_floor``, ``delta_floor_low``, ``delta_floor_high``; ``best_floor`` names it),
    timings, status.

    ``results``: the runner's ``RetrieverResult`` list (label, macro, per_request, fit/search
    seconds, error). Segment figures (``m_mrr_at_20__refind``, ``n__refind``, ...) become extra
    columns after the timings, in the order first seen."""
    from bench.report.stats import floor_deltas
    main = metric_name("m_mrr", max(ks))
    frames = {r.label: r.per_request for r in results
              if not r.error and getattr(r, "per_request", None) is not None}
    floor, deltas = floor_deltas(frames, {r.label: r.name for r in results}, main) \
        if frames else (None, {})
    fair = [c for c in [*(main + x for x in FAIR_SUFFIXES), *FAIR_COLUMNS]
            if any(c in (r.macro or {}) for r in results)]  # runs of the one evaluation loop
    rows = []
    extra: list[str] = []
    for r in results:
        row: dict[str, Any] = {"retriever": r.label}
        for m in METRICS:
            for k in ks:
                row[metric_name(m, k)] = r.macro.get(metric_name(m, k), float("nan"))
        for col in fair:
            row[col] = r.macro.get(col, float("nan"))
        if floor is not None:
            d = deltas.get(r.label, (float("nan"),) * 3)
            row.update({"best_floor": floor, "delta_floor": d[0], "delta_floor_low": d[1],
                        "delta_floor_high": d[2]})
        row["fit_s"] = round(r.fit_seconds, 2)
        row["search_s"] = round(r.search_seconds, 2)
        row["status"] = "failed" if r.error else "ok"
        for key, value in {**(r.macro or {}), **(getattr(r, "segments", None) or {})}.items():
            if SEGMENT_COLUMN_RE.match(key):
                row[key] = value
                extra += [key] if key not in extra else []
        rows.append(row)
    table = pd.DataFrame(rows)
    base = [c for c in table.columns if c not in extra]
    return table[base + extra] if len(table) else table


def format_table(table, ks: list[int], metrics=("m_mrr", "mrr", "recall", "ndcg"),
                 show_k: tuple[int, ...] | None = None, timings: bool = True,
                 fair: bool = True) -> str:
    """Markdown table of the main figures (M-MRR@k for every k, other metrics at the largest k);
    with ``fair`` (when the table has them) the headline tie-aware and as returned, coverage and
    Δ vs the best floor baseline [paired 95% CI]; then fit and search seconds unless ``timings``
    is False (tables that must equal another machine's run, like the README's).

    Other columns of ``table`` (segment figures, ...) are left out; see
    :func:`format_segment_table`."""
    kmax = max(ks)
    cols = [metric_name("m_mrr", k) for k in (show_k or ks)]
    cols += [metric_name(m, kmax) for m in metrics if m != "m_mrr"]
    cols = [c for c in cols if c in table.columns]
    main = metric_name("m_mrr", kmax)
    fair_cols = [c for c in (main + "_tie_aware", main + "_as_returned", "coverage")
                 if fair and c in table.columns]
    floor = str(table["best_floor"].iloc[0]) if fair and "best_floor" in table.columns and \
        len(table) and table["best_floor"].iloc[0] else ""
    full = table[(table["retriever"] == "persrv") & (table["status"] == "ok")]
    ablate = len(full) == 1 and table["retriever"].str.startswith("persrv-").any()
    titles = {main + "_tie_aware": f"{main} tie-aware", main + "_as_returned":
              f"{main} as returned", "coverage": "coverage"}
    header = "| retriever | " + " | ".join([*cols, *(titles[c] for c in fair_cols)]) + " |"
    n_cols = len(cols) + len(fair_cols)
    if floor:
        header += f" Δ {main} vs {floor} [95% CI] |"
        n_cols += 1
    if timings:
        header += " fit s | search s |"
        n_cols += 2
    if ablate:  # mark each PerSRV ablation against the full model
        header += f" Δ {main} vs persrv |"
        n_cols += 1
    lines = [header, "|---|" + "---:|" * n_cols]
    for _, row in table.iterrows():
        failed = row["status"] == "failed"
        vals = ["failed" if failed else f"{row[c]:.4f}" for c in [*cols, *fair_cols]]
        line = f"| {row['retriever']} | " + " | ".join(vals) + " |"
        if floor:
            if failed or pd.isna(row["delta_floor"]):
                line += " |"
            else:
                line += (f" {row['delta_floor']:+.4f} [{row['delta_floor_low']:+.3f}, "
                         f"{row['delta_floor_high']:+.3f}] |")
        if timings:
            line += f" {row['fit_s']:.1f} | {row['search_s']:.1f} |"
        if ablate:
            is_variant = str(row["retriever"]).startswith("persrv-") and not failed
            delta = row[main] - float(full[main].iloc[0])
            line += f" {delta:+.4f} |" if is_variant else " |"
        lines.append(line)
    return "\n".join(lines)


def _count_text(counts: pd.Series) -> str:
    vals = sorted({int(v) for v in counts.dropna()})
    if not vals:
        return ""
    return f" (n={vals[0]})" if len(vals) == 1 else f" (n={vals[0]}–{vals[-1]})"


def format_segment_table(table, metric: str, k: int) -> str:
    """Markdown: one row per retriever, one column per DESIGN §6 segment present in ``table``
    (columns ``<metric>_at_<k>__<segment>``; the header gives the request count from
    ``n__<segment>`` when that column exists). Best per column bold; ``""`` when no segment
    column is present. ``metric``: ``m_mrr``, ``mrr``, ``recall`` or ``ndcg``."""
    col = metric_name(metric, k)
    present = [s for s in SEGMENTS if f"{col}__{s}" in table.columns]
    if not present:
        return ""
    ok = table["status"] != "failed" if "status" in table.columns else \
        pd.Series(True, index=table.index)
    heads = [s + (_count_text(table.loc[ok, f"n__{s}"]) if f"n__{s}" in table.columns else "")
             for s in present]
    tops = {s: table.loc[ok, f"{col}__{s}"].max() for s in present}
    lines = ["| retriever | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(present)]
    for i, row in table.iterrows():
        cells = []
        for s in present:
            v = row[f"{col}__{s}"]
            if not ok[i]:
                cells.append("failed")
            elif pd.isna(v):
                cells.append("–")
            else:
                cells.append(f"**{v:.4f}**" if np.isclose(v, tops[s]) else f"{v:.4f}")
        lines.append(f"| {row['retriever']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ report grids

def _best(cells: pd.DataFrame) -> set[tuple[str, str]]:
    top = cells.groupby("col")["mean"].transform("max")
    return set(map(tuple, cells.loc[np.isclose(cells["mean"], top), ["row", "col"]].to_numpy()))


def _mark(cell, tex: bool = False) -> str:
    if not cell["significant"]:
        return ""
    if tex:
        return "$^{\\dagger" + ("\\uparrow" if cell["direction"] > 0 else "\\downarrow") + "}$"
    return ARROWS.get(int(cell["direction"]), "") + "†"


def markdown_grid(cells: pd.DataFrame, rows: list[str], cols: list[str], titles: list[str],
                  row_names: dict[str, str] | None = None, ci: bool = True) -> str:
    """Markdown table: mean (bold = best in column), ▲/▼† for significant differences, CI."""
    best, idx = _best(cells), cells.set_index(["row", "col"])
    lines = ["| retriever | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        out = []
        for c in cols:
            if (r, c) not in idx.index:
                out.append("–")
                continue
            cell = idx.loc[(r, c)]
            text = f"{cell['mean']:.4f}"
            text = (f"**{text}**" if (r, c) in best else text) + _mark(cell)
            if ci:
                text += f" [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"
            out.append(text)
        lines.append(f"| {(row_names or {}).get(r, r)} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def tex(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return re.sub(r"([_%&#$\{\}])", r"\\\1", str(text)).replace("~", r"\textasciitilde{}")


def latex_grid(cells: pd.DataFrame, rows: list[str], cols: list[str], titles: list[str],
               caption: str, label: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}``): best per column bold, † for significance."""
    best, idx = _best(cells), cells.set_index(["row", "col"])
    body = []
    for r in rows:
        vals = []
        for c in cols:
            if (r, c) not in idx.index:
                vals.append("--")
                continue
            cell = idx.loc[(r, c)]
            num = f"{cell['mean']:.4f}"
            vals.append((f"\\textbf{{{num}}}" if (r, c) in best else num) + _mark(cell, tex=True))
        body.append(f"    {tex(r)} & " + " & ".join(vals) + r" \\")
    return "\n".join([
        "% persrv-bench report; needs \\usepackage{booktabs}",
        r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}", f"  \\label{{{label}}}",
        f"  \\begin{{tabular}}{{l{'r' * len(cols)}}}", r"    \toprule",
        "    Retriever & " + " & ".join(tex(t) for t in titles) + r" \\", r"    \midrule",
        *body, r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""])


# ------------------------------------------------------------------------------------ report text

def stat_cells(stats: Stats) -> pd.DataFrame:
    """One row per (retriever, metric): mean, CI and the baseline comparison's verdict."""
    sig = stats.significance[stats.significance["family"] == "baseline"]
    cells = stats.summary.merge(sig[["retriever", "metric", "p_value", "p_holm", "significant",
                                     "direction"]], on=["retriever", "metric"], how="left")
    cells["significant"] = cells["significant"].astype("boolean").fillna(False).astype(bool)
    return cells.rename(columns={"retriever": "row", "metric": "col"})


def describe_test(stats: Stats) -> str:
    return (f"paired sign-flip permutation test over users, {stats.n_perm} permutations"
            if stats.test == "permutation" else "paired t-test over users")


def legend(stats: Stats, n_users: int) -> str:
    n = int((stats.significance["family"] == "baseline").sum())
    return (f"Mean over {n_users} users of each user's mean over requests (macro), with 95% "
            f"percentile bootstrap CI over users ({stats.n_boot} resamples). † = differs from "
            f"the baseline `{stats.baseline}` at α = {stats.alpha} after Holm-Bonferroni "
            f"correction over all {n} comparisons in the table ({describe_test(stats)}); ▲/▼ = "
            "above/below the baseline. Bold: best in column.")


def fmt_p(p: float) -> str:
    return "–" if pd.isna(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def wide_summary(stats: Stats, names: dict[str, str]) -> pd.DataFrame:
    """summary.csv: one row per retriever, per metric its mean, CI and Holm-adjusted p."""
    cells = stat_cells(stats)
    rows = []
    for lb in dict.fromkeys(stats.summary["retriever"]):
        sub = cells[cells["row"] == lb].set_index("col")
        row = {"retriever": lb, "name": names.get(lb, lb), "baseline": lb == stats.baseline,
               "n_users": int(sub["n_users"].iloc[0])}
        for c in stats.metrics:
            row.update({c: sub.at[c, "mean"], f"{c}_ci_low": sub.at[c, "ci_low"],
                        f"{c}_ci_high": sub.at[c, "ci_high"], f"{c}_p_holm": sub.at[c, "p_holm"]})
        rows.append(row)
    return pd.DataFrame(rows)


BREAKDOWN_TITLES = {
    "segment": "history segment (cold: no train clicks, light: < 10, heavy: >= 10)",
    "query_segment": "query segment (seen_query: the query occurs in the fitting clicks)",
    "history_segment": "history segment (refind: a relevant sticker is in the user's own "
                       "fitting clicks; discover: none is)",
    "cold_user": "cold user (no fitting clicks)",
    "language": "query language"}


def breakdown_markdown(seg: pd.DataFrame, metric: str, labels: list[str], top_n: int,
                       n_groups: dict[str, int]) -> str:
    """One markdown table per breakdown dimension: groups x retrievers, with request/user counts."""
    parts = []
    for dim in dict.fromkeys(seg["dimension"]):
        sub = seg[seg["dimension"] == dim]
        wide = sub.pivot_table(index="group", columns="retriever", values=metric, sort=False)
        counts = sub.drop_duplicates("group").set_index("group")
        extra = f" (top {top_n} of {n_groups[dim]} by requests)" \
            if n_groups.get(dim, 0) > top_n else ""
        lines = [f"### By {BREAKDOWN_TITLES.get(dim, dim)}{extra}: {pretty(metric)}", "",
                 "| group | requests | users | " + " | ".join(labels) + " |",
                 "|---|---:|---:|" + "---:|" * len(labels)]
        for g, vals in wide.iterrows():
            top = np.nanmax(vals.to_numpy(dtype=float))
            text = [("–" if pd.isna(vals.get(lb)) else
                     (f"**{vals[lb]:.4f}**" if np.isclose(vals[lb], top) else f"{vals[lb]:.4f}"))
                    for lb in labels]
            lines.append(f"| {g} | {int(counts.at[g, 'n_requests'])} | "
                         f"{int(counts.at[g, 'n_users'])} | " + " | ".join(text) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
