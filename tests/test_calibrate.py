"""``persrv-bench calibrate`` (bench/calibrate): paired statistics, level parsing, and a run on
a tiny synthetic bed whose null control stays at 0 while the positive control follows the
planted style preference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.calibrate.effects import EFFECTS, arms_of, measures_of, parse_levels
from bench.calibrate.paired import mde_factor, summarize, user_deltas
from bench.config import validate_config
from bench.errors import ConfigError


def test_summarize_paired_t_interval_and_mde():
    from scipy.stats import t
    d = np.array([1.0, 2.0, 3.0, 4.0])
    s = summarize(d)
    se = np.std(d, ddof=1) / 2
    assert s["delta"] == 2.5 and s["n_users"] == 4
    assert s["ci_high"] - s["delta"] == pytest.approx(t.ppf(0.975, 3) * se)
    assert mde_factor() == pytest.approx(2.8016, abs=1e-4)
    assert s["mde"] == pytest.approx(2.8016 * se, rel=1e-4)
    assert math.isnan(summarize([0.3])["ci_low"]) and summarize([])["n_users"] == 0


def test_user_deltas_pair_users_within_a_segment():
    import pandas as pd
    a = pd.DataFrame({"qid": ["q0", "q1", "q2"], "user_id": ["u", "u", "v"], "m": [1.0, 0.0, 1.0]})
    b = pd.DataFrame({"qid": ["q0", "q1", "q2"], "user_id": ["u", "u", "v"], "m": [0.0, 0.0, 0.5]})
    assert user_deltas(a, b, "m").to_dict() == {"u": 0.5, "v": 0.5}
    assert user_deltas(a, b, "m", {"q0"}).to_dict() == {"u": 1.0}


def test_effects_levels_and_arms():
    assert parse_levels(["style=1,0.5,0", "content=adversarial,0.44"]) == {
        "style": (1.0, 0.5, 0.0), "content": ("adversarial", 0.44)}
    with pytest.raises(ConfigError, match="EFFECT"):
        parse_levels(["colour=1,2"])
    style = EFFECTS["style"]
    assert [m.role for m in measures_of(style)][-1] == "null control"
    assert {a.name for a in arms_of(style)} == {"persrv", "no-personalization", "style",
                                                "placebo-a", "placebo-b"}


def tiny_config(tmp_path, builder="synthetic"):
    return validate_config({
        "name": "tiny",
        "dataset": {"builder": builder, "params": {"n_stickers": 300, "images": False}},
        "features": {"ocr": False, "encoder": "precomputed", "cache_dir": str(tmp_path / "c")},
        "retrievers": [{"name": "persrv"}]})


def test_calibrate_refuses_a_bed_without_simulated_users(tmp_path):
    from bench.calibrate.sweep import calibrate
    cfg = validate_config({"dataset": {"path": str(tmp_path)}, "retrievers": [{"name": "persrv"}]})
    with pytest.raises(ConfigError, match="simulated users"):
        calibrate(cfg, ["style"])
    with pytest.raises(ConfigError, match="unknown effect"):
        calibrate(tiny_config(tmp_path), ["colour"])


def test_calibrate_tiny_bed_null_control_at_zero_positive_control_rises(tmp_path, monkeypatch):
    from bench.calibrate.output import format_table, log_mlflow, write
    from bench.calibrate.sweep import calibrate
    monkeypatch.setenv("PERSRV_BENCH_CACHE", str(tmp_path / "cache"))
    cal = calibrate(tiny_config(tmp_path), ["style"], {"style": (1.0, 0.0)}, seeds=[0],
                    n_users=150, folder=tmp_path / "points")
    t = cal.table.set_index(["level", "measure"])
    null = [t.loc[(lv, "null_control")] for lv in (1.0, 0.0)]
    assert all(r["ci_low"] <= 0 <= r["ci_high"] for r in null)
    pos = [t.loc[(lv, "positive_control"), "delta"] for lv in (1.0, 0.0)]
    assert pos[1] > pos[0] + 0.02
    assert (cal.table["n_users"] > 30).all() and (cal.table["mde"] > 0).all()
    # the validation split only: no point was evaluated on test
    assert cal.table["seeds"].eq(1).all()
    assert (cal.diagnostics["singleton_cluster_share"] > 0.5).all()
    assert (cal.diagnostics["boost_own_share"] > 0.5).all()   # default persrv re-finds
    text = format_table(cal)
    assert "null control" in text and "includes 0" in text and "MDE" in text
    files = write(cal, tmp_path / "out")
    assert files["png"].stat().st_size > 0 and files["csv"].read_text().count("\n") == 7
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_mlflow(cal, files, "calibrate-tiny", uri, "tiny")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run_id, "style.positive_control.delta")
    assert [m.step for m in history] == [0, 1]
    assert history[1].value == pytest.approx(pos[1])
    assert client.get_run(run_id).data.tags["persrv.kind"] == "calibration"


def test_cli_errors_are_one_line(tmp_path, capsys):
    from tests.conftest import run_main
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: {builder: synthetic, params: {images: false}}\n"
                   "retrievers: [{name: persrv}]\n", encoding="utf-8")
    code, _, err = run_main(capsys, "calibrate", str(cfg), "--levels", "colour=1,2")
    assert code == 2 and "--levels 'colour=1,2'" in err and "Traceback" not in err
    code, _, err = run_main(capsys, "calibrate", str(cfg), "--effects", "style,colour")
    assert code == 2 and "unknown effect(s) colour" in err
    code, _, err = run_main(capsys, "calibrate", str(cfg), "--seeds", "a")
    assert code == 2 and "--seeds takes integers" in err
    code, out, _ = run_main(capsys, "calibrate", "--help")
    assert code == 0 and "minimum" in out
