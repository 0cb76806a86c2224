"""Reading a run folder (the runner's layout) for a report, choosing its metrics, baseline and
ablation group, and the per-group breakdowns over ``segments.parquet``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import METRICS, metric_name
from bench.report.names import METRIC_RE, SEGMENT_COLUMNS, SEGMENTS, ReportError

#: segments.parquet columns a report breaks the metrics down by, in display order.
BREAKDOWNS = ("segment", *SEGMENT_COLUMNS, "language", "gt_style", "gt_pack", "gt_topic")
SEGMENT_ORDER = ("cold", "light", "heavy", *SEGMENTS, "warm_user")
_TITLE_RE = re.compile(r"^#\s+(?P<name>.+?) on (?P<dataset>.+?) \(", re.M)


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
    #: "incomplete: N of M retrievers (...)" when status.json says the run did not complete
    incomplete: str = ""


def _retriever_order(path: Path, config: dict) -> tuple[list[str], dict[str, str]]:
    """Labels in config order, then results.csv's, then the folders'; label -> registered name."""
    specs = config.get("retrievers") or []
    names = {(s.get("label") or s["name"]): s["name"] for s in specs if isinstance(s, dict)}
    order = list(names)
    if (path / "results.csv").is_file():
        listed = pd.read_csv(path / "results.csv")["retriever"].astype(str)
        order += [r for r in listed if r not in order]
    rdir = path / "retrievers"
    if rdir.is_dir():
        order += sorted(p.name for p in rdir.iterdir() if p.is_dir() and p.name not in order)
    return order, names


def load_folder(folder: str | Path) -> RunFolder:
    """Read a run folder (the runner's layout); :class:`ReportError` names what is missing."""
    import yaml
    path = Path(folder)
    if not path.is_dir():
        raise ReportError(f"run folder {path} does not exist")
    config = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    order, names = _retriever_order(path, config)
    per_request, failed = {}, []
    for label in order:
        f = path / "retrievers" / label / "per_request.parquet"
        if f.is_file():
            per_request[label] = pd.read_parquet(f)
        else:
            failed.append(label)
    if not per_request:
        raise ReportError(f"{path}: no retrievers/<label>/per_request.parquet found; is this a "
                          "persrv-bench run folder?")
    first = next(iter(per_request.values()))
    ks = sorted({int(m.group(2)) for c in first.columns if (m := METRIC_RE.match(c))})
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
                     read("history_sample.parquet"), notes,
                     incomplete_line(path, len(per_request), len(order)))


def incomplete_line(path: Path, done: int, total: int) -> str:
    """The status.json line of a run that did not complete (killed, failed, still running)."""
    from bench.run_status import read_status
    state = read_status(path)
    if state in (None, "complete") or (state == "running" and done == total):
        return ""  # a finished run whose report is written before the status is set
    return (f"incomplete: {done} of {total} retrievers have results (status.json: {state})"
            if done < total else f"status.json: {state} (all {total} retrievers have results)")


def resolve_metrics(rf: RunFolder, metrics=None) -> list[str]:
    """Metric columns: given names (``ndcg`` means at the largest k), or M-MRR at every k plus
    MRR/Recall/NDCG at the largest k."""
    kmax = max(rf.ks)
    if not metrics:
        return [metric_name("m_mrr", k) for k in rf.ks] + \
            [metric_name(m, kmax) for m in METRICS if m != "m_mrr"]
    cols = [metric_name(m, kmax) if m in METRICS else m for m in metrics]
    available = list(next(iter(rf.per_request.values())).columns)
    bad = [c for c in cols if c not in available or not METRIC_RE.match(c)]
    if bad:
        raise ReportError(f"unknown metric {bad[0]!r}; available: "
                          f"{', '.join(c for c in available if METRIC_RE.match(c))}")
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


def _group_keys(column: pd.Series, dim: str) -> pd.Series:
    """The group of each request in ``dim`` as text; ``cold_user`` True/False -> cold_user/warm_user."""
    if dim == "cold_user":
        flag = column.astype("boolean")
        text = flag.map({True: "cold_user", False: "warm_user"}).astype(object)
        return text.where(flag.notna(), "(unknown)").astype(str)
    return column.astype(object).where(column.notna(), "(unknown)").astype(str)


def breakdowns(rf: RunFolder, metrics: list[str], top_n: int = 10) -> pd.DataFrame:
    """Macro mean per (dimension, group, retriever) with request and user counts.

    Dimensions: history segment, the DESIGN §6 segments (``query_segment``, ``history_segment``,
    ``cold_user``), query language and the ``gt_*`` columns present (those keep their ``top_n``
    groups by requests)."""
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
            key = _group_keys(joined[dim], dim)
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


def segment_wide(seg: pd.DataFrame, metric: str, k: int) -> pd.DataFrame:
    """The DESIGN §6 segment groups of :func:`breakdowns` as one row per retriever with columns
    ``<metric>_at_<k>__<segment>`` and ``n__<segment>`` (requests), the runner's naming; empty
    when segments.parquet has none of those columns."""
    col = metric_name(metric, k)
    part = seg[seg["dimension"].isin(SEGMENT_COLUMNS) & seg["group"].isin(SEGMENTS)]
    if part.empty or col not in part.columns:
        return pd.DataFrame(columns=["retriever"])
    values = part.pivot_table(index="retriever", columns="group", values=col, sort=False)
    counts = part.pivot_table(index="retriever", columns="group", values="n_requests",
                              sort=False)
    present = [s for s in SEGMENTS if s in values.columns]
    out = pd.DataFrame({"retriever": list(dict.fromkeys(part["retriever"]))})
    for s in present:
        out[f"{col}__{s}"] = out["retriever"].map(values[s]).to_numpy(dtype=float)
        out[f"n__{s}"] = out["retriever"].map(counts[s]).fillna(0).to_numpy(dtype=np.int64)
    return out
