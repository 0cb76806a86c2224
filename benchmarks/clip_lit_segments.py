"""Trained dense-clip (LiT) against the floors, per segment, with paired user-level statistics.

    python benchmarks/clip_lit_segments.py RUN_FOLDER [RUN_FOLDER ...] [--metric m_mrr_at_20]
        [--versus popularity random] [--candidate dense-clip-lit]

Each RUN_FOLDER is a ``persrv-bench run`` output (``retrievers/<label>/per_request.parquet`` and
``segments.parquet``). Printed per folder and segment (all, unseen_query, cold_sticker): each
retriever's macro mean, and for the candidate the paired difference to each ``--versus``
retriever over the users of that segment: mean, 95% bootstrap CI (users resampled) and the
two-sided sign-flip permutation p (:mod:`bench.report.stats`). Labels missing from a folder are
looked up in the other folders with the same requests (e.g. baselines run once, the candidate
once per training seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.report.stats import bootstrap_ci, paired_test, user_means

SEGMENTS = {"all": None, "unseen_query": ("query_segment", "unseen_query"),
            "cold_sticker": ("cold_sticker", True)}


def load(folder: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    runs = {p.parent.name: pd.read_parquet(p)
            for p in sorted((folder / "retrievers").glob("*/per_request.parquet"))}
    return runs, pd.read_parquet(folder / "segments.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--metric", default="m_mrr_at_20")
    ap.add_argument("--candidate", default="dense-clip-lit")
    ap.add_argument("--versus", nargs="+", default=["popularity", "random"])
    args = ap.parse_args()
    loaded = [(f, *load(f)) for f in args.folders]
    pool: dict[str, pd.DataFrame] = {}
    for _, runs, _ in loaded:
        for label, frame in runs.items():
            pool.setdefault(label, frame)
    for folder, runs, seg in loaded:
        if args.candidate not in runs:
            continue
        print(f"== {folder}  ({args.metric})")
        labels = sorted(set(pool) | set(runs))
        for name, rule in SEGMENTS.items():
            qids = seg["qid"] if rule is None else seg.loc[seg[rule[0]] == rule[1], "qid"]
            qids = set(qids.astype(str))
            users = {lb: user_means((runs.get(lb, pool.get(lb)))
                                    .loc[lambda f: f["qid"].astype(str).isin(qids)], [args.metric])
                     for lb in labels}
            means = "  ".join(f"{lb}={u[args.metric].mean():.4f}" for lb, u in users.items())
            print(f"  {name} (n_requests={len(qids)}, n_users={len(users[args.candidate])}): "
                  f"{means}")
            cand = users[args.candidate][args.metric]
            for other in args.versus:
                a, b = users[other][args.metric].align(cand, join="inner")
                d = (b - a).to_numpy()
                low, high = bootstrap_ci(d)
                p = paired_test(a.to_numpy(), b.to_numpy())
                print(f"    {args.candidate} - {other}: {d.mean():+.4f} "
                      f"[{low:+.4f}, {high:+.4f}] p={p:.4g}")


if __name__ == "__main__":
    main()
