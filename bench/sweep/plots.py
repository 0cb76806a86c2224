"""The study's PNGs (``plots/`` of the sweep folder and of the study run): optimisation history,
parameter importances, and the objective against ``n_clusters`` per clustering algorithm."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from bench.sweep.space import SearchSpace

log = logging.getLogger(__name__)


def write_plots(study, space: SearchSpace, out: Path) -> list[Path]:
    """PNGs: optimisation history, parameter importances (>= 2 complete trials), objective
    against n_clusters per clustering algorithm (when the space tunes n_clusters)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return written
    from optuna.visualization import matplotlib as ovm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ax = ovm.plot_optimization_history(study, target_name=space.objective_name)
            written.append(_save(ax.figure, out / "optimization_history.png"))
        except Exception as exc:
            log.warning("optimisation-history plot skipped: %s", exc)
        if len(complete) >= 2:
            try:
                ax = ovm.plot_param_importances(study, target_name=space.objective_name)
                written.append(_save(ax.figure, out / "param_importances.png"))
            except Exception as exc:  # e.g. every parameter constant
                log.info("parameter-importance plot skipped: %s", exc)
        plt.close("all")
    path = plot_objective_vs(study, space, "n_clusters", out / "objective_vs_n_clusters.png")
    if path is not None:
        written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.set_size_inches(7.5, 4.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def objective_points(study, space: SearchSpace, param: str
                     ) -> tuple[list[tuple[str, int, float]], dict[str, float]] | None:
    """Complete trials as ``(algorithm, param value, objective)`` rows, and the best objective of
    each algorithm that lacks ``param`` (hdbscan for n_clusters); None when the space lacks it."""
    df = study.trials_dataframe(attrs=("number", "value", "state", "params"))
    # with study.metric_names set (val_<metric>), Optuna names the column value_<name>
    df = df.rename(columns={c: "value" for c in df.columns if c.startswith("value_")})
    if df.empty or "value" not in df:
        return None
    df = df[df["state"] == "COMPLETE"]
    specs = [s for s in space.walk() if s.name == param and s.kind != "value"]
    if not specs or df.empty:
        return None
    algo_col = next((f"params_{s.optuna_name}" for s in space.params
                     if s.name == "cluster_algorithm" and s.kind == "choices"), None)
    fixed_algo = next((str(s.value) for s in space.walk() if s.name == "cluster_algorithm"
                       and s.kind == "value"), None)
    if not any(f"params_{s.optuna_name}" in df for s in specs):
        return None
    better = max if space.direction == "maximize" else min
    rows = []
    others: dict[str, float] = {}
    for _, r in df.iterrows():
        hit = next((s for s in specs if f"params_{s.optuna_name}" in df
                    and r[f"params_{s.optuna_name}"] == r[f"params_{s.optuna_name}"]), None)
        if hit is not None:
            if hit.branch:
                group = str(hit.branch[-1][1])
            elif algo_col and algo_col in df:
                group = str(r[algo_col])
            else:
                group = fixed_algo or "all"
            rows.append((group, int(r[f"params_{hit.optuna_name}"]), float(r["value"])))
        elif algo_col and algo_col in df:
            g = str(r[algo_col])
            others[g] = better(others[g], float(r["value"])) if g in others else float(r["value"])
    return (rows, others) if rows else None


def plot_objective_vs(study, space: SearchSpace, param: str, path: Path) -> Path | None:
    """Objective against one integer parameter, one series per clustering algorithm (scatter of
    every trial and a line through the best per value); algorithms without that parameter
    (hdbscan) appear as a dashed line at their best value. None when the space lacks it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = objective_points(study, space, param)
    if points is None:
        return None
    rows, others = points
    better = max if space.direction == "maximize" else min
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    groups = sorted({g for g, _, _ in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        pts = sorted((x, y) for gg, x, y in rows if gg == g)
        c = colors[i % len(colors)]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], color=c, alpha=0.5, s=18)
        best: dict[int, float] = {}
        for x, y in pts:
            best[x] = better(best[x], y) if x in best else y
        xs = sorted(best)
        ax.plot(xs, [best[x] for x in xs], color=c, marker="o", label=g)
    for j, (g, v) in enumerate(sorted(others.items())):
        ax.axhline(v, linestyle="--", color=colors[(len(groups) + j) % len(colors)],
                   label=f"{g} (best, no {param})")
    ax.set_xlabel(param)
    ax.set_ylabel(f"{space.objective_name} (validation)")
    ax.set_title(f"{space.objective_name} against {param} per algorithm")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
