"""Which signal does the learned ranker rely on, per segment? An ablation of ``ltr``'s features.

For an experiment (default: the quickstart), ``ltr`` is fitted with every feature group and once
without each group (``drop_features``; the candidate pool stays the same, so only what the model
may look at changes), through the runner's own functions (:func:`bench.runner.prepare`,
:func:`bench.runner.evaluate_retriever`). Printed: M-MRR@k overall and per segment (seen / unseen
query, refind / discover) of each variant, its difference to the full model, and the full
model's gain importance per group. A group whose removal costs most in a segment is the signal
the ranker wins (or loses) with there. Users are simulated (DESIGN §4) unless the dataset says
otherwise; the evaluated split is the config's (test by default).

    python benchmarks/ltr_signals.py [--config experiments/quickstart.yaml] [--k 20]
        [--groups history,query_clicks,...] [--split test|validation] [-o KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEGMENTS = ("seen_query", "unseen_query", "refind", "discover")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "experiments" / "quickstart.yaml"))
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--groups", default=None, help="comma-separated groups to drop (default all)")
    ap.add_argument("--split", default=None, choices=("test", "validation"))
    ap.add_argument("-o", "--override", action="append", default=[],
                    help="config override KEY=VALUE (as persrv-bench run -o)")
    ap.add_argument("--params", default="{}", help="JSON of extra ltr parameters")
    args = ap.parse_args(argv)

    import json

    from bench.config import RetrieverSpec, load_config
    from bench.ltr.features import FEATURE_GROUPS
    from bench.runner import evaluate_retriever, prepare
    from bench.segments import label_requests

    overrides = list(args.override) + ["tracking.enabled=false"]
    if args.split:
        overrides.append(f"eval_split={args.split}")
    cfg = load_config(args.config, overrides)
    groups = args.groups.split(",") if args.groups else list(FEATURE_GROUPS)
    base = json.loads(args.params)
    print(f"# ltr feature-group ablation on {cfg.name} ({cfg.eval_split} split), "
          f"load average {os.getloadavg()[0]:.2f}")
    ds, _, requests, view, _ = prepare(cfg)
    labels = label_requests(requests, view.clicks)
    metric = f"m_mrr_at_{args.k}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for drop in [None, *groups]:
            label = "ltr (all features)" if drop is None else f"ltr without {drop}"
            params = {**base, "drop_features": [] if drop is None else [drop]}
            spec = RetrieverSpec(name="ltr", label="ltr-all" if drop is None else f"ltr-no-{drop}",
                                 params=params)
            t0 = time.perf_counter()
            res = evaluate_retriever(spec, view, requests, cfg, Path(tmp) / str(len(rows)),
                                     labels=labels)
            seconds = time.perf_counter() - t0
            rows.append((label, res.macro.get(metric),
                         [res.segments.get(f"{metric}__{s}") for s in SEGMENTS], seconds))
            print(f"  {label:<26} {res.macro.get(metric):.4f}  ({seconds:.0f} s, "
                  f"load {os.getloadavg()[0]:.2f})", flush=True)
    counts = [int(res.segments.get(f"n__{s}", 0)) for s in SEGMENTS]
    print()
    print(f"M-MRR@{args.k} ({ds.name}, {len(requests.requests)} requests; Δ = variant − all)")
    head = ["variant", "overall", *[f"{s} (n={n})" for s, n in zip(SEGMENTS, counts)]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    full = rows[0]
    for label, overall, segs, _ in rows:
        cells = [_cell(overall, None if label == full[0] else full[1])]
        cells += [_cell(v, None if label == full[0] else f) for v, f in zip(segs, full[2])]
        print(f"| {label} | " + " | ".join(cells) + " |")
    # the runner logs scalar fitted attributes only: refit the full model to read its gains
    from bench.registry import make_retriever
    full_model = make_retriever("ltr", {**base, "drop_features": []}).fit(view)
    print()
    _print_importances(full_model.feature_importances_, groups)
    print(f"(best iteration {full_model.best_iteration_}, {full_model.train_requests_} training "
          f"+ {full_model.valid_requests_} early-stopping requests)")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


def _cell(value, reference) -> str:
    if value is None:
        return "–"
    if reference is None:
        return f"{value:.4f}"
    return f"{value:.4f} ({value - reference:+.4f})"


def _group_of(feature: str) -> str:
    if feature.startswith("bm25_"):
        return "text"
    if feature.startswith("dense_"):
        return "dense"
    if feature in ("popularity", "distinct_users", "distinct_queries"):
        return "popularity"
    if feature.startswith("user_"):
        return "history"
    if feature.startswith("style_"):
        return "style"
    if feature.startswith("query_") and feature != "query_clicks":
        return "query"
    return "query_clicks"


def _print_importances(importances, groups) -> None:
    total = sum(importances.values()) or 1.0
    by_group: dict[str, float] = {}
    for name, gain in importances.items():
        by_group[_group_of(name)] = by_group.get(_group_of(name), 0.0) + gain
    print("Gain importance of the full model, by group (share of total gain):")
    for g, gain in sorted(by_group.items(), key=lambda kv: -kv[1]):
        top = sorted(((n, v) for n, v in importances.items() if _group_of(n) == g),
                     key=lambda kv: -kv[1])[:3]
        print(f"  {g:<13} {gain / total:6.1%}   " +
              ", ".join(f"{n} {v / total:.1%}" for n, v in top))


if __name__ == "__main__":
    sys.exit(main())
