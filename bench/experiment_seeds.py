"""``run --seeds 0 1 2``: the same experiment once per seed, then mean ± sd per retriever.

A seed changes everything random about a run: the simulated users of a built dataset (the
builder's ``seed``), the protocol's held-out queries (``protocol.seed``), and ``cfg.seed`` (the
retrievers' seeds). Each seed is a full run (its own folder and MLflow parent, nested under one
group run); the group folder holds ``seeds.md`` / ``seeds.csv``: per retriever the mean and
standard deviation over seeds of each headline metric, and for every seed the 95% bootstrap CI
over users of the primary metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.config import ExperimentConfig

#: Builders whose ``seed`` parameter seeds the user simulator.
SIMULATING_BUILDERS = ("synthetic", "emoji-styles", "sticker-queries")


@dataclass
class SeedGroup:
    folder: Path
    seeds: list[int]
    outcomes: list[Any] = field(default_factory=list)
    table: Any = None  # pandas DataFrame, one row per retriever


def seeded_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``cfg`` with every seed it has set to ``seed``."""
    new = cfg.model_copy(deep=True)
    new.seed = seed
    new.seeds = None
    if new.dataset.builder in SIMULATING_BUILDERS:
        new.dataset.params = {**new.dataset.params, "seed": seed}
    protocol = getattr(new, "protocol", None)
    if protocol is not None and hasattr(protocol, "seed"):
        protocol.seed = seed
    new.name = f"{cfg.name}-seed{seed}"
    return new


def user_ci(per_request_path: Path, metric: str, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI over users of ``metric`` (mean over each user's requests first)."""
    import pandas as pd

    from bench.report.stats import bootstrap_ci, user_means
    users = user_means(pd.read_parquet(per_request_path), [metric])[metric].to_numpy()
    lo, hi = bootstrap_ci(users, seed=seed)
    return float(lo), float(hi)


def seeds_table(outcomes: list[Any], seeds: list[int], ks: list[int]):
    """One row per retriever: mean and sd over seeds of M-MRR@k (every k) and the other metrics
    at the largest k; ``ci_seed<N>`` the CI over users of M-MRR@kmax in that seed."""
    import numpy as np
    import pandas as pd
    kmax = max(ks)
    metrics = [f"m_mrr_at_{k}" for k in ks] + [f"{m}_at_{kmax}" for m in ("mrr", "recall",
                                                                          "ndcg")]
    primary = f"m_mrr_at_{kmax}"
    rows = []
    floor, deltas = seed_floor_deltas(outcomes, seeds, primary)
    labels = [r.label for r in outcomes[0].results]
    for label in labels:
        row: dict[str, Any] = {"retriever": label}
        per_seed = [next((r for r in o.results if r.label == label), None) for o in outcomes]
        ok = [r for r in per_seed if r is not None and not r.error]
        row["seeds_ok"] = len(ok)
        for m in metrics:
            values = np.array([r.macro[m] for r in ok]) if ok else np.array([np.nan])
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        for seed, r in zip(seeds, per_seed):
            if r is not None and not r.error and r.folder is not None:
                lo, hi = user_ci(Path(r.folder) / "per_request.parquet", primary, seed)
                row[f"ci_seed{seed}"] = f"[{lo:.3f}, {hi:.3f}]"
        d = deltas.get(label)
        row["best_floor"] = floor or ""
        if d is not None:
            row["delta_floor_seeds"] = ", ".join(f"{v:+.4f}" for v in d["per_seed"].values())
            row["delta_floor"] = f"{d['delta']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def seed_floor_deltas(outcomes: list[Any], seeds: list[int], metric: str, n_boot: int = 2000
                      ) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Per retriever, Δ ``metric`` vs the best floor baseline (the floor with the highest mean
    over seeds) in every seed (paired over that seed's users) and combined: the mean of the
    per-seed Δs with a 95% bootstrap CI that resamples users within each seed (stratified)."""
    import numpy as np

    from bench.report.stats import FLOOR_BASELINES, user_means
    names = {r.label: r.name for o in outcomes for r in o.results}
    users: list[dict[str, Any]] = []
    for o in outcomes:
        users.append({r.label: user_means(r.per_request, [metric])[metric] for r in o.results
                      if not r.error and getattr(r, "per_request", None) is not None})
    floors = [lb for lb in dict.fromkeys(names) if names[lb] in FLOOR_BASELINES
              and all(lb in u for u in users)]
    if not floors:
        return None, {}
    floor = max(floors, key=lambda lb: (np.mean([u[lb].mean() for u in users]), lb))
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    for lb in names:
        if lb == floor or not all(lb in u for u in users):
            continue
        diffs = [(u[lb] - u[floor]).dropna().to_numpy(dtype=float) for u in users]
        per_seed = [float(d.mean()) for d in diffs]
        boots = np.mean([d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
                         for d in diffs], axis=0)
        lo, hi = np.percentile(boots, [2.5, 97.5])
        out[lb] = {"per_seed": dict(zip(seeds, per_seed)), "delta": float(np.mean(per_seed)),
                   "low": float(lo), "high": float(hi)}
    return floor, out


def format_seeds_table(table, ks: list[int], seeds: list[int]) -> str:
    """Markdown: ``mean ± sd`` per metric, then the per-seed CIs of the primary metric."""
    kmax = max(ks)
    metrics = [f"m_mrr_at_{k}" for k in ks] + [f"{m}_at_{kmax}" for m in ("mrr", "recall",
                                                                          "ndcg")]
    ci_cols = [f"ci_seed{s}" for s in seeds if f"ci_seed{s}" in table.columns]
    floor = str(table["best_floor"].iloc[0]) if "best_floor" in table.columns and len(table) \
        else ""
    delta_cols = ["delta_floor_seeds", "delta_floor"] if floor and \
        "delta_floor" in table.columns else []
    head = "| retriever | " + " | ".join(metrics) + " | " + \
        " | ".join(f"seed {c[7:]}: 95% CI m_mrr_at_{kmax}" for c in ci_cols) + \
        "".join([f" | Δ m_mrr_at_{kmax} vs {floor} per seed",
                 " | Δ combined [95% CI]"] if delta_cols else []) + " |"
    lines = [head, "|---|" + "---:|" * (len(metrics) + len(ci_cols) + len(delta_cols))]
    for _, row in table.iterrows():
        cells = [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_sd']:.4f}" for m in metrics]
        cells += [str(row.get(c, "")) for c in ci_cols]
        cells += ["" if not isinstance(row.get(c), str) else row[c] for c in delta_cols]
        lines.append(f"| {row['retriever']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_seeds(cfg: ExperimentConfig, seeds: list[int], *, tracking_uri: str | None = None,
              output_dir: str | Path | None = None, config_path: str | None = None,
              echo: Callable[[str], None] = print) -> SeedGroup:
    """Run ``cfg`` once per seed; write and print the mean ± sd table."""
    from bench.experiment import run_experiment, safe_name
    from bench.tracking import resolve_tracking_uri
    from bench.tracking.benchmark import safe_tracker
    safe_name(cfg.name, "name")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    root = Path(output_dir or cfg.output_dir)
    from bench.experiment import make_run_folder
    folder = make_run_folder(root, f"{cfg.name}-seeds")
    group = SeedGroup(folder=folder, seeds=seeds)
    uri = resolve_tracking_uri(tracking_uri or cfg.tracking.uri) if cfg.tracking.enabled else None
    tracker = safe_tracker(uri, echo) if uri else None
    group_run = None
    for seed in seeds:
        echo(f"=== seed {seed} ===")
        scfg = seeded_config(cfg, seed)
        outcome = run_experiment(scfg, tracking_uri=tracking_uri, output_dir=folder,
                                 config_path=config_path, echo=echo, parent_run_id=group_run)
        if tracker is not None and tracker.enabled and group_run is None and outcome.parent_run_id:
            group_run = _group_run(tracker, outcome, cfg, seeds)
        group.outcomes.append(outcome)
    group.table = seeds_table(group.outcomes, seeds, cfg.ks)
    group.table.to_csv(folder / "seeds.csv", index=False)
    md = format_seeds_table(group.table, cfg.ks, seeds)
    (folder / "seeds.md").write_text(f"# {cfg.name}: mean ± sd over seeds {seeds}\n\n{md}\n",
                                     encoding="utf-8")
    if group_run is not None:
        try:
            tracker.log_artifact(group_run, folder / "seeds.md")
            tracker.log_artifact(group_run, folder / "seeds.csv")
            tracker.end_run(group_run, "FINISHED")
        except Exception as exc:  # local results stand
            echo(f"warning: MLflow logging of the seed group failed ({type(exc).__name__})")
    echo(f"\nmean ± sd over seeds {seeds}:\n{md}\n\nresults: {folder}")
    return group


def _group_run(tracker, first, cfg: ExperimentConfig, seeds: list[int]) -> str | None:
    """The group run (in the first seed's experiment); the first seed's parent is moved under
    it, the later seeds are created under it."""
    try:
        from bench.tracking import schema
        run_id = tracker.start_run(first.experiment, run_name=f"{cfg.name}-seeds", tags={
            schema.KIND: schema.KIND_SEED_GROUP, "persrv.seeds": ",".join(map(str, seeds))})
        tracker.set_tags(first.parent_run_id, {schema.PARENT_RUN_ID: run_id})
        return run_id
    except Exception:
        return None
