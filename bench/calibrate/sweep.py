"""The calibration loop: per effect, level and seed, build the bed, prepare the validation
split (:func:`bench.runner.prepare`), evaluate each arm (:func:`bench.runner.evaluate_retriever`)
and pool the paired per-user deltas of every measure over seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.calibrate.effects import EFFECTS, Arm, Effect, arms_of, measures_of
from bench.calibrate.paired import summarize, user_deltas
from bench.errors import ConfigError

log = logging.getLogger(__name__)

#: builders whose users are simulated (the knobs exist)
SIMULATED_BUILDERS = ("synthetic", "emoji-styles", "sticker-queries")


@dataclass
class Calibration:
    """``table``: one row per (effect, level, measure): effect, knob, level, measure, label,
    role, segment, delta, ci_low, ci_high, sd, n_users, mde, seeds. ``diagnostics``: persrv's
    :meth:`~baselines.persrv.PerSRV.diagnostics` per (effect, level), averaged over seeds."""

    table: pd.DataFrame
    metric: str
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    config: dict[str, Any] = field(default_factory=dict)


def check_bed(cfg, effects: list[Effect]) -> None:
    """ConfigError unless ``cfg`` builds a simulated bed whose builder has every knob."""
    from bench.data.builders import builder_params
    builder = cfg.dataset.builder
    if builder not in SIMULATED_BUILDERS:
        raise ConfigError(f"calibrate needs a dataset built with simulated users "
                          f"(dataset.builder one of {', '.join(SIMULATED_BUILDERS)}), got "
                          f"{builder or cfg.dataset.path!r}")
    known = builder_params(builder)
    for e in effects:
        if e.knob not in known:
            raise ConfigError(f"effect {e.name!r}: builder {builder!r} has no parameter "
                              f"{e.knob!r}; leave it out with --effects")


def level_config(cfg, effect: Effect, level, seed: int, n_users: int | None):
    """The experiment config of one point: the knob at ``level``, dataset and retriever seed
    ``seed``, ``n_users`` simulated users, evaluated on validation."""
    c = cfg.model_copy(deep=True)
    params = {**c.dataset.params, effect.knob: level, "seed": seed}
    if n_users:
        params["n_users"] = n_users
    c.dataset.params = params
    c.dataset.out = None  # one cached build per point
    c.seed = seed
    c.eval_split = "validation"
    return c


def placebo_view(view, shift: int, seed: int):
    """``view`` with every user's fitting clicks relabelled to another user: users sorted,
    user i's clicks become user (i + s) mod n's, s in 1..n-1 drawn from (seed, shift)."""
    users = np.sort(view.clicks["user_id"].astype(str).unique())
    if len(users) < 2:
        return view
    s = 1 + int(np.random.default_rng([seed, 23, shift]).integers(len(users) - 1))
    mapping = dict(zip(users, np.roll(users, -s)))
    clicks = view.clicks.assign(user_id=view.clicks["user_id"].astype(str).map(mapping))
    return replace(view, clicks=clicks)


def run_point(cfg, effect: Effect, folder: Path, k: int) -> tuple[dict[str, pd.Series],
                                                                   dict[str, float]]:
    """Deltas per measure (per user) and persrv's diagnostics at one (level, seed)."""
    from bench.config import RetrieverSpec
    from bench.runner import evaluate_retriever, prepare
    from bench.segments import label_requests, segment_masks
    _, _, requests, view, _ = prepare(cfg)
    labels = label_requests(requests, view.clicks)
    masks = segment_masks(labels)
    col = f"m_mrr_at_{k}"
    frames: dict[str, pd.DataFrame] = {}
    diag: dict[str, float] = {}
    for arm in arms_of(effect):
        arm_view = placebo_view(view, arm.shift, cfg.seed) if arm.shift else view
        spec = RetrieverSpec(name=arm.retriever, label=arm.name, params={"seed": cfg.seed})
        res = evaluate_retriever(spec, arm_view, requests, cfg, folder / arm.name, labels=labels)
        frames[arm.name] = pd.read_parquet(res.folder / "per_request.parquet")
    if "persrv" in frames:  # diagnostics of persrv as it ran (a refit: cheap at bed size)
        from bench.registry import make_retriever
        r = make_retriever("persrv", {"seed": cfg.seed}).fit(view)
        r.search(requests.requests, k)
        diag = r.diagnostics()
    out = {}
    for m in measures_of(effect):
        qids = None if m.segment is None else set(labels.loc[masks[m.segment].to_numpy(),
                                                             "qid"])
        out[m.key] = user_deltas(frames[m.treatment], frames[m.control], col, qids)
    return out, diag


def calibrate(cfg, effects: list[str] | None = None, levels: dict[str, tuple] | None = None,
              seeds: list[int] | None = None, n_users: int | None = None, k: int = 20,
              folder: Path | str = "persrv-runs/calibrate",
              echo: Callable[[str], None] | None = None) -> Calibration:
    """The dose-response table of ``cfg``'s bed (module doc). ``effects``: names in
    :data:`~bench.calibrate.effects.EFFECTS` (default: all the builder supports); ``levels``:
    per effect, replacing its defaults; ``seeds``: beds per level (users pooled); ``k``: the
    metric's cut-off (M-MRR@k)."""
    names = effects or [e for e in EFFECTS]
    unknown = [n for n in names if n not in EFFECTS]
    if unknown:
        raise ConfigError(f"unknown effect(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(EFFECTS)}")
    chosen = [replace(EFFECTS[n], levels=tuple((levels or {}).get(n, EFFECTS[n].levels)))
              for n in names]
    check_bed(cfg, chosen)
    cfg = cfg.model_copy(deep=True)
    cfg.ks = sorted(set(cfg.ks) | {k})
    seeds = list(seeds or [cfg.seed])
    folder = Path(folder)
    rows, diag_rows = [], []
    for effect in chosen:
        for li, level in enumerate(effect.levels):
            pooled: dict[str, list[pd.Series]] = {}
            diags = []
            for seed in seeds:
                if echo:
                    echo(f"calibrate: {effect.name} {effect.knob}={level} seed {seed}")
                point = level_config(cfg, effect, level, seed, n_users)
                deltas, diag = run_point(point, effect, folder / effect.name / f"{li}-s{seed}",
                                         k)
                for key, d in deltas.items():
                    pooled.setdefault(key, []).append(d.rename(lambda u, s=seed: f"{s}:{u}"))
                diags.append(diag)
            for m in measures_of(effect):
                stats = summarize(pd.concat(pooled[m.key]) if pooled[m.key] else [])
                rows.append({"effect": effect.name, "knob": effect.knob, "level": level,
                             "measure": m.key, "label": m.label, "role": m.role,
                             "segment": m.segment or "all", **stats, "seeds": len(seeds)})
            if any(diags):
                mean = pd.DataFrame(diags).mean(numeric_only=True).to_dict()
                diag_rows.append({"effect": effect.name, "level": level, **mean})
    return Calibration(pd.DataFrame(rows), f"m_mrr_at_{k}", pd.DataFrame(diag_rows),
                       {"effects": names, "seeds": seeds, "n_users": n_users, "k": k,
                        "levels": {e.name: list(e.levels) for e in chosen}})
