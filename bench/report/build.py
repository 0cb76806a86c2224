"""Building a run folder's report (:func:`report_folder`) and the cross-experiment table
(:func:`compare_folders`): markdown, HTML, CSV, LaTeX and PNG files.

Everything reads a run folder as the runner writes it (``config.yaml``, ``results.md``,
``retrievers/<label>/per_request.parquet``, ``segments.parquet``, ``history_sample.parquet``);
:func:`bench.report.fetch.fetch_run` rebuilds that layout from a parent run's MLflow artifacts.
Statistics are over users (DESIGN §6): see :mod:`bench.report.stats`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import metric_name
from bench.report import plots
from bench.report.folder import (BREAKDOWNS, RunFolder, ablation_group, breakdowns, load_folder,
                                 resolve_baseline, resolve_metrics, segment_wide)
from bench.report.html import write_html
from bench.report.names import ReportError, pretty
from bench.report.stats import Stats, compute_stats, holm
from bench.report.tables import (breakdown_markdown, describe_test, fmt_p, format_segment_table,
                                 latex_grid, legend, markdown_grid, stat_cells, tex, wide_summary)


def _write_tables(rf: RunFolder, stats: Stats, seg: pd.DataFrame, out: Path) -> dict[str, Path]:
    """summary.md (the main table + legend), summary.csv, significance.csv, segments.csv and
    summary.tex."""
    cols, base, alpha = stats.metrics, stats.baseline, stats.alpha
    n_users = int(stats.summary["n_users"].max())
    titles = [pretty(c) for c in cols]
    cells = stat_cells(stats)
    table = markdown_grid(cells, rf.labels, cols, titles, {base: f"{base} (baseline)"})
    warning = f"**{rf.incomplete}**\n\n" if rf.incomplete else ""
    (out / "summary.md").write_text(f"{warning}{table}\n\n{legend(stats, n_users)}\n",
                                    encoding="utf-8")
    wide_summary(stats, rf.names).to_csv(out / "summary.csv", index=False)
    stats.significance.to_csv(out / "significance.csv", index=False)
    seg.to_csv(out / "segments.csv", index=False)
    simulated = " Users are simulated." if rf.notes else ""
    caption = (f"{tex(rf.name)} on {tex(rf.dataset)}: mean over users (macro). Bold: best per "
               f"column. $^{{\\dagger}}$: differs from {tex(base)} at $\\alpha={alpha}$ "
               f"({tex(describe_test(stats))}, Holm-Bonferroni corrected); "
               f"$\\uparrow$/$\\downarrow$: direction.{simulated}")
    label = "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", rf.name).strip("-")
    (out / "summary.tex").write_text(latex_grid(cells, rf.labels, cols, titles, caption, label),
                                     encoding="utf-8")
    names = ("summary.md", "summary.csv", "significance.csv", "segments.csv", "summary.tex")
    return {n: out / n for n in names}


def _write_plots(rf: RunFolder, stats: Stats, curve_stats: Stats, out: Path,
                 seed: int) -> dict[str, Path]:
    """leaderboard.png, m_mrr_curves.png (the few retrievers that matter), ablation.png (with
    persrv* ablations), user_clusters.png (with a history sample); one style per retriever, shared with the runner's plots/ (same label set)."""
    from bench.report.leaderboard import leaderboard
    styles = plots.style_for([*rf.labels, *rf.failed])
    main = metric_name("m_mrr", max(rf.ks))
    board = leaderboard(rf, main, stats.n_boot, seed)
    paths = (plots.plot_leaderboard(board, out / "leaderboard.png"),
             plots.plot_curves(curve_stats.summary, rf.labels, rf.ks, out / "m_mrr_curves.png",
                               styles, baseline=stats.baseline, names=rf.names),
             plots.plot_ablation(curve_stats.summary, stats.significance, *ablation_group(rf),
                                 main, out / "ablation.png", styles),
             plots.plot_user_clusters(rf.history, out / "user_clusters.png", seed=seed))
    return {p.name: p for p in paths if p is not None}


def _differences_section(rf: RunFolder, stats: Stats) -> list[str]:
    sig, cols = stats.significance, stats.metrics
    md = [f"## Differences from `{stats.baseline}` (Δ mean over users, Holm-adjusted p)", ""]
    base_rows = sig[sig["family"] == "baseline"].assign(
        cell=lambda f: [f"{d:+.4f} (p={fmt_p(p)})" for d, p in zip(f["diff"], f["p_holm"])])
    if not len(base_rows):
        return md + ["Only one retriever: nothing to compare."]
    wide = base_rows.pivot(index="retriever", columns="metric", values="cell")
    md += ["| retriever | " + " | ".join(pretty(c) for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    return md + [f"| {lb} | " + " | ".join(wide.at[lb, c] for c in cols) + " |"
                 for lb in rf.labels if lb in wide.index]


def _floor_section(rf: RunFolder, main: str) -> list[str]:
    """Δ of the headline vs the best floor baseline (paired 95% CI over users), with each
    retriever's tie-aware value and coverage when the per-request files carry them, and how
    often this dataset's evaluation split has been evaluated (the output folder's ledger)."""
    from bench.report.stats import floor_deltas
    floor, deltas = floor_deltas(rf.per_request, rf.names, main)
    if floor is None:
        return []
    coverage = {}
    if (rf.path / "results.csv").is_file():
        table = pd.read_csv(rf.path / "results.csv")
        if "coverage" in table:
            coverage = dict(zip(table["retriever"].astype(str), table["coverage"]))
    md = ["", f"## Against the strongest floor baseline (`{floor}`, {pretty(main)})", "",
          "Floor baselines: query-lookup, user-history, popularity (docs/ARCHITECTURE.md, "
          "'Fair comparison'). Δ = retriever − floor, mean over users, 95% paired bootstrap CI.",
          "", f"| retriever | {pretty(main)} | tie-aware | coverage | Δ vs {floor} [95% CI] |",
          "|---|---:|---:|---:|---:|"]
    for lb in rf.labels:
        df = rf.per_request[lb]
        tie = df[main + "_tie_aware"] if main + "_tie_aware" in df else None
        coverage = {k: v for k, v in coverage.items() if v == v}  # NaN: not measured
        users = df.groupby(df["user_id"].astype(str))
        value = users[main].mean().mean()
        tie_v = f"{users[main + '_tie_aware'].mean().mean():.4f}" if tie is not None else "–"
        cov = f"{coverage[lb]:.0%}" if lb in coverage else "–"
        d = deltas.get(lb)
        delta = "(floor)" if lb == floor else (f"{d[0]:+.4f} [{d[1]:+.3f}, {d[2]:+.3f}]"
                                               if d else "–")
        md.append(f"| {lb} | {value:.4f} | {tie_v} | {cov} | {delta} |")
    return md


def _evaluations_line(rf: RunFolder) -> list[str]:
    """How many evaluations per split this dataset has had on this machine (the ledger
    :func:`bench.experiment.ledger_dir` keeps)."""
    import json
    try:
        report = json.loads((rf.path / "data_report.json").read_text(encoding="utf-8"))
        fingerprint = str(report.get("dataset", {}).get("fingerprint", ""))
        from bench.ledger import LEDGER, ledger_dir
        ledger = ledger_dir() / LEDGER
        entry = json.loads(ledger.read_text(encoding="utf-8")).get(fingerprint) \
            if fingerprint and ledger.exists() else None
    except (OSError, ValueError, AttributeError):
        return []
    if not entry:
        return []
    text = ", ".join(f"{split}: {n}" for split, n in sorted(entry.items()))
    return ["", f"Evaluations of dataset `{fingerprint}` on this machine: {text}. Choose "
            "settings on validation; each test evaluation after the first is another look at "
            "the test split."]


def _ablation_section(stats: Stats, curve_stats: Stats, main: str) -> list[str]:
    abl = stats.significance[stats.significance["family"] == "ablation"]
    if not len(abl):
        return []
    full = abl["baseline"].iloc[0]
    means = curve_stats.summary.query("metric == @main").set_index("retriever")["mean"]
    return ["", f"## Ablations against `{full}` ({pretty(main)})", "",
            f"| variant | {pretty(main)} | Δ vs {full} | p | p (Holm, {len(abl)} tests) |",
            "|---|---:|---:|---:|---:|"] + \
        [f"| {r.retriever} | {means[r.retriever]:.4f} | {r.diff:+.4f}"
         f"{'†' if r.significant else ''} | {fmt_p(r.p_value)} | {fmt_p(r.p_holm)} |"
         for r in abl.itertuples()]


def _breakdown_section(rf: RunFolder, seg: pd.DataFrame, metric: str, top_n: int) -> list[str]:
    """The DESIGN §6 segment table (when segments.parquet has those columns), then one table
    per breakdown dimension."""
    if not len(seg):
        return []
    md = ["", "## Breakdowns (macro within each group)", ""]
    m = re.match(r"^(\w+?)_at_(\d+)$", metric)
    seg_table = format_segment_table(segment_wide(seg, m.group(1), int(m.group(2))),
                                     m.group(1), int(m.group(2)))
    if seg_table:
        md += [f"### Segments (docs/ARCHITECTURE.md, 'Metrics'): {pretty(metric)} per retriever "
               "(n = requests)", "",
               seg_table, ""]
    n_groups = {d: rf.segments[d].nunique(dropna=False) for d in BREAKDOWNS
                if d in rf.segments.columns}
    return md + [breakdown_markdown(seg, metric, rf.labels, top_n, n_groups)]


def report_folder(folder: str | Path, baseline: str | None = None, out: str | Path | None = None,
                  metrics=None, n_boot: int = 2000, seed: int = 0, test: str = "permutation",
                  alpha: float = 0.05, n_perm: int = 10000, top_n: int = 10) -> dict[str, Path]:
    """Write the report of a run folder into ``out`` (default ``folder/report``).

    Files (keys of the returned dict): report.md, report.html (the same, self-contained: images
    inlined), summary.md (the main table + legend), summary.csv, significance.csv, segments.csv,
    summary.tex, and the PNGs leaderboard.png, m_mrr_curves.png, ablation.png (when there are
    ``persrv*`` ablations), user_clusters.png (with a history sample).
    """
    rf = load_folder(folder)
    cols = resolve_metrics(rf, metrics)
    base = resolve_baseline(rf, baseline)
    stats = compute_stats(rf, cols, base, n_boot, seed, test, alpha, n_perm)
    seg = breakdowns(rf, cols, top_n)
    out = Path(out) if out is not None else rf.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = _write_tables(rf, stats, seg, out)
    main = metric_name("m_mrr", max(rf.ks))
    curves = [metric_name("m_mrr", k) for k in rf.ks]
    curve_stats = stats if set(curves) <= set(cols) else \
        compute_stats(rf, curves, base, n_boot, seed, test, alpha, n_perm)
    written.update(_write_plots(rf, stats, curve_stats, out, seed))

    n_users = int(stats.summary["n_users"].max())
    n_requests = len(next(iter(rf.per_request.values())))
    md = [f"# Report: {rf.name} on {rf.dataset}", ""]
    md += [f"**{rf.incomplete}**", ""] if rf.incomplete else []
    md += [*rf.notes, ""] if rf.notes else []
    md += [f"{n_users} users, {n_requests} requests; baseline `{base}`."
           + (f" No results (failed): {', '.join(rf.failed)}." if rf.failed else ""), "",
           "## Summary", "", written["summary.md"].read_text(encoding="utf-8"),
           "![leaderboard with 95% CI](leaderboard.png)", "",
           "![M-MRR@k with 95% CI](m_mrr_curves.png)", ""]
    md += _differences_section(rf, stats)
    md += _floor_section(rf, main)
    md += _evaluations_line(rf)
    md += _ablation_section(stats, curve_stats, main)
    if "ablation.png" in written:
        md += ["", "![ablations](ablation.png)"]
    md += _breakdown_section(rf, seg, main if main in cols else cols[0], top_n)
    if "user_clusters.png" in written:
        md += ["", "## A sample user's history", "",
               ("PCA of the image embeddings of the user's train clicks, coloured by k-means "
                "cluster (k = min(5, n)); marker shape = ground-truth style; X = centroids."), "",
               "![user history clusters](user_clusters.png)"]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    written["report.md"] = out / "report.md"
    written["report.html"] = write_html(out / "report.md", out / "report.html",
                                        f"Report: {rf.name} on {rf.dataset}")
    return written


def compare_folders(folders: list[str | Path], out: str | Path, metric: str | None = None, *,
                    baseline: str | None = None, n_boot: int = 2000, seed: int = 0,
                    test: str = "permutation", alpha: float = 0.05,
                    n_perm: int = 10000) -> dict[str, Path]:
    """One table of the retrievers over several experiments (columns: their datasets) for one
    metric (default M-MRR at the largest k of the first folder), each against its own baseline,
    Holm-corrected over the whole table. Writes compare.md, compare.csv and compare.tex."""
    rfs = [load_folder(f) for f in folders]
    if not rfs:
        raise ReportError("compare needs at least one run folder")
    col = resolve_metrics(rfs[0], [metric])[0] if metric else metric_name("m_mrr", max(rfs[0].ks))
    titles: list[str] = []
    frames = []
    for rf in rfs:
        resolve_metrics(rf, [col])  # the metric must exist everywhere
        title = rf.dataset if rf.dataset not in titles else f"{rf.dataset} ({rf.name})"
        title = title if title not in titles else f"{title} #{len(titles) + 1}"
        titles.append(title)
        base = resolve_baseline(rf, baseline)
        st = compute_stats(rf, [col], base, n_boot, seed, test, alpha, n_perm)
        sig = st.significance[st.significance["family"] == "baseline"]
        frames.append(st.summary.merge(sig[["retriever", "p_value", "diff"]], on="retriever",
                                       how="left").assign(experiment=rf.name, dataset=title,
                                                          folder=str(rf.path), baseline=base))
    table = pd.concat(frames, ignore_index=True)
    table["p_holm"] = holm(table["p_value"].to_numpy())
    table["significant"] = table["p_holm"] < alpha
    table["direction"] = np.sign(table["diff"].fillna(0)).astype(int)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table[["dataset", "experiment", "retriever", "metric", "mean", "ci_low", "ci_high", "n_users",
           "baseline", "diff", "p_value", "p_holm", "significant", "direction", "folder"]] \
        .to_csv(out / "compare.csv", index=False)
    cells = table.rename(columns={"retriever": "row", "dataset": "col"})
    rows = list(dict.fromkeys(table["retriever"]))
    bases = ", ".join(f"{t}: `{b}`"
                      for t, b in zip(titles, table.drop_duplicates("dataset")["baseline"]))
    legend_text = (f"{pretty(col)}, mean over users (macro) with 95% bootstrap CI. † = differs "
                   f"from that experiment's baseline ({bases}) at α = {alpha}, Holm-Bonferroni "
                   f"over {int(table['p_value'].notna().sum())} comparisons "
                   f"({describe_test(st)}); ▲/▼ direction. Bold: best.")
    notes = sorted({n for rf in rfs for n in rf.notes})
    md = "\n".join([f"# {pretty(col)} across experiments", "", *notes, "",
                    markdown_grid(cells, rows, titles, titles), "", legend_text, ""])
    (out / "compare.md").write_text(md, encoding="utf-8")
    caption = (f"{tex(pretty(col))} per dataset, mean over users. Bold: best per column. "
               f"$^{{\\dagger}}$: differs from the experiment's baseline (Holm-corrected, "
               f"$\\alpha={alpha}$).{' Users are simulated.' if notes else ''}")
    (out / "compare.tex").write_text(latex_grid(cells, rows, titles, titles, caption,
                                                "tab:compare"), encoding="utf-8")
    return {n: out / n for n in ("compare.md", "compare.csv", "compare.tex")}
