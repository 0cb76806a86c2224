"""OCR of sticker captions, cached and parallel (DESIGN §9): one interface
(:class:`bench.features.ocr_engine.OcrEngine`), engines registered by class in
:data:`OCR_ENGINES`.

``engine: paddle`` (the default) is PaddleOCR's PP-OCRv4 detection + recognition, Chinese and
English in one model, run offline on onnxruntime from the ``rapidocr-onnxruntime`` wheel
(:mod:`bench.features.ocr_paddle`); ``engine: tesseract`` is Debian's tesseract
(:mod:`bench.features.ocr_tesseract`, needs ``apt-get install tesseract-ocr``). Why paddle is the
default, measured on rendered synthetic captions (whitespace-insensitive CER against
``gt_caption``): English 0.000-0.03 vs tesseract 0.07-0.19, Chinese 0.00-0.03 vs tesseract
chi_sim 0.85 (the numbers and commands are in the README's OCR section).

:func:`ocr_stickers` reads every sticker through the :class:`FeatureCache` (key: dataset
fingerprint, engine and its settings, engine version); :func:`ocr_accuracy` scores a reading
against ``gt_caption``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.features.config import OcrConfig
from bench.features.images import count_reasons
from bench.features.ocr_engine import OcrEngine
from bench.features.ocr_paddle import PaddleEngine
from bench.features.ocr_tesseract import (INSTALL_HINT, OcrUnavailable, TesseractEngine,
                                          ensure_tesseract, ocr_images, parse_tsv, preprocess,
                                          tesseract_available, tesseract_cmd, tesseract_version)
from bench.features.ocr_text import character_error_rate, is_cjk, levenshtein, normalise_text
from bench.progress import Progress

log = logging.getLogger(__name__)

OCR_EXTRACTOR = "ocr"
#: Bump when pre-processing or text assembly changes (part of the cache key).
OCR_VERSION = 2

#: The OCR engines by name (``features.ocr.engine``); each implements
#: :class:`bench.features.ocr_engine.OcrEngine`.
OCR_ENGINES: dict[str, type[OcrEngine]] = {"paddle": PaddleEngine, "tesseract": TesseractEngine}

__all__ = ["INSTALL_HINT", "OcrConfig", "OcrUnavailable", "ocr_images", "ocr_stickers",
           "parse_tsv", "preprocess", "tesseract_available", "ensure_tesseract", "tesseract_cmd",
           "tesseract_version", "OCR_ENGINES", "make_engine", "ocr_cache_key", "ocr_rows",
           "engine_images", "ocr_accuracy", "ocr_report_lines", "caption_language",
           "character_error_rate", "levenshtein", "normalise_text", "is_cjk"]


def make_engine(config: OcrConfig) -> OcrEngine:
    """The engine ``config.engine`` names (:data:`OCR_ENGINES`)."""
    try:
        return OCR_ENGINES[config.engine]()
    except KeyError:
        from bench.errors import ConfigError
        raise ConfigError(f"unknown OCR engine {config.engine!r}; choose one of "
                          f"{', '.join(OCR_ENGINES)}") from None


def engine_images(paths, config: OcrConfig) -> list[tuple[str, float, str]]:
    """``(text, confidence 0-100, missing reason or "")`` per image, with ``config.engine``."""
    return make_engine(config).read_paths(paths, config)


def engine_model(config: OcrConfig) -> str:
    """The engine and its version (part of the cache key); raises if it is not installed."""
    return make_engine(config).model_id(config)


def ocr_cache_key(cache: Any, fingerprint: str, config: OcrConfig) -> tuple[str, dict[str, Any]]:
    """``(key, meta)`` of the OCR cache entry for a dataset fingerprint and OCR settings
    (raises :class:`OcrUnavailable` when the engine is not installed)."""
    model = engine_model(config)
    params = {**config.cache_params(), "version": OCR_VERSION}
    key = cache.key(dataset_fingerprint=fingerprint, extractor=OCR_EXTRACTOR, params=params,
                    model=model)
    return key, {"dataset_fingerprint": fingerprint, "extractor": OCR_EXTRACTOR,
                 "params": params, "model": model}


def ocr_rows(ids: list[str], readings: list[tuple[str, float, str]], per_image_s: float
             ) -> pd.DataFrame:
    """The cached OCR columns for ``ids``: ``sticker_id, ocr_text, ocr_conf, ocr_missing,
    ocr_seconds``."""
    return pd.DataFrame({"sticker_id": ids, "ocr_text": [r[0] for r in readings],
                         "ocr_conf": np.array([r[1] for r in readings], dtype=np.float32),
                         "ocr_missing": [r[2] for r in readings],
                         "ocr_seconds": np.full(len(ids), per_image_s, dtype=np.float32)})


# ---------------------------------------------------------------------------------- datasets

def _resolve(data: Any, root: str | os.PathLike | None, dataset_fingerprint: str | None
             ) -> tuple[pd.DataFrame, Path | None, str | None]:
    if isinstance(data, tuple):  # (stickers, root)
        data, root = data[0], (root if root is not None else data[1])
    stickers = getattr(data, "stickers", None)
    if stickers is not None:  # a bench.data.format.Dataset
        return stickers, (Path(root) if root is not None else data.root), \
            (dataset_fingerprint or data.fingerprint or None)
    return data, (Path(root) if root is not None else None), dataset_fingerprint


def image_paths(stickers: pd.DataFrame, root: Path | None) -> list[str | None]:
    """Absolute image paths of the stickers rows (None where the sticker has no image)."""
    out: list[str | None] = []
    for rel in (stickers["image"] if "image" in stickers else [None] * len(stickers)):
        if rel is None or (isinstance(rel, float) and np.isnan(rel)) or str(rel) == "":
            out.append(None)
        else:
            out.append(str(root / str(rel)) if root is not None else str(rel))
    return out


def stickers_fingerprint(stickers: pd.DataFrame, root: Path | None) -> str:
    """A content fingerprint of sticker ids and image bytes, for frames that are not a Dataset."""
    import hashlib
    h = hashlib.sha256()
    for sid, p in zip(stickers["sticker_id"].astype(str), image_paths(stickers, root)):
        h.update(sid.encode() + b"\0")
        if p is not None and os.path.isfile(p):
            h.update(hashlib.sha256(Path(p).read_bytes()).digest())
        else:
            h.update(b"<none>")
    return h.hexdigest()[:16]


def ocr_stickers(data: Any, config: OcrConfig | None = None, cache: Any = None, *,
                 root: str | os.PathLike | None = None, dataset_fingerprint: str | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """OCR every sticker: a frame ``sticker_id, ocr_text, ocr_conf, ocr_missing, ocr_seconds``
    in row order (``ocr_seconds``: wall seconds per image of the chunk that read it, kept in the
    cache, so a warm run still reports the engine's speed; NaN for rows cached without it).

    ``data``: a :class:`bench.data.format.Dataset`, or a stickers frame with ``root`` (the
    directory image paths are relative to; ``(stickers, root)`` works too). ``cache``: a
    :class:`FeatureCache` (None: no cache); the key is (dataset fingerprint, "ocr", config minus
    workers and batch, engine version), and only stickers no cached part holds are read. ``ocr_missing`` is "" or the reason the image could
    not be read (``no_image``, ``missing``, ``empty``, ``video``, ``truncated``, ...): those get
    empty text. ``frame.attrs`` holds ``missing`` (count by reason), ``computed`` (stickers OCR'd
    by this call) and ``seconds``.
    """
    config = config or OcrConfig()
    stickers, root_path, fp = _resolve(data, root, dataset_fingerprint)
    engine_model(config)  # the engine is installed (else a one-line error)
    t0 = time.perf_counter()
    ids = stickers["sticker_id"].astype(str).tolist()
    path_of = dict(zip(ids, image_paths(stickers, root_path)))
    computed = 0

    def fn(chunk: list[str]) -> pd.DataFrame:
        nonlocal computed
        t_chunk = time.perf_counter()
        res = engine_images([path_of[s] for s in chunk], config)
        per_image = (time.perf_counter() - t_chunk) / max(1, len(chunk))
        computed += len(chunk)
        return ocr_rows(chunk, res, per_image)

    if cache is None:
        parts = []
        with Progress(len(ids), f"OCR ({config.engine})", "stickers", rate_unit="img",
                      enabled=progress) as bar:
            for i in range(0, len(ids), 256):
                parts.append(fn(ids[i:i + 256]))
                bar.update(len(parts[-1]))
        out = pd.concat(parts, ignore_index=True) if parts else \
            pd.DataFrame({"sticker_id": [], "ocr_text": [], "ocr_conf": [], "ocr_missing": [],
                          "ocr_seconds": []})
    else:
        if fp is None:
            fp = stickers_fingerprint(stickers, root_path)
        key, meta = ocr_cache_key(cache, fp, config)
        out = cache.compute(key, ids, fn, chunk_size=config.batch * config.workers,
                            progress=f"OCR ({config.engine})" if progress else None,
                            rate_unit="img", meta=meta)
    out["ocr_text"] = out["ocr_text"].fillna("").astype(str)
    out["ocr_missing"] = out["ocr_missing"].fillna("").astype(str)
    if "ocr_seconds" not in out:  # parts cached before the timing column existed
        out["ocr_seconds"] = np.float32(np.nan)
    missing = count_reasons(out["ocr_missing"])
    if missing:
        log.warning("OCR: %d of %d stickers have no readable image (%s); their ocr_text is empty",
                    sum(missing.values()), len(out),
                    ", ".join(f"{k}={v}" for k, v in missing.items()))
    out.attrs.update(missing=missing, computed=computed, seconds=time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------ accuracy
def ocr_accuracy(dataset: Any, config: OcrConfig | None = None, cache: Any = None, *,
                 truth_column: str = "gt_caption", ocr: pd.DataFrame | None = None,
                 language: str | None = None) -> dict[str, Any]:
    """CER of OCR against a ground-truth caption column (synthetic datasets).

    Over stickers with a non-empty caption (``language`` "zh": captions with a CJK character,
    "en": the others, None: all): ``cer_mean`` (per sticker), ``cer_micro`` (all edits / all
    truth characters), ``cer_median``, ``exact`` (fraction read exactly), ``n``, ``missing``,
    ``seconds_per_image`` (mean of the rows' ``ocr_seconds``; NaN if unknown). ``ocr``: an
    already computed :func:`ocr_stickers` frame (else it is computed).
    """
    stickers = dataset.stickers
    if truth_column not in stickers.columns:
        raise ValueError(f"dataset {getattr(dataset, 'name', '')!r} has no {truth_column!r} column "
                         "(OCR accuracy needs ground-truth captions, e.g. a synthetic dataset)")
    if ocr is None:
        ocr = ocr_stickers(dataset, config, cache, progress=False)
    ids = ocr["sticker_id"].astype(str)
    text = dict(zip(ids, ocr["ocr_text"]))
    missing = dict(zip(ids, ocr["ocr_missing"] if "ocr_missing" in ocr else [""] * len(ocr)))
    secs = dict(zip(ids, ocr["ocr_seconds"] if "ocr_seconds" in ocr else [np.nan] * len(ocr)))
    cers, edits, chars, exact, n_missing, seconds = [], 0, 0, 0, 0, []
    for sid, truth in zip(stickers["sticker_id"].astype(str), stickers[truth_column]):
        t = normalise_text(truth if isinstance(truth, str) else "")
        if not t or (language is not None and caption_language(t) != language):
            continue
        d = levenshtein(normalise_text(text.get(sid, "")), t)
        cers.append(d / len(t))
        edits += d
        chars += len(t)
        exact += int(d == 0)
        n_missing += int(sid not in text or bool(missing.get(sid)))
        if pd.notna(secs.get(sid, np.nan)):
            seconds.append(float(secs[sid]))
    spi = float(np.mean(seconds)) if seconds else float("nan")
    if not cers:
        return {"n": 0, "cer_mean": float("nan"), "cer_micro": float("nan"),
                "cer_median": float("nan"), "exact": float("nan"), "missing": n_missing,
                "seconds_per_image": spi}
    return {"n": len(cers), "cer_mean": float(np.mean(cers)), "cer_micro": edits / chars,
            "cer_median": float(np.median(cers)), "exact": exact / len(cers),
            "missing": n_missing, "seconds_per_image": spi}


def caption_language(text: str) -> str:
    """"zh" if the text has a CJK character, else "en"."""
    return "zh" if any(is_cjk(c) for c in text) else "en"


def ocr_report_lines(dataset: Any, config: OcrConfig, ocr: pd.DataFrame,
                     truth_column: str = "gt_caption") -> list[str]:
    """One line per caption language present, e.g.
    ``OCR (paddle): CER 0.004, 98% exact, 0.048 s/image (200 stickers)``; with English and
    Chinese captions, ``OCR (paddle), English: ...`` and ``OCR (paddle), Chinese: ...``."""
    captions = [normalise_text(c) for c in dataset.stickers[truth_column] if isinstance(c, str)]
    present = [lang for lang in ("en", "zh")
               if any(c and caption_language(c) == lang for c in captions)]
    names = {"en": "English", "zh": "Chinese"}
    lines = []
    for lang in present:
        acc = ocr_accuracy(dataset, truth_column=truth_column, ocr=ocr, language=lang)
        label = f"OCR ({config.engine})" + (f", {names[lang]}" if len(present) > 1 else "")
        spi = acc["seconds_per_image"]
        speed = f"{spi:.3f} s/image" if np.isfinite(spi) else "s/image unknown (cached earlier)"
        lines.append(f"{label}: CER {acc['cer_mean']:.3f}, {acc['exact']:.0%} exact, {speed} "
                     f"({acc['n']} stickers)")
    return lines
