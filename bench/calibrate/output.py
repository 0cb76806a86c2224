"""The calibration table as text, a dose-response plot, and its MLflow run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.calibrate.effects import EFFECTS


def _num(x: float, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def format_table(cal) -> str:
    """One markdown table per effect: level, measure, role, delta, 95% CI, users, MDE, and a
    verdict (CI excludes 0 or not)."""
    lines = []
    t = cal.table
    for effect in dict.fromkeys(t["effect"]):
        part = t[t["effect"] == effect]
        e = EFFECTS[effect]
        lines.append(f"effect {effect}: {e.description} ({e.knob}); {cal.metric}, validation "
                     f"split, paired per-user deltas, {int(part['seeds'].iloc[0])} seed(s)")
        lines.append("")
        lines.append("| level | measure | role | delta | 95% CI | users | MDE (80% power) | CI |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for _, r in part.iterrows():
            verdict = ("n/a" if math.isnan(r["ci_low"]) else
                       "> 0" if r["ci_low"] > 0 else "< 0" if r["ci_high"] < 0 else "includes 0")
            lines.append(f"| {r['level']} | {r['label']} | {r['role']} | {_num(r['delta'])} | "
                         f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}] | {int(r['n_users'])} | "
                         f"{_num(r['mde'], sign=False)} | {verdict} |")
        lines.append("")
    if len(cal.diagnostics):
        lines.append("persrv diagnostics (mean over seeds): singleton-cluster share, median "
                     "radius, share of re-rank boosts on the user's own earlier stickers")
        lines.append("")
        lines.append("| effect | level | singleton share | radius p50 | radius p90 | boosts on own |")
        lines.append("|---|---|---|---|---|---|")
        for _, r in cal.diagnostics.iterrows():
            lines.append(f"| {r['effect']} | {r['level']} | "
                         f"{_num(r.get('singleton_cluster_share'), False)} | "
                         f"{_num(r.get('radius_p50'), False)} | "
                         f"{_num(r.get('radius_p90'), False)} | "
                         f"{_num(r.get('boost_own_share', float('nan')), False)} |")
        lines.append("")
    return "\n".join(lines)


def plot(cal, path: Path) -> Path:
    """One panel per effect: each measure's delta against the level, 95% CI as error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = cal.table
    effects = list(dict.fromkeys(t["effect"]))
    fig, axes = plt.subplots(1, len(effects), figsize=(4.2 * len(effects), 3.4), squeeze=False)
    for ax, effect in zip(axes[0], effects):
        part = t[t["effect"] == effect]
        levels = list(dict.fromkeys(part["level"]))
        for key in dict.fromkeys(part["measure"]):
            m = part[part["measure"] == key]
            x = [levels.index(v) for v in m["level"]]
            ax.errorbar(x, m["delta"], yerr=[m["delta"] - m["ci_low"], m["ci_high"] - m["delta"]],
                        marker="o", capsize=3, label=m["label"].iloc[0])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set_xlabel(EFFECTS[effect].knob)
        ax.set_title(effect)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel(f"delta {cal.metric}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(cal, folder: Path) -> dict[str, Path]:
    """calibration.csv / .md / .png (and diagnostics.csv) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"csv": folder / "calibration.csv", "md": folder / "calibration.md"}
    cal.table.to_csv(files["csv"], index=False)
    files["md"].write_text(format_table(cal) + "\n", encoding="utf-8")
    files["png"] = plot(cal, folder / "calibration.png")
    if len(cal.diagnostics):
        files["diagnostics"] = folder / "diagnostics.csv"
        cal.diagnostics.to_csv(files["diagnostics"], index=False)
    return files


def log_mlflow(cal, files: dict[str, Path], experiment: str, uri: str | None,
               config_name: str) -> str | None:
    """One run (kind ``calibration``): params (levels, seeds, users, k), metrics
    ``<effect>.<measure>.{delta,ci_low,ci_high,mde,n_users}`` with step = level index, the
    table, plot and diagnostics as artifacts. Returns the run id."""
    from bench.tracking.client import Tracker, git_commit, resolve_tracking_uri
    from bench.tracking.schema import GIT_COMMIT, KIND, KIND_CALIBRATION
    tracker = Tracker(resolve_tracking_uri(uri))
    run_id = tracker.start_run(experiment, f"calibrate-{config_name}",
                               tags={KIND: KIND_CALIBRATION, GIT_COMMIT: git_commit() or ""})
    tracker.log_params(run_id, {k: str(v) for k, v in cal.config.items()})
    t = cal.table
    for effect in dict.fromkeys(t["effect"]):
        part = t[t["effect"] == effect]
        levels = list(dict.fromkeys(part["level"]))
        for _, r in part.iterrows():
            metrics = {f"{effect}.{r['measure']}.{s}": float(r[s])
                       for s in ("delta", "ci_low", "ci_high", "mde", "n_users")
                       if not pd.isna(r[s])}
            tracker.log_metrics(run_id, metrics, step=levels.index(r["level"]))
    for path in files.values():
        tracker.log_artifact(run_id, path)
    tracker.end_run(run_id)
    return run_id
