"""`persrv-bench perf --stage features` (bench/perf/features_bench.py): rendered stickers of mixed
sizes and languages through attach_features, with images/s per stage, CER, memory and the
extrapolation to paper scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.perf.features_bench import MAX_SIDE, MIN_SIDE, format_result, render_dataset

pytest.importorskip("rapidocr_onnxruntime")


def test_rendered_dataset_mixes_sizes_languages_and_images_without_text(tmp_path):
    ds = render_dataset(tmp_path / "ds", 40, seed=1)
    st = ds.stickers
    assert len(st) == 40 and st["sticker_id"].is_unique
    assert MIN_SIDE <= st["gt_size"].min() < st["gt_size"].max() <= MAX_SIDE
    caps = st["gt_caption"].fillna("")
    assert (caps == "").sum() >= 2  # some stickers carry no text
    from bench.features.ocr import caption_language
    langs = {caption_language(c) for c in caps if c}
    assert langs == {"en", "zh"}
    from PIL import Image
    sizes = {Image.open(ds.root / p).size for p in st["image"][:10]}
    assert all(w == h for w, h in sizes) and len(sizes) > 1
    again = render_dataset(tmp_path / "ds2", 40, seed=1)  # seeded: the same stickers
    assert again.fingerprint == ds.fingerprint


def test_features_bench_measures_every_stage_and_reads_the_captions(tmp_path):
    from click.testing import CliRunner

    from bench.cli.main import cli
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["perf", "--stage", "features", "--images", "16",
                                   "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "features.json").read_text())
    assert r["images"] == 16 and r["ocr"] == "paddle" and r["encoder"] == "style-stats"
    assert set(r["stages_s"]) == {"decode", "detect", "recognise", "embed"}
    assert all(v > 0 for v in r["stages_s"].values())
    assert all(v > 0 for v in r["stages_cpu_s"].values())
    assert r["images_per_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 50
    # one worker inline: the steady rate is its images over its tasks' span, above the
    # end-to-end rate (which also counts loading and writing); paper scale = start-up + steady
    assert r["steady_images_per_s"] > r["images_per_s"] and 0 <= r["first_task_s"] < r["wall_s"]
    assert r["paper_hours"] == pytest.approx(
        (r["first_task_s"] + 543_098 / r["steady_images_per_s"]) / 3600)
    assert r["cer"]["en"]["n"] + r["cer"]["zh"]["n"] + r["no_text_images"] == 16
    assert r["cer"]["en"]["n"] and r["cer"]["en"]["cer_mean"] < 0.1
    for line in ("images/s", "CER: English", "paper scale: 543,098 images", "load average",
                 "CPU per stage"):
        assert line in res.output, line
    assert not (out / "cache").exists()  # the throw-away cache is removed


def test_format_result_marks_the_target():
    r = {"images": 100, "workers": 2, "parallel": "processes", "encoder": "style-stats",
         "ocr": "paddle", "cpu_model": "cpu", "cpus": 2, "cpus_available": 2,
         "load_start": [0.5, 0, 0], "load_end": [0.7, 0, 0], "wall_s": 2.0,
         "images_per_s": 50.0, "cpu_s": 4.0, "cpu_ms_per_image": 40.0,
         "cpu_bound_images_per_s": 50.0, "stages_s": {}, "stages_cpu_s": {},
         "peak_rss_mb": 300.0, "peak_rss_worker_mb": 200.0,
         "cer": {"en": {"n": 0, "cer_mean": np.nan, "cer_micro": np.nan, "exact": np.nan},
                 "zh": {"n": 3, "cer_mean": 0.0, "cer_micro": 0.0, "exact": 1.0}},
         "no_text_images": 1, "no_text_read_as_text": 0, "paper_images": 543_098,
         "paper_hours": 543_098 / 50 / 3600, "target_images_per_s": 40.0, "ocr_s": 1, "embed_s": 1}
    text = "\n".join(format_result(r))
    assert "50.0 images/s end to end" in text and "(target >= 40 images/s: met)" in text
    assert "Chinese 0.000" in text and "English" not in text.split("CER:")[1].split("\n")[0]
    assert "3.02 h" in text
    r["images_per_s"] = 10.0
    assert "target >= 40 images/s: missed" in "\n".join(format_result(r))
    # a steady rate is judged instead of the end-to-end one, start-up stated beside it
    r.update(steady_images_per_s=41.5, first_task_s=0.61)
    text = "\n".join(format_result(r))
    assert "steady: 41.5 images/s" in text and "after 0.61 s" in text
    assert "target >= 40: met" in text and "then 41.5 images/s" in text


def test_repeats_report_the_median_run_and_every_runs_rate(tmp_path):
    """``--repeat 3``: three measured runs on the same rendered stickers; the report (and
    features.json) is the run with the median steady rate, and lists all three."""
    from click.testing import CliRunner

    from bench.cli.main import cli
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["perf", "--stage", "features", "--images", "12",
                                   "--workers", "1", "--repeat", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "features.json").read_text())
    rates = [x["steady_images_per_s"] for x in r["repeats"]]
    assert len(rates) == 3 and r["steady_images_per_s"] == sorted(rates)[1]
    assert [line for line in res.output.splitlines() if line.startswith("run ")] == [
        f"run {i}/3: steady {x['steady_images_per_s']:.1f} images/s, "
        f"{x['cpu_ms_per_image']:.1f} ms CPU per image, load {x['load_start']:.2f}"
        for i, x in enumerate(r["repeats"], 1)]
    assert "repeats: 3 runs, steady images/s " + ", ".join(f"{x:.1f}" for x in rates) \
        in res.output
    assert res.output.count("features bench: 12 stickers") == 0  # one report, the median's
    assert res.output.count("CER: English") == 1


def test_the_ocr_graph_option_reaches_the_engine_and_the_report(tmp_path):
    """``--ocr-graph rapidocr`` runs PP-OCRv4 as shipped: the report names it, and the cache
    entry the run wrote (kept with ``keep_images``) is keyed by it."""
    from click.testing import CliRunner

    from bench.cli.main import cli
    from bench.perf.features_bench import run_features_bench
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli, ["perf", "--stage", "features", "--images", "10",
                                   "--workers", "1", "--ocr-graph", "rapidocr", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "features.json").read_text())["ocr_graph"] == "rapidocr"
    assert "OCR paddle (rapidocr graphs) + encoder style-stats" in res.output
    r = run_features_bench(10, workers=1, out=out, echo=lambda _: None, keep_images=True)
    assert r["ocr_graph"] == "folded"
    metas = [json.loads(m.read_text()) for m in (out / "cache").rglob("*.json")]
    assert {m.get("params", {}).get("graph") for m in metas} >= {"folded"}


def test_the_ocr_graph_choices_are_the_configs():
    """The command line lists the graphs without importing the config (fast start): the same
    values."""
    from bench.cli.perf_cmd import perf
    from bench.features.config import OCR_GRAPHS
    option = next(p for p in perf.params if p.name == "ocr_graph")
    assert tuple(option.type.choices) == OCR_GRAPHS
