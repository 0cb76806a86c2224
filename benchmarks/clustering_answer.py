"""The paper's open question: how many style clusters per user, and which clustering?

PerSRV clusters each user's clicked-sticker embeddings (k-means, k = 5) and re-ranks toward the
clusters; the paper leaves k and the algorithm open. This benchmark answers it on the shared
real-item datasets: M-MRR@20 on the **validation** split (fitted on train only, test untouched)
against n_clusters for k-means, agglomerative (ward) and a Gaussian mixture (diagonal
covariance by default: a full covariance in 98/384 dimensions from at most ~20 points per user is
rank-deficient, held up only by reg_covar, and took ~2 min per point on emoji-styles against
~13 s for diag; ``--gmm-covariance full`` restores PerSRV's default),
HDBSCAN (no n_clusters) as one row per min_cluster_size, and PerSRV without personalisation as
the reference. One base PerSRV is fitted per dataset; every point is ``base.with_params(...)``
(re-cluster + re-rank only; the BM25 index and recall pools are shared).

Datasets (skipped cleanly when ../shared/data lacks them):
- ``emoji-styles``: 1,607 emoji x 4 art styles; style vectors = the offline ``style-stats`` image
  encoder (experiments/emoji_styles.yaml).
- ``sticker-queries``: no images in the release, hence no image embeddings. Style proxy, clearly
  not visual style: dense-text embeddings (all-MiniLM-L6-v2, bundled offline) of each sticker's
  historical queries from the fitting (train) clicks, i.e. what a user's clicked stickers are
  *about*. ``gt_pack`` (which drives the simulated users' preference) is never used.

Users are simulated (DESIGN §4). n_clusters is capped by each user's distinct history stickers,
so large k only matters for heavy users; the table reports the history sizes.

    python benchmarks/clustering_answer.py [--datasets emoji-styles sticker-queries]
        [--grid 1,2,3,4,5,6,8,10,12,15,20] [--hdbscan 2,3,4,5,6,8,10] [--out DIR]
        [--gmm-covariance diag|full|spherical|tied]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATASETS = {
    "emoji-styles": {"config": "experiments/emoji_styles.yaml", "style": "image"},
    "sticker-queries": {"config": "experiments/sticker_queries.yaml", "style": "text-proxy"},
}
GRID = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20]
HDBSCAN = [2, 3, 4, 5, 6, 8, 10]
ALGORITHMS = ["kmeans", "agglomerative", "gmm"]


def text_style_vectors(view):
    """Dense-text embeddings of each sticker's train-click queries (zeros when it has none)."""
    import numpy as np

    from baselines.dense_text import DenseTextRetriever
    dense = DenseTextRetriever(fields=["queries"]).fit(view)
    emb = np.zeros((len(view.stickers), dense.embeddings_.shape[1] or 1), dtype=np.float32)
    if len(dense.doc_rows_):
        emb[dense.doc_rows_] = dense.embeddings_
    return emb, f"dense-text {dense.model_id_} of train-click queries (proxy, not visual style)"


def evaluate(retriever, requests, k: int) -> float:
    from bench.metrics import evaluate_run
    run = retriever.search(requests.requests, k)
    _, macro, _ = evaluate_run(run, requests, [k])
    return macro[f"m_mrr_at_{k}"]


def run_dataset(name: str, spec: dict, args, echo) -> dict | None:
    import dataclasses

    from bench.config import load_config
    from bench.registry import make_retriever
    from bench.runner import prepare
    cfg_path = REPO / spec["config"]
    cfg = load_config(cfg_path)
    source = cfg.dataset.source or cfg.dataset.path
    if source and not Path(source).exists():
        echo(f"skip {name}: data not present at {source}")
        return None
    cfg = cfg.model_copy(update={"eval_split": "validation"})
    t0 = time.perf_counter()
    ds, splits, requests, view, _ = prepare(cfg)
    if spec["style"] == "image":
        if view.embeddings is None:
            echo(f"skip {name}: no image embeddings")
            return None
        style = f"{cfg.features.get('encoder')} image encoder ({view.embeddings.shape[1]} dims)"
        short = style
    else:
        emb, style = text_style_vectors(view)
        short = "text proxy: MiniLM of train-click queries (not visual style)"
        view = dataclasses.replace(view, embeddings=emb)
    base_params = next((dict(s.params) for s in cfg.retrievers if s.name == "persrv"), {})
    base = make_retriever("persrv", base_params).fit(view)
    prep_s = time.perf_counter() - t0
    hist = view.clicks.groupby("user_id")["sticker_id"].nunique()
    val_users = {r.user_id for r in requests.requests}
    hist = hist.reindex(sorted(val_users)).fillna(0)
    echo(f"{name}: {len(ds.stickers)} stickers, {len(requests)} validation requests from "
         f"{len(val_users)} users; style vectors: {style}; prepare + fit {prep_s:.1f}s")
    rows = []
    t = time.perf_counter()
    ref = evaluate(base.with_params(personalization=False), requests, args.k)
    rows.append(("no personalization", None, ref, time.perf_counter() - t))
    for algo in args.algorithms:
        for n in args.grid:
            t = time.perf_counter()
            value = evaluate(base.with_params(cluster_algorithm=algo, n_clusters=n,
                                              gmm_covariance=args.gmm_covariance),
                             requests, args.k)
            rows.append((algo, n, value, time.perf_counter() - t))
            echo(f"  {algo:<14} n_clusters={n:<3} M-MRR@{args.k}={value:.4f}  "
                 f"[{rows[-1][3]:.1f}s]")
    for mcs in args.hdbscan:
        t = time.perf_counter()
        value = evaluate(base.with_params(cluster_algorithm="hdbscan", min_cluster_size=mcs),
                         requests, args.k)
        rows.append(("hdbscan", mcs, value, time.perf_counter() - t))
        echo(f"  hdbscan        min_cluster_size={mcs:<3} M-MRR@{args.k}={value:.4f}  "
             f"[{rows[-1][3]:.1f}s]")
    return {"name": name, "style": style, "style_short": short, "rows": rows, "reference": ref,
            "n_requests": len(requests), "n_users": len(val_users),
            "hist_median": float(hist.median()), "hist_p90": float(hist.quantile(0.9)),
            "hist_ge": {n: float((hist >= n).mean()) for n in args.grid},
            "seconds": time.perf_counter() - t0, "prep_seconds": prep_s}


def markdown(result: dict, args) -> str:
    k = args.k
    lines = [f"### {result['name']} — M-MRR@{k}, validation split "
             f"({result['n_requests']} requests, {result['n_users']} users; simulated users)",
             "", f"Style vectors: {result['style']}. Distinct history stickers per validation "
             f"user: median {result['hist_median']:.0f}, 90th percentile "
             f"{result['hist_p90']:.0f} (n_clusters is capped by it).", ""]
    header = "| algorithm | " + " | ".join(f"k={n}" for n in args.grid) + " | best |"
    lines += [header, "|---|" + "---:|" * (len(args.grid) + 1)]
    ref = result["reference"]
    for algo in args.algorithms:
        vals = {n: v for a, n, v, _ in result["rows"] if a == algo}
        if algo == "gmm":
            algo = f"gmm ({args.gmm_covariance})"
        best_n = max(vals, key=lambda n: (vals[n], -n))
        cells = " | ".join(f"**{vals[n]:.4f}**" if n == best_n else f"{vals[n]:.4f}"
                           for n in args.grid)
        lines.append(f"| {algo} | {cells} | k={best_n} ({vals[best_n] - ref:+.4f}) |")
    share = " | ".join(f"{result['hist_ge'][n]:.0%}" for n in args.grid)
    lines.append(f"| users with >= k history stickers | {share} | |")
    hd = [(n, v) for a, n, v, _ in result["rows"] if a == "hdbscan"]
    if hd:
        lines += ["", "| hdbscan min_cluster_size | " + " | ".join(str(n) for n, _ in hd)
                  + " |", "|---|" + "---:|" * len(hd),
                  "| M-MRR@%d | " % k + " | ".join(f"{v:.4f}" for _, v in hd) + " |"]
    lines += ["", f"No personalisation (BM25 fields + utility): {ref:.4f}. "
              f"Took {result['seconds']:.0f}s (prepare + fit {result['prep_seconds']:.0f}s).",
              ""]
    return "\n".join(lines)


def plot(results: list[dict], args, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.4), dpi=110,
                             squeeze=False)
    for ax, res in zip(axes[0], results):
        for algo in args.algorithms:
            pts = [(n, v) for a, n, v, _ in res["rows"] if a == algo]
            ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o",
                    label=f"gmm ({args.gmm_covariance})" if algo == "gmm" else algo)
        hd = [v for a, _, v, _ in res["rows"] if a == "hdbscan"]
        if hd:
            ax.axhline(max(hd), linestyle="--", color="tab:purple",
                       label=f"hdbscan (best of min_cluster_size {args.hdbscan[0]}..{args.hdbscan[-1]})")
        ax.axhline(res["reference"], linestyle=":", color="gray", label="no personalisation")
        ax.set_xlabel("n_clusters (capped per user by history size)")
        ax.set_ylabel(f"M-MRR@{args.k} (validation)")
        ax.set_xticks(args.grid)
        ax.set_title(f"{res['name']}\n{res['style_short']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("PerSRV personalisation: clusters per user (simulated users)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--grid", default=",".join(map(str, GRID)),
                    help="n_clusters values (comma-separated)")
    ap.add_argument("--hdbscan", default=",".join(map(str, HDBSCAN)),
                    help="HDBSCAN min_cluster_size values (comma-separated; empty: none)")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--gmm-covariance", default="diag",
                    choices=["full", "diag", "spherical", "tied"])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", default="persrv-runs/clustering-answer")
    args = ap.parse_args(argv)
    args.grid = [int(x) for x in args.grid.split(",") if x.strip()]
    args.hdbscan = [int(x) for x in args.hdbscan.split(",") if x.strip()]
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    import logging
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PERSRV_BENCH_QUIET", "1")
    t0 = time.perf_counter()
    results = []
    for name in args.datasets:
        res = run_dataset(name, DATASETS[name], args, print)
        if res is not None:
            results.append(res)
    if not results:
        print("no dataset present: nothing to do (../shared/data is only beside a workspace "
              "checkout)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = "\n".join(markdown(r, args) for r in results)
    total = time.perf_counter() - t0
    md += f"\nTotal time: {total:.0f}s.\n"
    (out / "clustering_answer.md").write_text(md, encoding="utf-8")
    import csv
    with open(out / "clustering_answer.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "algorithm", "param", "value", f"m_mrr_at_{args.k}", "seconds"])
        for r in results:
            for algo, n, v, s in r["rows"]:
                w.writerow([r["name"], algo, "min_cluster_size" if algo == "hdbscan" else
                            ("" if n is None else "n_clusters"), n, f"{v:.6f}", f"{s:.2f}"])
    png = plot(results, args, out / "clustering_answer.png")
    print()
    print(md)
    print(f"written: {out / 'clustering_answer.md'}, {out / 'clustering_answer.csv'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
