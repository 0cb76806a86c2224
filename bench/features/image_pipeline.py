"""OCR and image embeddings in one pass over the images: each sticker is decoded once for both,
in worker processes or threads, and the results land in the same feature-cache entries that
:func:`bench.features.ocr.ocr_stickers` and :func:`bench.features.embed.embed_stickers` read
(which then find everything cached and do no work).

:func:`fill_image_features` computes what the cache lacks for a set of stickers — all of a
dataset, or one shard of it (``features --shard I/N``) — in tasks of :data:`TASK_IMAGES` images,
and writes a part to each entry every :data:`PART_IMAGES` images (an interruption loses at most
that much; parts are written atomically under unique names, so shards on other machines can
write the same entry at the same time). A sticker's features depend on nothing but its image
(OCR recognises each crop alone, see :mod:`bench.features.ocr_paddle`; encoders with
``raw_features`` work per image), so the cache holds the same bytes whatever the worker count,
the parallel mode, the task size or the sharding.

Workers: ``processes`` (a ``forkserver`` pool — each worker loads its own OCR engine, nothing
of the parent's memory is copied) or ``threads`` (onnxruntime runs without the GIL, but text
assembly, box post-processing and PIL work hold it). Measured with ``persrv-bench perf --stage
features --images 400 --parallel processes|threads`` on 2 cores shared with other work (load
14-20, recognition at 224 px then): 47.7-51.9 ms of CPU per image with processes, 54.6 with
threads; wall times were within the noise of that load. ``auto`` picks processes. Model encoders (open-clip, chinese-clip) are
not shipped to processes: with one, the pipeline runs in threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from bench.features.config import OcrConfig
from bench.features.embed import embed_cache_key, embed_rows
from bench.features.images import flatten, load_rgba_checked
from bench.features.ocr import image_paths, make_engine, ocr_cache_key, ocr_rows, ocr_stickers
from bench.features.ocr_engine import add_stage_time

log = logging.getLogger(__name__)

STAGES = ("decode", "detect", "recognise", "embed")
#: Images per worker task, and per cache part written.
TASK_IMAGES = 32
PART_IMAGES = 512
#: ``parallel: auto`` starts worker processes only for at least this many images to compute.
PROCESS_MIN_IMAGES = 64


def process_images(paths: Sequence[str | None], ocr: OcrConfig | None, encoder: Any
                   ) -> dict[str, Any]:
    """Decode each image once; OCR it (``ocr`` not None) and embed it (``encoder`` not None).

    Returns ``readings`` (``(text, confidence, missing reason)`` per path, or None),
    ``vectors`` (float32, ``raw_dim`` columns for encoders with ``raw_features``, else ``dim``;
    zero rows for unreadable images) with ``reasons``, ``timings`` (seconds per stage), and
    ``span``: the task's start and end on the machine-wide monotonic clock (seconds).
    """
    began = time.monotonic()
    timings = dict.fromkeys(STAGES + tuple(f"{s}_cpu" for s in STAGES), 0.0)
    clock = time.perf_counter(), time.thread_time()
    frames = ocr.frames if ocr is not None else 1
    decoded = [load_rgba_checked(p, frames=frames) for p in paths]
    add_stage_time(timings, "decode", *clock)
    readings = None
    if ocr is not None:
        readings = _ocr_decoded(decoded, ocr, timings, paths)
    vectors, reasons = None, None
    if encoder is not None:
        if frames != 1:  # OCR read several frames stacked; the encoder sees the first
            clock = time.perf_counter(), time.thread_time()
            decoded = [load_rgba_checked(p) for p in paths]
            add_stage_time(timings, "decode", *clock)
        clock = time.perf_counter(), time.thread_time()
        vectors, reasons = _embed_decoded(decoded, encoder)
        add_stage_time(timings, "embed", *clock)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"readings": readings, "vectors": vectors, "reasons": reasons, "timings": timings,
            "pid": os.getpid(), "peak_rss": int(peak), "span": (began, time.monotonic())}


def _ocr_decoded(decoded, ocr: OcrConfig, timings: dict[str, float], paths
                 ) -> list[tuple[str, float, str]]:
    engine = make_engine(ocr)
    out: list[tuple[str, float, str]] = [("", 0.0, r or "unreadable") for _, r in decoded]
    ok = [i for i, (im, _) in enumerate(decoded) if im is not None]
    if not ok:
        return out
    try:
        res = engine.read_decoded([decoded[i][0] for i in ok], ocr, timings)
        pairs = list(zip(ok, res))
    except Exception:  # noqa: BLE001 - find the image the model fails on; read the others
        pairs = []
        for i in ok:
            try:
                pairs.append((i, engine.read_decoded([decoded[i][0]], ocr, timings)[0]))
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
                log.warning("%s OCR failed on %s: %s", ocr.engine, paths[i], exc)
                out[i] = ("", 0.0, "ocr_failed")
    for i, (text, conf) in pairs:
        out[i] = (text, conf, "")
    return out


def _embed_decoded(decoded, encoder: Any) -> tuple[np.ndarray, list[str]]:
    raw = hasattr(encoder, "raw_features")
    dim = encoder.raw_dim if raw else encoder.dim
    vecs = np.zeros((len(decoded), dim), np.float32)
    reasons = [r or "" for _, r in decoded]
    ok = [i for i, (im, _) in enumerate(decoded) if im is not None]
    if ok:
        images = [decoded[i][0] for i in ok]
        if not getattr(encoder, "needs_alpha", False):
            images = [flatten(im) for im in images]
        vecs[ok] = encoder.raw_features(images) if raw else encoder.encode(images)
    return vecs, reasons


def _task(args: tuple) -> dict[str, Any]:
    return process_images(*args)


def _worker_init(ocr: OcrConfig | None = None) -> None:
    """A worker process's start-up: one core per worker, whatever it imports; the OCR engine
    loaded before the first task (so each task's span is work, and ``first_task_s`` is the
    pool's and the models' start-up)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    engine = make_engine(ocr) if ocr is not None else None
    if engine is not None and engine.reads_decoded:
        engine.warm_up(ocr)


def parallel_mode(parallel: str, workers: int, n_images: int, encoder: Any) -> str:
    """``inline`` (one worker or nothing to do), ``threads`` or ``processes`` for
    ``parallel`` ``auto``/``threads``/``processes``. Model encoders force ``threads`` (their
    weights are not shipped to processes)."""
    if workers <= 1 or n_images <= TASK_IMAGES:
        return "inline"
    if encoder is not None and not hasattr(encoder, "raw_features"):
        return "threads"
    if parallel == "auto":
        return "processes" if n_images >= PROCESS_MIN_IMAGES else "threads"
    return parallel


def _executor(mode: str, workers: int, ocr: OcrConfig | None = None) -> Executor | None:
    if mode == "processes":
        return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                   initargs=(ocr,),
                                   mp_context=multiprocessing.get_context("forkserver"))
    if mode == "threads":
        return ThreadPoolExecutor(max_workers=workers)
    return None


def _tasks(ids: list[str], paths: dict[str, str | None], ocr: OcrConfig | None, encoder: Any
           ) -> Iterable[tuple[list[str], tuple]]:
    for start in range(0, len(ids), TASK_IMAGES):
        chunk = ids[start:start + TASK_IMAGES]
        yield chunk, ([paths[s] for s in chunk], ocr, encoder)


def fill_image_features(stickers: pd.DataFrame, root: str | os.PathLike | None,
                        fingerprint: str, cache: Any, *, ocr: OcrConfig | None = None,
                        encoder: Any = None, ids: Sequence[str] | None = None,
                        workers: int = 2, parallel: str = "auto", progress: bool = True
                        ) -> dict[str, Any]:
    """Compute the OCR and/or embeddings the cache lacks for ``ids`` (default: every sticker),
    decoding each image once. Returns ``{parallel, workers, ocr_computed, embed_computed,
    image_stages (wall seconds per stage, summed over workers), image_stages_cpu (CPU seconds
    of the threads that ran each stage), worker_peak_rss (bytes, the largest worker process;
    this process in threads mode), seconds, first_task_s (from the call to the first task's
    start: pool and model start-up), steady_images_per_s (the sum over workers of each one's
    images over its first task's start to its last task's end: the rate while every worker is
    busy, what a long run approaches)}``.

    ``ocr``: OCR settings or None; an engine that reads files only (tesseract) is run through
    :func:`ocr_stickers` on the stickers in question. ``encoder``: an image encoder or None
    (``precomputed``: nothing to do here).
    """
    from bench.progress import Progress
    t_start, mono_start = time.perf_counter(), time.monotonic()
    root_path = Path(root) if root is not None else None
    all_ids = stickers["sticker_id"].astype(str).tolist()
    paths = dict(zip(all_ids, image_paths(stickers, root_path)))
    target = list(dict.fromkeys(str(s) for s in (all_ids if ids is None else ids)))
    report: dict[str, Any] = {"workers": workers, "ocr_computed": 0, "embed_computed": 0,
                              "image_stages": {}, "parallel": "inline"}
    if ocr is not None and not make_engine(ocr).reads_decoded:
        sub = stickers[stickers["sticker_id"].astype(str).isin(set(target))]
        res = ocr_stickers((sub, root_path), ocr, cache, dataset_fingerprint=fingerprint,
                           progress=progress)
        report["ocr_computed"] = int(res.attrs.get("computed", 0))
        ocr = None
    if encoder is not None and not getattr(encoder, "needs_images", True):
        encoder = None
    keys: dict[str, tuple[str, dict[str, Any]]] = {}
    if ocr is not None:
        keys["ocr"] = ocr_cache_key(cache, fingerprint, ocr)
    if encoder is not None:
        keys["embed"] = embed_cache_key(cache, fingerprint, encoder)
    have = {}
    for what, (key, _) in keys.items():
        frame = cache.load(key)
        have[what] = set(frame["sticker_id"]) if frame is not None else set()
    need_ocr = [s for s in target if "ocr" in keys and s not in have["ocr"]]
    need_emb = [s for s in target if "embed" in keys and s not in have["embed"]]
    only_ocr, only_emb = set(need_ocr) - set(need_emb), set(need_emb) - set(need_ocr)
    both = [s for s in need_ocr if s not in only_ocr]
    groups = [(both, ocr, encoder), ([s for s in need_ocr if s in only_ocr], ocr, None),
              ([s for s in need_emb if s in only_emb], None, encoder)]
    n_todo = sum(len(g[0]) for g in groups)
    mode = parallel_mode(parallel, workers, n_todo, encoder)
    report["parallel"] = mode
    stages = dict.fromkeys(STAGES + tuple(f"{s}_cpu" for s in STAGES), 0.0)
    peaks: dict[int, int] = {}
    spans: dict[Any, list[float]] = {}  # worker -> [images, first start, last end]
    buffers: dict[str, list[pd.DataFrame]] = {"ocr": [], "embed": []}

    def flush(what: str) -> None:
        if buffers[what]:
            key, meta = keys[what]
            cache.write_part(key, pd.concat(buffers[what], ignore_index=True), meta=meta)
            buffers[what] = []

    executor = _executor(mode, workers, ocr) if n_todo else None
    try:
        with Progress(n_todo, "OCR + embed" if len(keys) == 2 else
                      ("OCR" if "ocr" in keys else "embed"), "stickers", rate_unit="img",
                      enabled=progress and n_todo > 0) as bar:
            for group_ids, g_ocr, g_enc in groups:
                if not group_ids:
                    continue
                tasks = list(_tasks(group_ids, paths, g_ocr, g_enc))
                args = [a for _, a in tasks]
                results = executor.map(_task, args) if executor is not None else map(_task, args)
                pending = 0
                for (chunk, _), res in zip(tasks, results):
                    t = res["timings"]
                    for k in stages:
                        stages[k] += t.get(k, 0.0)
                    peaks[res["pid"]] = max(peaks.get(res["pid"], 0), res["peak_rss"])
                    worker = res["pid"] if mode == "processes" else "pool"
                    span = spans.setdefault(worker, [0, res["span"][0], res["span"][1]])
                    span[0] += len(chunk)
                    span[1], span[2] = min(span[1], res["span"][0]), max(span[2], res["span"][1])
                    if res["readings"] is not None:
                        # wall seconds per image, with ``workers`` tasks running at once
                        per = (t["decode"] + t["detect"] + t["recognise"]) / max(1, len(chunk)) \
                            / (workers if mode != "inline" else 1)
                        buffers["ocr"].append(ocr_rows(chunk, res["readings"], per))
                        report["ocr_computed"] += len(chunk)
                    if res["vectors"] is not None:
                        buffers["embed"].append(embed_rows(chunk, res["vectors"],
                                                           res["reasons"]))
                        report["embed_computed"] += len(chunk)
                    bar.update(len(chunk))
                    pending += len(chunk)
                    if pending >= PART_IMAGES:
                        flush("ocr"), flush("embed")
                        pending = 0
                flush("ocr"), flush("embed")
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    shown = [k for k in STAGES if stages[k] > 0 or (k == "embed" and encoder is not None)]
    report["image_stages"] = {k: round(stages[k], 3) for k in shown}
    report["image_stages_cpu"] = {k: round(stages[f"{k}_cpu"], 3) for k in shown}
    report["worker_peak_rss"] = max(peaks.values()) if peaks else 0
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if spans:
        report["first_task_s"] = round(min(v[1] for v in spans.values()) - mono_start, 3)
        # threads (and inline) are one entry: its images over its span is already the pool's rate
        report["steady_images_per_s"] = sum(v[0] / (v[2] - v[1]) for v in spans.values()
                                            if v[2] > v[1]) or None
    return report


def shard_ids(ids: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """Shard ``I`` of ``N`` (0-based; ``features`` and ``describe --shard I/N``): the I-th of N
    contiguous, near-equal blocks of ``ids`` in their order (every sticker in exactly one
    shard)."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        from bench.errors import ConfigError
        raise ConfigError(f"--shard {i}/{n}: expected I/N with 0 <= I < N")
    bounds = np.linspace(0, len(ids), n + 1).round().astype(int)
    return list(ids[bounds[i]:bounds[i + 1]])
