"""Reports for papers (issue 8): macro means with bootstrap CIs, paired significance tests with
Holm-Bonferroni correction, breakdowns by user segment, LaTeX tables, and fetching runs from MLflow.

Everything reads a run folder as the runner writes it (``config.yaml``, ``results.md``,
``retrievers/<label>/per_request.parquet``, ``segments.parquet``, ``history_sample.parquet``);
:func:`fetch_run` rebuilds that layout from a parent run's MLflow artifacts. Statistics are over
users: a user's value is the mean over the user's requests, the reported figure is the mean over
users (DESIGN §6), intervals resample users, and tests pair users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.metrics import METRICS, metric_name
from bench.report_fetch import fetch_run, read_parent_run
from bench.report_tables import ARROWS, _tex, latex_grid, markdown_grid

__all__ = [
    "TESTS", "BREAKDOWNS", "SEGMENT_ORDER", "PRETTY", "ARROWS", "ReportError", "RunNotFoundError",
    "bootstrap_ci", "paired_test", "holm", "user_means", "RunFolder", "load_folder", "pretty",
    "resolve_metrics", "resolve_baseline", "ablation_group", "Stats", "compute_stats", "breakdowns",
    "markdown_grid", "latex_grid", "report_folder", "compare_folders", "read_parent_run",
    "fetch_run",
]

TESTS = ("permutation", "t-test")
BREAKDOWNS = ("segment", "language", "gt_style", "gt_pack", "gt_topic")
SEGMENT_ORDER = ("cold", "light", "heavy")
PRETTY = {"m_mrr": "M-MRR", "mrr": "MRR", "recall": "Recall", "ndcg": "NDCG"}
_METRIC_RE = re.compile(r"^(m_mrr|mrr|recall|ndcg)_at_(\d+)$")
_TITLE_RE = re.compile(r"^#\s+(?P<name>.+?) on (?P<dataset>.+?) \(", re.M)
_CHUNK = 4_000_000  # elements per resampling block (bounds memory at paper scale)


class ReportError(BenchError):
    """A run folder cannot be reported on (missing file, unknown baseline or metric)."""


class RunNotFoundError(ReportError):
    """No MLflow run or experiment matches what was asked for."""


# ------------------------------------------------------------------------------------ statistics

def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of the mean over rows (users), resampling rows with replacement.

    ``values``: shape (n,) or (n, m) (columns share the resamples). Returns ``(low, high)``, each
    a float or an (m,) array. The same seed and n give the same resamples.
    """
    x = np.asarray(values, dtype=np.float64)
    one = x.ndim == 1
    x = x.reshape(len(x), -1)
    n, m = x.shape
    if n == 0:
        nan = np.full(m, np.nan)
        return (nan[0], nan[0]) if one else (nan, nan)
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, m))
    chunk = max(1, min(n_boot, _CHUNK // n))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=size * n).reshape(size, n)
        means[start:start + size] = counts @ x / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return (float(low[0]), float(high[0])) if one else (low, high)


def paired_test(a, b, test: str = "permutation", n_perm: int = 10000, seed: int = 0):
    """Two-sided p-values for mean(b - a) != 0 over paired rows (users), per column.

    ``permutation``: sign-flip test, ``n_perm`` seeded random flips, p = (hits + 1)/(n_perm + 1);
    ``t-test``: :func:`scipy.stats.ttest_rel`. Identical inputs give p = 1.
    """
    if test not in TESTS:
        raise ReportError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    one = a.ndim == 1
    d = (b - a).reshape(len(a), -1)
    n, m = d.shape
    mean, spread = d.mean(axis=0), d.std(axis=0)
    if n == 0:
        p = np.full(m, np.nan)
    elif test == "permutation":
        rng = np.random.default_rng(seed)
        observed = np.abs(mean)
        tol = 1e-9 * np.maximum(np.abs(d).max(axis=0), 1e-300)
        hits = np.zeros(m)
        chunk = max(1, min(n_perm, _CHUNK // n))
        for start in range(0, n_perm, chunk):
            size = min(chunk, n_perm - start)
            bits = np.unpackbits(rng.integers(0, 256, size=(size, (n + 7) // 8), dtype=np.uint8),
                                 axis=1, count=n)  # one random bit per user: flip or keep
            flipped = 2.0 * (bits.astype(np.float64) @ d) - d.sum(axis=0)  # sum of sign * d
            hits += (np.abs(flipped) / n >= observed - tol).sum(axis=0)
        p = (hits + 1.0) / (n_perm + 1.0)
    else:
        import warnings

        from scipy import stats
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences
            p = np.atleast_1d(stats.ttest_rel(b.reshape(n, -1), a.reshape(n, -1), axis=0).pvalue)
        constant = spread == 0  # no variation: decided by the mean alone
        p = np.where(constant, np.where(mean == 0, 1.0, 0.0), p)
    return float(p[0]) if one else p


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (same order as given; NaNs stay NaN and do not count)."""
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


# ------------------------------------------------------------------------------------ run folder

@dataclass
class RunFolder:
    """What a report needs from a run folder; ``labels`` are the retrievers with results."""

    path: Path
    config: dict
    name: str
    dataset: str
    labels: list[str]
    names: dict[str, str]
    per_request: dict[str, pd.DataFrame]
    failed: list[str]
    ks: list[int]
    segments: pd.DataFrame | None
    history: pd.DataFrame | None
    notes: list[str]


def load_folder(folder: str | Path) -> RunFolder:
    """Read a run folder (the runner's layout); :class:`ReportError` names what is missing."""
    import yaml
    path = Path(folder)
    if not path.is_dir():
        raise ReportError(f"run folder {path} does not exist")
    config = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    specs = config.get("retrievers") or []
    names = {(s.get("label") or s["name"]): s["name"] for s in specs if isinstance(s, dict)}
    order = list(names)
    if (path / "results.csv").is_file():
        listed = pd.read_csv(path / "results.csv")["retriever"].astype(str)
        order += [r for r in listed if r not in order]
    rdir = path / "retrievers"
    if rdir.is_dir():
        order += sorted(p.name for p in rdir.iterdir() if p.is_dir() and p.name not in order)
    per_request, failed = {}, []
    for label in order:
        f = rdir / label / "per_request.parquet"
        if f.is_file():
            per_request[label] = pd.read_parquet(f)
        else:
            failed.append(label)
    if not per_request:
        raise ReportError(f"{path}: no retrievers/<label>/per_request.parquet found; is this a "
                          "persrv-bench run folder?")
    first = next(iter(per_request.values()))
    ks = sorted({int(m.group(2)) for c in first.columns if (m := _METRIC_RE.match(c))})
    if not ks or "user_id" not in first.columns:
        raise ReportError(f"{path}: per_request.parquet has no user_id or metric columns "
                          "(m_mrr_at_<k>, ...)")
    results_md = (path / "results.md").read_text(encoding="utf-8") \
        if (path / "results.md").is_file() else ""
    title = _TITLE_RE.search(results_md)
    ds_spec = config.get("dataset") or {}
    dataset = title.group("dataset") if title else (
        ds_spec.get("builder") or Path(ds_spec.get("path") or path.name).name)
    notes = [line.strip() for line in results_md.splitlines() if "simulated" in line.lower()]
    read = lambda n: pd.read_parquet(path / n) if (path / n).is_file() else None  # noqa: E731
    return RunFolder(path, config, str(config.get("name") or path.name), str(dataset),
                     list(per_request), {lb: names.get(lb, lb) for lb in per_request},
                     per_request, failed, ks, read("segments.parquet"),
                     read("history_sample.parquet"), notes)


def pretty(column: str) -> str:
    """``m_mrr_at_10`` -> ``M-MRR@10``."""
    m = _METRIC_RE.match(column)
    return f"{PRETTY[m.group(1)]}@{m.group(2)}" if m else column


def resolve_metrics(rf: RunFolder, metrics=None) -> list[str]:
    """Metric columns: given names (``ndcg`` means at the largest k), or M-MRR at every k plus
    MRR/Recall/NDCG at the largest k."""
    kmax = max(rf.ks)
    if not metrics:
        return [metric_name("m_mrr", k) for k in rf.ks] + \
            [metric_name(m, kmax) for m in METRICS if m != "m_mrr"]
    cols = [metric_name(m, kmax) if m in METRICS else m for m in metrics]
    available = list(next(iter(rf.per_request.values())).columns)
    bad = [c for c in cols if c not in available or not _METRIC_RE.match(c)]
    if bad:
        raise ReportError(f"unknown metric {bad[0]!r}; available: "
                          f"{', '.join(c for c in available if _METRIC_RE.match(c))}")
    return cols


def resolve_baseline(rf: RunFolder, baseline: str | None = None) -> str:
    """``baseline`` (label or registered name), else the config's, else ``bm25``, else the first."""
    for wanted in (baseline, rf.config.get("baseline")):
        if wanted:
            hits = [lb for lb in rf.labels if lb == wanted] or \
                   [lb for lb in rf.labels if rf.names[lb] == wanted]
            if not hits:
                raise ReportError(f"baseline {wanted!r} is not among the retrievers with results "
                                  f"in {rf.path}: {', '.join(rf.labels)}")
            return hits[0]
    for lb in rf.labels:
        if lb == "bm25" or rf.names[lb] == "bm25":
            return lb
    return rf.labels[0]


def ablation_group(rf: RunFolder) -> tuple[list[str], str | None]:
    """Retrievers whose label or name starts with ``persrv``, and the full one among them."""
    group = [lb for lb in rf.labels if lb.startswith("persrv") or rf.names[lb].startswith("persrv")]
    full = next((lb for lb in group if lb == "persrv"), None)
    if full is None:
        specs = {s.get("label") or s["name"]: s for s in rf.config.get("retrievers") or []}
        full = next((lb for lb in group if rf.names[lb] == "persrv"
                     and not (specs.get(lb) or {}).get("params")), None)
    return group, full


# ------------------------------------------------------------------------------------ folder stats

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

    def compare(ref: str, others: list[str], cols: list[str], family: str) -> pd.DataFrame:
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
                p_values[lb] = paired_test(a.to_numpy(), b.to_numpy(), test, n_perm, seed)
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

    parts = [compare(baseline, [lb for lb in rf.labels if lb != baseline], metrics, "baseline")]
    group, full = ablation_group(rf)
    if full and len(group) > 1:
        parts.append(compare(full, [lb for lb in group if lb != full], [main], "ablation"))
    return Stats(metrics, baseline, summary, pd.concat(parts, ignore_index=True), test, n_boot,
                 n_perm, alpha)


def breakdowns(rf: RunFolder, metrics: list[str], top_n: int = 10) -> pd.DataFrame:
    """Macro mean per (dimension, group, retriever) with request and user counts.

    Dimensions: history segment, query language and the ``gt_*`` columns present (those keep their
    ``top_n`` groups by requests)."""
    cols = ["dimension", "group", "n_requests", "n_users", "retriever", *metrics]
    if rf.segments is None:
        return pd.DataFrame(columns=cols)
    seg = rf.segments.assign(qid=rf.segments["qid"].astype(str))
    dims = [d for d in BREAKDOWNS if d in seg.columns]
    frames = []
    for lb, pr in rf.per_request.items():
        joined = pr.assign(qid=pr["qid"].astype(str), user_id=pr["user_id"].astype(str)) \
            .drop(columns=[d for d in dims if d in pr.columns]) \
            .merge(seg[["qid", *dims]], on="qid", how="left")
        for dim in dims:
            key = joined[dim].astype(object).where(joined[dim].notna(), "(unknown)").astype(str)
            keep = key.value_counts().index[:top_n] if dim.startswith("gt_") else key.unique()
            part = joined[key.isin(keep)].assign(group=key)
            per_user = part.groupby(["group", "user_id"])[metrics].mean()
            table = per_user.groupby(level="group").mean()
            table["n_users"] = per_user.groupby(level="group").size()
            table["n_requests"] = part.groupby("group").size()
            frames.append(table.reset_index().assign(dimension=dim, retriever=lb))
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)[cols]
    rank = {g: i for i, g in enumerate(SEGMENT_ORDER)}
    out["_dim"] = out["dimension"].map({d: i for i, d in enumerate(BREAKDOWNS)})
    out["_seg"] = out["group"].map(rank).fillna(len(rank))
    out["_n"] = -out["n_requests"]
    out = out.sort_values(["_dim", "_seg", "_n", "group"], kind="stable")
    return out.drop(columns=["_dim", "_seg", "_n"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------ tables

def _cells(stats: Stats) -> pd.DataFrame:
    """One row per (retriever, metric): mean, CI and the baseline comparison's verdict."""
    sig = stats.significance[stats.significance["family"] == "baseline"]
    cells = stats.summary.merge(sig[["retriever", "metric", "p_value", "p_holm", "significant",
                                     "direction"]], on=["retriever", "metric"], how="left")
    cells["significant"] = cells["significant"].astype("boolean").fillna(False).astype(bool)
    return cells.rename(columns={"retriever": "row", "metric": "col"})


def _test_words(stats: Stats) -> str:
    return (f"paired sign-flip permutation test over users, {stats.n_perm} permutations"
            if stats.test == "permutation" else "paired t-test over users")


def _legend(stats: Stats, n_users: int) -> str:
    n = int((stats.significance["family"] == "baseline").sum())
    return (f"Mean over {n_users} users of each user's mean over requests (macro), with 95% "
            f"percentile bootstrap CI over users ({stats.n_boot} resamples). † = differs from "
            f"the baseline `{stats.baseline}` at α = {stats.alpha} after Holm-Bonferroni "
            f"correction over all {n} comparisons in the table ({_test_words(stats)}); ▲/▼ = "
            "above/below the baseline. Bold: best in column.")


def _p(p: float) -> str:
    return "–" if pd.isna(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _wide_summary(stats: Stats, names: dict[str, str]) -> pd.DataFrame:
    cells = _cells(stats)
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


def _breakdown_markdown(seg: pd.DataFrame, metric: str, labels: list[str], top_n: int,
                        n_groups: dict[str, int]) -> str:
    titles = {"segment": "history segment (cold: no train clicks, light: < 10, heavy: >= 10)",
              "language": "query language"}
    parts = []
    for dim in dict.fromkeys(seg["dimension"]):
        sub = seg[seg["dimension"] == dim]
        wide = sub.pivot_table(index="group", columns="retriever", values=metric, sort=False)
        counts = sub.drop_duplicates("group").set_index("group")
        extra = f" (top {top_n} of {n_groups[dim]} by requests)" \
            if n_groups.get(dim, 0) > top_n else ""
        lines = [f"### By {titles.get(dim, dim)}{extra}: {pretty(metric)}", "",
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


# ------------------------------------------------------------------------------------ reports

def report_folder(folder: str | Path, baseline: str | None = None, out: str | Path | None = None,
                  metrics=None, n_boot: int = 2000, seed: int = 0, test: str = "permutation",
                  alpha: float = 0.05, n_perm: int = 10000, top_n: int = 10) -> dict[str, Path]:
    """Write the report of a run folder into ``out`` (default ``folder/report``).

    Files (keys of the returned dict): report.md, summary.md (the main table + legend),
    summary.csv, significance.csv, segments.csv, summary.tex, and the PNGs m_mrr_curves.png,
    ablation.png (when there are ``persrv*`` ablations), user_clusters.png (with a history sample).
    """
    from bench import report_plots as plots
    rf = load_folder(folder)
    cols = resolve_metrics(rf, metrics)
    base = resolve_baseline(rf, baseline)
    stats = compute_stats(rf, cols, base, n_boot, seed, test, alpha, n_perm)
    seg = breakdowns(rf, cols, top_n)
    out = Path(out) if out is not None else rf.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, text: str) -> None:
        (out / name).write_text(text, encoding="utf-8")
        written[name] = out / name

    n_users = int(stats.summary["n_users"].max())
    titles = [pretty(c) for c in cols]
    cells = _cells(stats)
    row_names = {base: f"{base} (baseline)"}
    table = markdown_grid(cells, rf.labels, cols, titles, row_names)
    summary_md = f"{table}\n\n{_legend(stats, n_users)}\n"
    put("summary.md", summary_md)
    _wide_summary(stats, rf.names).to_csv(out / "summary.csv", index=False)
    stats.significance.to_csv(out / "significance.csv", index=False)
    seg.to_csv(out / "segments.csv", index=False)
    written.update({n: out / n for n in ("summary.csv", "significance.csv", "segments.csv")})
    simulated = " Users are simulated." if rf.notes else ""
    caption = (f"{_tex(rf.name)} on {_tex(rf.dataset)}: mean over users (macro). Bold: best per "
               f"column. $^{{\\dagger}}$: differs from {_tex(base)} at $\\alpha={alpha}$ "
               f"({_tex(_test_words(stats))}, Holm-Bonferroni corrected); "
               f"$\\uparrow$/$\\downarrow$: direction.{simulated}")
    put("summary.tex", latex_grid(cells, rf.labels, cols, titles, caption,
                                  "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", rf.name).strip("-")))

    kmax = max(rf.ks)
    main = metric_name("m_mrr", kmax)
    curves = [metric_name("m_mrr", k) for k in rf.ks]
    curve_stats = stats if set(curves) <= set(cols) else \
        compute_stats(rf, curves, base, n_boot, seed, test, alpha, n_perm)
    for path in (plots.plot_curves(curve_stats.summary, rf.labels, rf.ks, out / "m_mrr_curves.png"),
                 plots.plot_ablation(curve_stats.summary, stats.significance,
                                     *ablation_group(rf), main, out / "ablation.png"),
                 plots.plot_user_clusters(rf.history, out / "user_clusters.png", seed=seed)):
        if path is not None:
            written[path.name] = path

    sig = stats.significance
    n_requests = len(next(iter(rf.per_request.values())))
    md = [f"# Report: {rf.name} on {rf.dataset}", ""]
    md += [*rf.notes, ""] if rf.notes else []
    md += [f"{n_users} users, {n_requests} requests; baseline `{base}`."
           + (f" No results (failed): {', '.join(rf.failed)}." if rf.failed else ""), "",
           "## Summary", "", summary_md, "![M-MRR@k with 95% CI](m_mrr_curves.png)", "",
           f"## Differences from `{base}` (Δ mean over users, Holm-adjusted p)", ""]
    base_rows = sig[sig["family"] == "baseline"].assign(
        cell=lambda f: [f"{d:+.4f} (p={_p(p)})" for d, p in zip(f["diff"], f["p_holm"])])
    if len(base_rows):
        wide = base_rows.pivot(index="retriever", columns="metric", values="cell")
        md += ["| retriever | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(cols)]
        md += [f"| {lb} | " + " | ".join(wide.at[lb, c] for c in cols) + " |"
               for lb in rf.labels if lb in wide.index]
    else:
        md.append("Only one retriever: nothing to compare.")
    abl = sig[sig["family"] == "ablation"]
    if len(abl):
        full = abl["baseline"].iloc[0]
        md += ["", f"## Ablations against `{full}` ({pretty(main)})", "",
               f"| variant | {pretty(main)} | Δ vs {full} | p | p (Holm, {len(abl)} tests) |",
               "|---|---:|---:|---:|---:|"]
        means = curve_stats.summary.query("metric == @main").set_index("retriever")["mean"]
        md += [f"| {r.retriever} | {means[r.retriever]:.4f} | {r.diff:+.4f}"
               f"{'†' if r.significant else ''} | {_p(r.p_value)} | {_p(r.p_holm)} |"
               for r in abl.itertuples()]
    if "ablation.png" in written:
        md += ["", "![ablations](ablation.png)"]
    if len(seg):
        n_groups = {d: rf.segments[d].nunique(dropna=False) for d in BREAKDOWNS
                    if d in rf.segments.columns}
        md += ["", "## Breakdowns (macro within each group)", "",
               _breakdown_markdown(seg, main if main in cols else cols[0], rf.labels, top_n,
                                   n_groups)]
    if "user_clusters.png" in written:
        md += ["", "## A sample user's history", "",
               "PCA of the image embeddings of the user's train clicks, coloured by k-means "
               "cluster (k = min(5, n)); marker shape = ground-truth style; X = centroids.", "",
               "![user history clusters](user_clusters.png)"]
    put("report.md", "\n".join(md) + "\n")
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
    legend = (f"{pretty(col)}, mean over users (macro) with 95% bootstrap CI. † = differs from "
              f"that experiment's baseline ({bases}) at α = {alpha}, Holm-Bonferroni over "
              f"{int(table['p_value'].notna().sum())} comparisons ({_test_words(st)}); ▲/▼ "
              "direction. Bold: best.")
    notes = sorted({n for rf in rfs for n in rf.notes})
    md = "\n".join([f"# {pretty(col)} across experiments", "", *notes, "",
                    markdown_grid(cells, rows, titles, titles), "", legend, ""])
    (out / "compare.md").write_text(md, encoding="utf-8")
    caption = (f"{_tex(pretty(col))} per dataset, mean over users. Bold: best per column. "
               f"$^{{\\dagger}}$: differs from the experiment's baseline (Holm-corrected, "
               f"$\\alpha={alpha}$).{' Users are simulated.' if notes else ''}")
    (out / "compare.tex").write_text(latex_grid(cells, rows, titles, titles, caption,
                                                "tab:compare"), encoding="utf-8")
    return {n: out / n for n in ("compare.md", "compare.csv", "compare.tex")}
