"""Every retriever judged alike (issue 22): the fill policy, coverage, Δ vs the best floor,
test-split bookkeeping and the future-click warning on real logs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.config import validate_config
from bench.experiment import run_experiment, split_warnings
from bench.ledger import evaluations_of

RETRIEVERS = [
    {"name": "bm25", "params": {"fields": ["text"]}},
    {"name": "popularity"},
    {"name": "query-lookup"},
    {"name": "random", "params": {"seed": 1}},
]


def _cfg(dataset: Path, out: Path, **extra):
    raw = {"name": "fair", "seed": 0, "dataset": {"path": str(dataset)},
           "retrievers": RETRIEVERS, "features": {"ocr": False, "encoder": None},
           "output_dir": str(out), "report": False, "tracking": {"enabled": False}}
    raw.update(extra)
    return validate_config(raw)


def test_fill_gives_every_retriever_full_lists_and_reports_coverage(tiny_dataset, tmp_path,
                                                                    isolated_cache):
    quiet = lambda *_: None  # noqa: E731
    filled = run_experiment(_cfg(tiny_dataset, tmp_path / "a"), echo=quiet)
    as_is = run_experiment(_cfg(tiny_dataset, tmp_path / "b", evaluation={"fill": "none"}),
                           echo=quiet)
    a, b = filled.table.set_index("retriever"), as_is.table.set_index("retriever")
    # bm25 on the sticker text alone finds nothing for most queries of this dataset
    assert a.loc["bm25", "coverage"] < 0.5 and a.loc["popularity", "coverage"] == 1.0
    assert a.loc["bm25", "coverage"] == b.loc["bm25", "coverage"]
    # the as-returned value of the filled run is the unfilled run's score
    assert a.loc["bm25", "m_mrr_at_20_as_returned"] == pytest.approx(b.loc["bm25", "m_mrr_at_20"])
    assert a.loc["bm25", "m_mrr_at_20"] >= b.loc["bm25", "m_mrr_at_20"]
    # every filled list holds min(k, corpus) = 15 stickers
    run = pd.read_parquet(filled.folder / "retrievers" / "bm25" / "run.parquet")
    assert (run.groupby("qid").size() == 15).all()
    assert run.groupby("qid")["sticker_id"].nunique().eq(15).all()
    assert run.loc[run["filled"], "score"].isna().all()
    # the floor-baseline comparison: the strongest floor is named, paired CIs bracket the delta
    floor = a["best_floor"].iloc[0]
    assert floor in ("popularity", "query-lookup")
    assert pd.isna(a.loc[floor, "delta_floor"])
    lo, d, hi = a.loc["random", ["delta_floor_low", "delta_floor", "delta_floor_high"]]
    assert lo <= d <= hi and d < 0
    assert "vs " + floor in (filled.folder / "results.md").read_text()


def test_test_evaluations_are_counted_per_dataset(tiny_dataset, tmp_path, isolated_cache):
    lines: list[str] = []
    out = tmp_path / "runs"
    run_experiment(_cfg(tiny_dataset, out), echo=lines.append)
    run_experiment(_cfg(tiny_dataset, out), echo=lines.append)
    run_experiment(_cfg(tiny_dataset, out, eval_split="validation"), echo=lines.append)
    ledger = isolated_cache / "features" / "evaluations.json"   # $PERSRV_BENCH_CACHE, not out/
    (fingerprint,) = [k for k in __import__("json").loads(ledger.read_text())]
    assert evaluations_of(ledger.parent, fingerprint) == {"test": 2, "validation": 1}
    assert all((p / "status.json").is_file() for p in out.iterdir())  # only run folders there
    assert any("test split: evaluation 2 of dataset" in line for line in lines)


def test_per_user_split_on_real_logs_warns_about_later_clicks():
    from bench.data.splits import SplitConfig, Splits
    cfg = validate_config({"dataset": {"path": "x"}, "retrievers": [{"name": "popularity"}]})
    # u2 clicks (hi, s1) at t=5; u1's test request (hi -> s1) is at t=3
    train = pd.DataFrame({"user_id": ["u1", "u2"], "query": ["yo", "hi"],
                          "sticker_id": ["s0", "s1"], "ts": [1, 5]})
    test = pd.DataFrame({"user_id": ["u1"], "query": ["hi"], "sticker_id": ["s1"], "ts": [3]})
    empty = train.iloc[:0]
    splits = Splits(train=train, validation=empty, test=test, config=SplitConfig())
    assert splits.future_pairs("test") == 1

    class Real:
        meta: dict = {}
    warnings = split_warnings(Real(), splits, cfg)
    assert len(warnings) == 1 and "1 test requests" in warnings[0]
    Real.meta = {"simulator": {"seed": 0}}
    assert split_warnings(Real(), splits, cfg) == []
