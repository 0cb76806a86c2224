"""Trained dense-clip (LiT) against the floors, per segment, with paired user-level statistics.

    python benchmarks/clip_lit_segments.py RUN_FOLDER [RUN_FOLDER ...] [--metric m_mrr_at_20]
        [--versus popularity random] [--candidate dense-clip-lit]
    python benchmarks/clip_lit_segments.py --train [--seeds 0 1 2] [--workdir DIR]
    python benchmarks/clip_lit_segments.py --bounds [--workdir DIR]

Each RUN_FOLDER is a ``persrv-bench run`` output (``retrievers/<label>/per_request.parquet`` and
``segments.parquet``). Printed per folder and segment (all, unseen_query, cold_sticker): each
retriever's macro mean, and for the candidate the paired difference to each ``--versus``
retriever over the users of that segment: mean, 95% bootstrap CI (users resampled) and the
two-sided sign-flip permutation p (:mod:`bench.report.stats`). Labels missing from a folder are
looked up in the other folders with the same requests (e.g. baselines run once, the candidate
once per training seed).

``--train`` (:func:`train_and_compare`, the README's ``clip-lit`` block): trains
``experiments/clip_lit_emoji_styles.yaml`` once per training seed (the bed, split and dataset
seed stay those of ``experiments/emoji_styles_clip.yaml``), then runs that experiment once with
one ``dense-clip-lit-s<seed>`` per checkpoint plus the RRF fusion of the first one with
``popularity``, and prints the segment table with paired CIs against ``popularity``.

``--bounds`` (:func:`content_bounds`, the README's ``clip-bounds`` block): what text standing in
for an image tower scores on the same bed (validation requests), through the same frozen
MiniLM: the stickers' own click queries (what a LiT tower imitates for a clicked sticker), the
click queries of all four art styles of the sticker's emoji pooled (what a tower that recognises
the emoji whatever the style could learn from clicks), and the emoji's label + CLDR tags (what
an image model that knows the concepts would say: the content text no click teaches).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from bench.report.stats import bootstrap_ci, paired_test, user_means

ROOT = Path(__file__).resolve().parents[1]
SEGMENTS = {"all": None, "unseen_query": ("query_segment", "unseen_query"),
            "cold_sticker": ("cold_sticker", True)}
TRAIN_CONFIG = ROOT / "experiments" / "clip_lit_emoji_styles.yaml"
RUN_CONFIG = ROOT / "experiments" / "emoji_styles_clip.yaml"


def load(folder: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    runs = {p.parent.name: pd.read_parquet(p)
            for p in sorted((folder / "retrievers").glob("*/per_request.parquet"))}
    return runs, pd.read_parquet(folder / "segments.parquet")


def segment_qids(seg: pd.DataFrame, name: str) -> set[str]:
    rule = SEGMENTS[name]
    qids = seg["qid"] if rule is None else seg.loc[seg[rule[0]] == rule[1], "qid"]
    return set(qids.astype(str))


def segment_users(frame: pd.DataFrame, qids: set[str], metric: str) -> pd.Series:
    """Per user (sorted) the mean ``metric`` over the user's requests in ``qids``."""
    return user_means(frame.loc[frame["qid"].astype(str).isin(qids)], [metric])[metric]


def paired(base: pd.Series, cand: pd.Series) -> tuple[float, float, float, float]:
    """(mean difference cand - base, CI low, CI high, permutation p) over the shared users."""
    a, b = base.align(cand, join="inner")
    d = (b - a).to_numpy()
    low, high = bootstrap_ci(d)
    return float(d.mean()), float(low), float(high), float(paired_test(a.to_numpy(),
                                                                        b.to_numpy()))


def compare_folders(folders: list[Path], metric: str, candidate: str, versus: list[str]) -> None:
    loaded = [(f, *load(f)) for f in folders]
    pool: dict[str, pd.DataFrame] = {}
    for _, runs, _ in loaded:
        for label, frame in runs.items():
            pool.setdefault(label, frame)
    for folder, runs, seg in loaded:
        if candidate not in runs:
            continue
        print(f"== {folder}  ({metric})")
        labels = sorted(set(pool) | set(runs))
        for name in SEGMENTS:
            qids = segment_qids(seg, name)
            users = {lb: segment_users(runs.get(lb, pool.get(lb)), qids, metric) for lb in labels}
            means = "  ".join(f"{lb}={u.mean():.4f}" for lb, u in users.items())
            print(f"  {name} (n_requests={len(qids)}, n_users={len(users[candidate])}): {means}")
            for other in versus:
                d, low, high, p = paired(users[other], users[candidate])
                print(f"    {candidate} - {other}: {d:+.4f} [{low:+.4f}, {high:+.4f}] p={p:.4g}")


def segment_table(folder: Path, metric: str = "m_mrr_at_20", versus: str = "popularity",
                  candidates_prefix: tuple[str, ...] = ("dense-clip-lit", "fusion")) -> str:
    """Markdown: per retriever the macro ``metric`` on all / unseen_query / cold_sticker
    requests, and for the candidates the paired Δ to ``versus`` with a 95% CI on each."""
    runs, seg = load(folder)
    qids = {name: segment_qids(seg, name) for name in SEGMENTS}
    heads = [f"{name} (n={len(q)})" for name, q in qids.items()]
    lines = ["| retriever | " + " | ".join(heads) + " | " + " | ".join(
        f"Δ {name} vs {versus} [95% CI]" for name in SEGMENTS if name != "all") + " |",
             "|---|" + "---:|" * (2 * len(SEGMENTS) - 1)]
    base = {name: segment_users(runs[versus], q, metric) for name, q in qids.items()}
    for label, frame in runs.items():
        users = {name: segment_users(frame, q, metric) for name, q in qids.items()}
        cells = [f"{users[name].mean():.4f}" for name in SEGMENTS]
        deltas = []
        for name in SEGMENTS:
            if name == "all":
                continue
            if label.startswith(candidates_prefix):
                d, low, high, p = paired(base[name], users[name])
                deltas.append(f"{d:+.4f} [{low:+.3f}, {high:+.3f}] p={p:.2g}")
            else:
                deltas.append("")
        lines.append(f"| {label} | " + " | ".join(cells + deltas) + " |")
    return "\n".join(lines)


def train_and_compare(workdir: Path, seeds: list[int]) -> tuple[str, dict]:
    """Train one LiT tower per seed, run the emoji-styles-clip experiment once with all of them;
    returns (the segment table, {seed: training seconds, CPU seconds, epochs; load})."""
    from bench.clip.config import load_clip_config
    from bench.clip.train import train_clip
    from bench.config import RetrieverSpec, load_config
    from bench.experiment import run_experiment
    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    trained: dict[int, dict] = {}
    for seed in seeds:
        load_before = os.getloadavg()[0]
        cfg = load_clip_config(TRAIN_CONFIG, [f"seed={seed}", f"output_dir={workdir}/clip-s{seed}",
                                              f"tracking_uri={uri}"])
        res = train_clip(cfg)
        trained[seed] = {"checkpoint": res["checkpoint_dir"], "seconds": res["seconds"],
                         "cpu_seconds": res["cpu_seconds"], "epochs": res["epochs"],
                         "load_before": load_before, "load_after": os.getloadavg()[0]}
    exp = load_config(RUN_CONFIG, ["report=false", "tracking.enabled=false"])
    keep = [r for r in exp.retrievers if r.name != "dense-clip"]
    lit = [RetrieverSpec(name="dense-clip", label=f"dense-clip-lit-s{s}",
                         params={"checkpoint": t["checkpoint"]}) for s, t in trained.items()]
    first = seeds[0]
    fusion = RetrieverSpec(name="fusion", label=f"fusion-lit-s{first}-popularity", params={
        "method": "rrf", "inputs": [{"name": "dense-clip",
                                     "params": {"checkpoint": trained[first]["checkpoint"]}},
                                    "popularity"]})
    exp.retrievers = keep + lit + [fusion]
    quiet = lambda *_: None  # noqa: E731
    outcome = run_experiment(exp, output_dir=workdir / "runs", echo=quiet)
    return segment_table(outcome.folder), trained


def _register_emoji_pool() -> None:
    """``dense-text-emoji-clicks``: dense-text whose document for a sticker is the fitting click
    queries of every sticker of the same emoji (emoji-styles ids are ``<hexcode>:<style>``)."""
    import dataclasses

    from baselines.bm25 import historical_queries
    from baselines.dense_text import DenseTextRetriever
    from bench.registry import register, registry
    if "dense-text-emoji-clicks" in registry():
        return

    @register("dense-text-emoji-clicks")
    class EmojiClicks(DenseTextRetriever):
        name = "dense-text-emoji-clicks"

        def fit(self, train):
            ids = train.sticker_ids
            by_emoji: dict[str, list[str]] = {}
            for sid, text in zip(ids, historical_queries(train.clicks, ids, sep=" | ")):
                if text:
                    by_emoji.setdefault(sid.split(":")[0], []).append(text)
            stickers = train.stickers.assign(
                emoji_clicks=[" | ".join(by_emoji.get(s.split(":")[0], [])) for s in ids])
            return super().fit(dataclasses.replace(train, stickers=stickers))


def content_bounds(workdir: Path) -> str:
    """Run the bed of ``experiments/emoji_styles_clip.yaml`` (same dataset, split, seed) on its
    *validation* requests (a diagnosis of the bed; the test split stays the towers') with
    popularity, random and three dense-text documents (module docstring); the segment table
    with paired CIs of each dense-text against popularity."""
    from bench.config import RetrieverSpec, load_config
    from bench.experiment import run_experiment
    _register_emoji_pool()
    exp = load_config(RUN_CONFIG, ["report=false", "tracking.enabled=false",
                                   "eval_split=validation"])
    keep = [r for r in exp.retrievers if r.name in ("random", "popularity")]
    exp.retrievers = keep + [
        RetrieverSpec(name="dense-text", label="dense-text-own-clicks",
                      params={"fields": ["queries"]}),
        RetrieverSpec(name="dense-text-emoji-clicks", label="dense-text-emoji-clicks",
                      params={"fields": ["emoji_clicks"]}),
        RetrieverSpec(name="dense-text", label="dense-text-content",
                      params={"fields": ["description"]})]
    outcome = run_experiment(exp, output_dir=workdir / "runs", echo=lambda *_: None)
    return segment_table(outcome.folder, candidates_prefix=("dense-text",))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--metric", default="m_mrr_at_20")
    ap.add_argument("--candidate", default="dense-clip-lit")
    ap.add_argument("--versus", nargs="+", default=["popularity", "random"])
    ap.add_argument("--train", action="store_true", help="train the seeds, run, print the table")
    ap.add_argument("--bounds", action="store_true",
                    help="text stand-ins for the image tower on the same bed (module docstring)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workdir", type=Path, default=Path("outputs/clip-lit-segments"))
    args = ap.parse_args()
    if args.train:
        t0 = time.perf_counter()
        table, trained = train_and_compare(args.workdir, args.seeds)
        print(table)
        for seed, t in trained.items():
            print(f"seed {seed}: {t['seconds']:.0f} s training ({t['cpu_seconds']:.0f} CPU s, "
                  f"{t['epochs']} epochs, load {t['load_before']:.2f} -> {t['load_after']:.2f})")
        print(f"{time.perf_counter() - t0:.0f} s in all")
        return
    if args.bounds:
        print(content_bounds(args.workdir))
        return
    if not args.folders:
        ap.error("give RUN_FOLDERs or --train")
    compare_folders(args.folders, args.metric, args.candidate, args.versus)


if __name__ == "__main__":
    main()
