"""`run --seeds`: one run per seed, mean ± sd per retriever, the per-seed CI over users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.config import validate_config


def _cfg(tmp_path, **extra):
    raw = {"name": "seedy", "seed": 0,
           "dataset": {"builder": "synthetic",
                       "params": {"n_stickers": 60, "n_users": 20, "images": False, "seed": 0}},
           "features": {"ocr": False, "encoder": None},
           "retrievers": [{"name": "popularity"}, {"name": "bm25", "params": {"fields": ["queries"]}}],
           "output_dir": str(tmp_path / "out"), "report": False, "tracking": {"enabled": False}}
    raw.update(extra)
    return validate_config(raw)


def test_seeded_config_sets_every_seed(tmp_path):
    from bench.experiment_seeds import seeded_config
    cfg = _cfg(tmp_path, protocol={"name": "simulated-users"})
    new = seeded_config(cfg, 7)
    assert new.seed == 7 and new.dataset.params["seed"] == 7 and new.name == "seedy-seed7"
    assert cfg.seed == 0 and cfg.dataset.params["seed"] == 0  # the original is untouched


def test_run_seeds_reports_mean_sd_and_ci(tmp_path, isolated_cache):
    from bench.experiment_seeds import run_seeds
    group = run_seeds(_cfg(tmp_path), [0, 1], echo=lambda *_: None)
    assert len(group.outcomes) == 2
    assert {o.folder.name.split("-")[1] for o in group.outcomes} == {"seed0", "seed1"}
    table = group.table.set_index("retriever")
    for label in ("popularity", "bm25"):
        values = [next(r for r in o.results if r.label == label).macro["m_mrr_at_20"]
                  for o in group.outcomes]
        assert table.loc[label, "m_mrr_at_20_mean"] == pytest.approx(np.mean(values))
        assert table.loc[label, "m_mrr_at_20_sd"] == pytest.approx(np.std(values, ddof=1))
        lo, hi = (float(x) for x in table.loc[label, "ci_seed0"].strip("[]").split(","))
        assert lo <= values[0] + 1e-3 and values[0] - 1e-3 <= hi
    assert (group.folder / "seeds.md").read_text().count("±") >= 2 * 7
    assert pd.read_csv(group.folder / "seeds.csv")["seeds_ok"].tolist() == [2, 2]
