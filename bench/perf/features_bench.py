"""``persrv-bench perf --stage features``: OCR and image embeddings at paper scale, measured.

:func:`render_dataset` draws ``n`` stickers with :func:`bench.data.synthetic_render.render_sticker`
(sizes 120-512 px, about half English and half Chinese captions, a fifth without any caption,
all six art styles) into a canonical dataset directory; :func:`run_features_bench` then runs
:func:`bench.features.extract.attach_features` on it with a fresh feature cache — the code path of
``persrv-bench run`` and ``features`` — and reports images/s overall and per stage (decode,
detect, recognise, embed; a stage's rate is images over the seconds its workers spent in it),
the CPU, the load average, peak memory (this process and its worker processes), the CER against
the rendered captions (English, Chinese) and the time the 543,098 paper stickers would take.
Peak memory is each process's lifetime peak (``ru_maxrss``): with ``--repeat`` or after other
work in the same process, "this process" includes the rendering and the earlier runs.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.perf.config import MB, PAPER_STICKERS

#: Side lengths drawn uniformly (px): thumbnails to the 512 px of messenger stickers.
MIN_SIDE, MAX_SIDE = 120, 512
NO_TEXT_SHARE = 0.2
#: The throughput target of issue 28 (OCR + embeddings, 2 cores).
TARGET_IMAGES_PER_S = 40.0


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render_dataset(out: str | Path, n: int, seed: int = 0) -> Any:
    """Write ``n`` rendered stickers (mixed sizes and languages, some without text) as a
    canonical dataset in ``out`` and return it loaded. ``gt_caption`` is "" where no text."""
    from bench.data.format import write_dataset
    from bench.data.synthetic import synthetic_stickers
    from bench.data.synthetic_render import SHAPES, STYLES, render_sticker

    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 28])
    n_zh = n // 2
    parts = []
    for lang, count, offset in (("en", n - n_zh, 0), ("zh", n_zh, 1)):
        if count:
            st, _ = synthetic_stickers(count, lang, len(STYLES), seed + offset)
            st["language"] = lang
            parts.append(st)
    stickers = pd.concat(parts, ignore_index=True)
    order = rng.permutation(len(stickers))
    stickers = stickers.iloc[order].reset_index(drop=True)
    stickers["sticker_id"] = [f"f{i:06d}" for i in range(len(stickers))]
    sizes = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=len(stickers))
    no_text = rng.random(len(stickers)) < NO_TEXT_SHARE
    stickers.loc[no_text, "gt_caption"] = ""
    styles, shapes = list(STYLES), list(SHAPES)
    images = []
    for i, row in enumerate(stickers.itertuples()):
        rel = f"images/{row.sticker_id}.png"
        render_sticker(shapes[i % len(shapes)], styles[(i // len(shapes)) % len(styles)],
                       int(rng.integers(12)), row.gt_caption, int(sizes[i]),
                       row.language).save(root / rel)
        images.append(rel)
    stickers["image"] = images
    stickers["gt_size"] = sizes.astype(np.int64)
    clicks = pd.DataFrame({"user_id": "u0", "query": "sticker",
                           "sticker_id": stickers["sticker_id"][:1], "ts": np.int64(0)})
    meta = {"name": f"features-bench-{n}", "source": "bench.perf.features_bench (rendered)",
            "license": "CC0-1.0 (generated)", "languages": ["en", "zh"],
            "builder_params": {"n": n, "seed": seed, "sizes": [MIN_SIDE, MAX_SIDE],
                               "no_text_share": NO_TEXT_SHARE}}
    cols = ["sticker_id", "image", "gt_caption", "gt_style", "gt_size"]
    return write_dataset(root, stickers[cols], clicks, meta)


def _peak_rss_mb() -> tuple[float, float]:
    """(this process's peak RSS, the largest peak of its finished child processes), in MB."""
    from bench.perf.measure import max_rss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return max_rss() / MB, children / MB


def run_features_bench(n: int = 400, *, workers: int = 2, parallel: str = "auto",
                       encoder: str = "style-stats", seed: int = 0, out: str | Path,
                       echo: Callable[[str], None] = print, keep_images: bool = False,
                       ocr_graph: str = "folded") -> dict[str, Any]:
    """Render ``n`` stickers under ``out``, extract OCR + embeddings cold, and return (and
    write to ``out/features.json``) the measurement; see the module docstring. ``ocr_graph``:
    PP-OCRv4's graphs ``folded`` or as ``rapidocr`` ships them (``features.ocr.graph``)."""
    from bench.features.cache import FeatureCache
    from bench.features.config import FeaturesConfig
    from bench.features.extract import attach_features
    from bench.features.ocr import ocr_accuracy, ocr_stickers

    out = Path(out)
    data_dir, cache_dir = out / "dataset", out / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    if (data_dir / "dataset.json").exists() and \
            json.loads((data_dir / "dataset.json").read_text()).get("counts", {}).get(
                "stickers") == n:
        from bench.data.format import load_dataset
        ds = load_dataset(data_dir)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        ds = render_dataset(data_dir, n, seed)
    render_s = time.perf_counter() - t0
    echo(f"features bench: {n} stickers ({MIN_SIDE}-{MAX_SIDE} px, en + zh, "
         f"{NO_TEXT_SHARE:.0%} without text) rendered in {render_s:.1f} s")
    fcfg: dict[str, Any] = {"ocr": {"graph": ocr_graph}, "encoder": encoder, "workers": workers,
                            "cache_dir": str(cache_dir), "descriptions": None}
    if parallel != "auto":
        fcfg["parallel"] = parallel
    cfg = FeaturesConfig.model_validate(fcfg)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    _, emb, report = attach_features(ds, cfg, FeatureCache(cache_dir), progress=False)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = sum((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(cpu0, cpu1))
    load1 = os.getloadavg()
    peak_self, peak_children = _peak_rss_mb()
    ocr_cfg = cfg.ocr_config(["en", "zh"])
    ocr = ocr_stickers(ds, ocr_cfg, FeatureCache(cache_dir), progress=False)  # cached
    cer = {}
    for lang in ("en", "zh"):
        acc = ocr_accuracy(ds, ocr=ocr, language=lang)
        cer[lang] = {k: acc[k] for k in ("n", "cer_mean", "cer_micro", "exact")}
    no_text = ds.stickers["gt_caption"].fillna("").astype(str).str.strip() == ""
    ocr_by_id = dict(zip(ocr["sticker_id"], ocr["ocr_text"]))
    false_text = int(sum(bool(ocr_by_id.get(s, "").strip())
                         for s in ds.stickers.loc[no_text, "sticker_id"]))
    stages = report.get("image_stages") or {}
    stages_cpu = report.get("image_stages_cpu") or {}
    if report.get("parallel") == "processes":  # workers are the forkserver's children
        cpu_s += sum(stages_cpu.values())
        peak_children = max(peak_children, (report.get("worker_peak_rss") or 0) / MB)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result: dict[str, Any] = {
        "images": n, "workers": workers, "parallel": report.get("parallel", parallel),
        "encoder": report.get("encoder"), "ocr": report.get("ocr"), "ocr_graph": ocr_graph,
        "cpu_model": cpu_model(), "cpus": os.cpu_count(),
        "cpus_available": cores,
        "load_start": [round(x, 2) for x in load0], "load_end": [round(x, 2) for x in load1],
        "wall_s": wall, "images_per_s": n / wall if wall > 0 else float("nan"),
        "cpu_s": cpu_s, "ocr_s": report.get("ocr_seconds"), "embed_s": report.get("embed_seconds"),
        "stages_s": stages,
        "stage_images_per_s": {k: (n / v if v else float("inf")) for k, v in stages.items()},
        "stages_cpu_s": stages_cpu, "cpu_ms_per_image": 1000 * cpu_s / n,
        # what the CPU time allows on this many idle cores (no waiting for other programs)
        "cpu_bound_images_per_s": cores * n / cpu_s if cpu_s > 0 else float("nan"),
        "peak_rss_mb": peak_self, "peak_rss_worker_mb": peak_children,
        "cer": cer, "no_text_images": int(no_text.sum()), "no_text_read_as_text": false_text,
        "embed_dim": None if emb is None else int(emb.shape[1]),
        "first_task_s": report.get("first_task_s"),
        "steady_images_per_s": report.get("steady_images_per_s"),
        "paper_images": PAPER_STICKERS,
        # a long run: start-up once, then the steady rate (every worker busy)
        "paper_hours": _paper_hours(report, wall, n),
        "target_images_per_s": TARGET_IMAGES_PER_S, "python": sys.version.split()[0],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(result, indent=2, default=float),
                                       encoding="utf-8")
    for line in format_result(result):
        echo(line)
    if not keep_images:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return result


def run_features_repeats(n: int = 400, repeats: int = 1, *, out: str | Path,
                         echo: Callable[[str], None] = print,
                         before_run: Callable[[int], None] | None = None, **kwargs: Any
                         ) -> dict[str, Any]:
    """:func:`run_features_bench` ``repeats`` times on the same rendered stickers (each with a
    fresh cache; ``before_run(i)`` first, e.g. to wait for a quiet machine) and return the run
    with the median steady rate (the lower middle one for an even count), with ``repeats``: each
    run's steady rate, CPU ms per image and load at start. A shared host's speed drifts between
    runs at the same load average (by up to a third on the 2-core VM of the README's block);
    one run is one draw of it."""
    runs = []
    for i in range(repeats):
        if before_run is not None:
            before_run(i)
        r = run_features_bench(n, out=out, echo=echo if repeats == 1 else (lambda _: None),
                               **kwargs)
        runs.append(r)
        if repeats > 1:
            echo(f"run {i + 1}/{repeats}: steady {_rate(r):.1f} images/s, "
                 f"{r['cpu_ms_per_image']:.1f} ms CPU per image, load {r['load_start'][0]:.2f}")
    if repeats == 1:
        return runs[0]
    median = sorted(runs, key=_rate)[(repeats - 1) // 2]
    median = dict(median, repeats=[{"steady_images_per_s": _rate(r),
                                    "cpu_ms_per_image": r["cpu_ms_per_image"],
                                    "load_start": r["load_start"][0]} for r in runs])
    Path(out, "features.json").write_text(json.dumps(median, indent=2, default=float),
                                          encoding="utf-8")
    for line in format_result(median):
        echo(line)
    return median


def _rate(r: dict[str, Any]) -> float:
    return r.get("steady_images_per_s") or r["images_per_s"]


def _paper_hours(report: dict[str, Any], wall: float, n: int) -> float:
    """Hours for the paper's 543,098 images: the measured start-up (call to first task) plus the
    images at the steady rate; the end-to-end rate where no steady rate was measured."""
    steady, first = report.get("steady_images_per_s"), report.get("first_task_s") or 0.0
    if steady:
        return (first + PAPER_STICKERS / steady) / 3600
    return PAPER_STICKERS / (n / wall) / 3600 if wall > 0 else float("nan")


def format_result(r: dict[str, Any]) -> list[str]:
    """The printed report of :func:`run_features_bench`."""
    steady = r.get("steady_images_per_s")
    rate = steady or r["images_per_s"]
    met = "met" if rate >= r["target_images_per_s"] else "missed"
    lines = [
        f"CPU: {r['cpu_model']} x {r['cpus_available'] or r['cpus']}; load average "
        f"{r['load_start'][0]:.2f} at start, {r['load_end'][0]:.2f} at end",
        f"OCR {r['ocr']}{' (' + r['ocr_graph'] + ' graphs)' if r.get('ocr_graph') else ''} + "
        f"encoder {r['encoder']}, {r['workers']} workers ({r['parallel']}): "
        f"{r['images']} images in {r['wall_s']:.1f} s = {r['images_per_s']:.1f} images/s end "
        "to end",
        (f"steady: {steady:.1f} images/s while every worker is busy (each worker's images over "
         f"its first task's start to its last task's end, summed), after {r['first_task_s']:.2f}"
         " s of pool and model start-up; the rest of the end-to-end time is the last tasks' "
         f"tail (target >= {r['target_images_per_s']:.0f}: {met})" if steady else
         f"(target >= {r['target_images_per_s']:.0f} images/s: {met})"),
        f"CPU: {r['cpu_s']:.1f} s = {r['cpu_ms_per_image']:.1f} ms per image, all processes; "
        f"{r['cpu_bound_images_per_s']:.1f} images/s if {r['cpus_available']} cores were idle",
    ]
    if r["stages_s"]:
        lines.append("per stage (images / seconds its workers spent in it): " + ", ".join(
            f"{k} {r['stage_images_per_s'][k]:.1f}/s ({v:.1f} s)"
            for k, v in r["stages_s"].items()))
        lines.append("CPU per stage: " + ", ".join(
            f"{k} {1000 * v / r['images']:.1f} ms/image" for k, v in r["stages_cpu_s"].items()))
    else:
        lines.append(f"per stage: OCR {r['ocr_s']} s, embed {r['embed_s']} s (no finer split)")
    names = {"en": "English", "zh": "Chinese"}
    lines.append("CER: " + ", ".join(
        f"{names[k]} {v['cer_mean']:.3f} ({v['exact']:.0%} exact, {v['n']} captions)"
        for k, v in r["cer"].items() if v["n"]) +
        f"; {r['no_text_read_as_text']} of {r['no_text_images']} images without text read text")
    lines.append(f"peak memory: {r['peak_rss_mb']:.0f} MB (this process), "
                 f"{r['peak_rss_worker_mb']:.0f} MB (largest worker process)")
    lines.append(f"paper scale: {r['paper_images']:,} images -> {r['paper_hours']:.2f} h on this "
                 f"machine (start-up once, then {rate:.1f} images/s)")
    if r.get("repeats"):
        reps = r["repeats"]
        lines.append(
            f"repeats: {len(reps)} runs, steady images/s "
            + ", ".join(f"{x['steady_images_per_s']:.1f}" for x in reps)
            + " (this report: the median run); CPU ms per image "
            + ", ".join(f"{x['cpu_ms_per_image']:.1f}" for x in reps)
            + "; load at start " + ", ".join(f"{x['load_start']:.2f}" for x in reps))
    return lines
