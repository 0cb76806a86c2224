"""Attach offline features to a dataset: OCR, VLM descriptions, image embeddings (DESIGN §7, §9).

:func:`attach_features` is what the runner calls before ``fit``: it returns the stickers frame with
``ocr_text`` (and, when the VLM helper has cached them, ``description``/``keywords``), the image
embeddings aligned with the stickers rows (the ``TrainView.embeddings``), and a report of what was
missing, computed and how long it took. Everything goes through the :class:`FeatureCache`, so a
second call with the same dataset and config does no work, and an interrupted one resumes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.features.cache import FeatureCache
from bench.features.config import FeaturesConfig, OcrConfig  # noqa: F401 (re-exported)
from bench.features.encoders import embed_stickers, make_encoder
from bench.features.image_pipeline import fill_image_features, shard_ids
from bench.features.ocr import ocr_stickers, stickers_fingerprint

log = logging.getLogger(__name__)

DESCRIPTIONS_EXTRACTOR = "vlm-descriptions"
#: Columns of a descriptions entry that are bookkeeping, not text to merge.
_NOT_TEXT = {"sticker_id", "missing", "status", "error", "seconds"}


# --------------------------------------------------------------------------- VLM descriptions

def descriptions_key(cache: FeatureCache, dataset_fingerprint: str, source: str = "base") -> str:
    """The cache key the VLM helper writes descriptions under: extractor ``vlm-descriptions``,
    params ``{"source": <"base" or adapter id>}``, no model (the adapter id names it)."""
    return cache.key(dataset_fingerprint=dataset_fingerprint, extractor=DESCRIPTIONS_EXTRACTOR,
                     params={"source": source})


def find_descriptions(cache: FeatureCache, dataset_fingerprint: str, source: str = "base"
                      ) -> str | None:
    """Key of the cached descriptions entry for (dataset, source), or None.

    First :func:`descriptions_key`; else the newest ``vlm-descriptions-*`` entry whose
    ``meta.json`` names this dataset fingerprint and has ``source`` as its ``adapter`` (content
    hash), ``adapter_source`` (the path or MLflow run id given to ``describe``) or ``source`` (top level, as ``bench.vlm.describe`` writes it, or under ``params``), or as its
    ``model``.
    """
    key = descriptions_key(cache, dataset_fingerprint, source)
    if cache.load(key) is not None:
        return key
    wanted = {source}
    if Path(source).expanduser().exists():  # an adapter folder given by a relative path
        wanted.add(str(Path(source).expanduser().resolve()))
    root = Path(cache.root)
    if not root.is_dir():
        return None
    found: list[tuple[float, str]] = []
    for meta_path in root.glob(f"{DESCRIPTIONS_EXTRACTOR}-*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
        names = (meta.get("adapter"), meta.get("source"), meta.get("adapter_source"),
                 params.get("adapter"), params.get("source"), meta.get("model"))
        if meta.get("dataset_fingerprint") == dataset_fingerprint and wanted & set(names):
            found.append((meta_path.stat().st_mtime, meta_path.parent.name))
    return max(found)[1] if found else None


def _as_text(value: Any) -> Any:
    """Strings as they are, lists joined with ", ", missing as None; anything else unchanged
    (a column holding numbers is not text and is not merged)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value if v is not None and str(v).strip())
    return value


def merge_descriptions(stickers: pd.DataFrame, cache: FeatureCache, dataset_fingerprint: str,
                       source: str = "base") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Merge cached VLM descriptions (``description``, ``keywords``, ... text columns) into
    ``stickers``; returns ``(stickers, info)`` with info ``{key, merged: n rows, columns}``.

    Non-empty values in the cache replace the stickers' own; stickers the entry lacks (generation
    interrupted) or has empty (no image) keep theirs. No entry: stickers unchanged, ``key`` None.
    """
    key = find_descriptions(cache, dataset_fingerprint, source)
    info: dict[str, Any] = {"key": key, "source": source, "merged": 0, "columns": []}
    if key is None:
        return stickers, info
    entry = cache.load(key)
    if entry is None or not len(entry):
        return stickers, info
    entry = entry.set_index(entry["sticker_id"].astype(str))
    out = stickers.copy()
    sids = out["sticker_id"].astype(str)
    merged = np.zeros(len(out), dtype=bool)
    for col in entry.columns:
        if col in _NOT_TEXT or col.startswith("_"):
            continue
        texts = pd.Series([_as_text(v) for v in entry[col]], index=entry.index, dtype=object)
        if not all(t is None or isinstance(t, str) for t in texts):
            continue
        new = sids.map(texts)
        has = (new.notna() & new.astype(str).str.strip().ne("")).to_numpy()
        if not has.any():
            continue
        old = out[col] if col in out.columns else pd.Series([None] * len(out), index=out.index)
        out[col] = np.where(has, new.to_numpy(dtype=object), old.to_numpy(dtype=object))
        out[col] = out[col].astype(object).where(out[col].notna(), None)
        merged |= has
        info["columns"].append(col)
    info["merged"] = int(merged.sum())
    return out, info


# -------------------------------------------------------------------------------------- attach

def _resolve_encoder(cfg: FeaturesConfig, stickers: pd.DataFrame, has_images: bool,
                     notes: list[str]) -> str | None:
    has_embedding = "embedding" in stickers.columns and stickers["embedding"].notna().any()
    name = cfg.encoder
    if name == "auto":
        return "precomputed" if has_embedding else ("style-stats" if has_images else None)
    if name is not None and name != "precomputed" and not has_images:
        if has_embedding:
            notes.append(f"no images: encoder {name!r} replaced by 'precomputed' "
                         "(the dataset's embedding column)")
            return "precomputed"
        notes.append(f"no images and no embedding column: encoder {name!r} skipped")
        return None
    return name


def _config_and_cache(cfg: FeaturesConfig | dict | None, cache: FeatureCache | None
                      ) -> tuple[FeaturesConfig, FeatureCache]:
    """The validated features config (default when None) and its cache (from ``cache_dir``)."""
    if cfg is None:
        cfg = FeaturesConfig()
    elif isinstance(cfg, dict):
        cfg = FeaturesConfig.model_validate(cfg)
    return cfg, cache if cache is not None else FeatureCache(cfg.cache_dir)


def attach_features(dataset: Any, cfg: FeaturesConfig | dict | None = None,
                    cache: FeatureCache | None = None, *, progress: bool = True
                    ) -> tuple[pd.DataFrame, np.ndarray | None, dict[str, Any]]:
    """Compute (or load from the cache) the offline features of a dataset.

    ``dataset``: a :class:`bench.data.format.Dataset`. Returns ``(stickers, embeddings, report)``:
    the stickers frame with ``ocr_text`` added or overwritten (empty for unreadable images) and
    cached VLM descriptions merged; embeddings float32 ``(n_stickers, dim)`` in stickers order, or
    None when no encoder ran; report keys ``ocr_missing``, ``ocr_missing_by_reason``,
    ``ocr_computed``, ``ocr_seconds``, ``encoder``, ``encoder_model_id``, ``embed_dim``,
    ``embed_missing``, ``embed_missing_by_reason``, ``embed_computed``, ``embed_seconds``,
    ``descriptions``, ``notes``. A text-only dataset (no images) skips OCR with a note.
    """
    cfg, cache = _config_and_cache(cfg, cache)
    stickers = dataset.stickers.copy()
    fp = dataset.fingerprint or None
    has_images = bool("image" in stickers.columns and stickers["image"].notna().any())
    notes: list[str] = []
    report: dict[str, Any] = {"dataset": dataset.name, "fingerprint": fp,
                              "stickers": int(len(stickers)), "has_images": has_images,
                              "cache_dir": str(cache.root), "notes": notes}

    languages = dataset.meta.get("languages") if isinstance(dataset.meta, dict) else None
    ocr_cfg = cfg.ocr_config(languages if isinstance(languages, list) else None)
    name = _resolve_encoder(cfg, stickers, has_images, notes)
    encoder = make_encoder(name, **cfg.encoder_params) if name is not None else None
    if has_images:  # image features are keyed by sticker ids + image bytes, not by the
        # dataset fingerprint: clicks do not change what an image shows (beds rebuilt with other
        # simulated users, shards and runs all share them)
        fp = stickers_fingerprint(stickers, dataset.root)
    if has_images and (ocr_cfg is not None or encoder is not None):
        # decode each image once for OCR and the encoder; the readers below find it cached
        pipe = fill_image_features(stickers, dataset.root, fp, cache, ocr=ocr_cfg,
                                   encoder=encoder, workers=_workers(cfg, ocr_cfg),
                                   parallel=cfg.parallel, progress=progress)
        report.update({k: pipe.get(k) for k in ("parallel", "image_stages", "image_stages_cpu",
                                                "worker_peak_rss", "first_task_s",
                                                "steady_images_per_s")},
                      images_seconds=pipe["seconds"])
    else:
        pipe = {}
    if ocr_cfg is None:
        report["ocr"] = "off"
    elif not has_images:
        report["ocr"] = "skipped"
        notes.append("no images (text-only dataset): OCR skipped")
    else:
        if "ocr_text" in stickers.columns:
            notes.append(f"the dataset's own ocr_text column was replaced by {ocr_cfg.engine} OCR")
        t0 = time.perf_counter()
        res = ocr_stickers(dataset, ocr_cfg, cache, dataset_fingerprint=fp, progress=progress)
        stickers["ocr_text"] = res["ocr_text"].to_numpy(dtype=object)
        missing = res.attrs.get("missing", {})
        report.update(ocr=ocr_cfg.engine, ocr_config=ocr_cfg.cache_params(),
                      ocr_missing=int(sum(missing.values())), ocr_missing_by_reason=missing,
                      ocr_computed=int(res.attrs.get("computed", 0)) + pipe.get("ocr_computed", 0),
                      ocr_seconds=round(time.perf_counter() - t0, 3))

    if cfg.descriptions is not None and dataset.fingerprint:
        stickers, info = merge_descriptions(stickers, cache, dataset.fingerprint,
                                            cfg.descriptions)
        report["descriptions"] = info
        if info["key"] is None:
            notes.append(f"no cached VLM descriptions (source {cfg.descriptions!r}) for this "
                         "dataset")

    embeddings = None
    report["encoder"] = name
    if encoder is not None:
        t0 = time.perf_counter()
        details: dict[str, Any] = {}
        embeddings, n_missing = embed_stickers(stickers, dataset.root, encoder, cache, fp,
                                               cfg.workers, progress=progress, details=details)
        report.update(encoder_model_id=encoder.model_id, embed_dim=int(embeddings.shape[1]),
                      embed_missing=int(n_missing),
                      embed_missing_by_reason=details.get("missing_by_reason", {}),
                      embed_computed=int(details.get("computed", 0))
                      + pipe.get("embed_computed", 0),
                      embed_seconds=round(time.perf_counter() - t0, 3))
    for note in notes:
        log.info("features: %s", note)
    return stickers, embeddings, report


def _workers(cfg: FeaturesConfig, ocr_cfg: OcrConfig | None) -> int:
    return ocr_cfg.workers if ocr_cfg is not None else cfg.workers


def fill_features(dataset: Any, cfg: FeaturesConfig | dict | None = None,
                  cache: FeatureCache | None = None, *, shard: tuple[int, int] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Compute into the cache (and return nothing but a report) the OCR and image embeddings
    of a dataset's stickers, or of shard ``(I, N)`` of them (:func:`shard_ids`: the I-th of N
    contiguous blocks, 0-based). Shards may run at the same time on machines sharing the
    cache folder; once every shard is done, :func:`attach_features` reads their union and
    computes nothing. Report: ``stickers`` (in this shard), ``shard``, ``ocr_computed``,
    ``embed_computed``, ``image_stages``, ``parallel``, ``seconds``, ``key_*`` (entries)."""
    cfg, cache = _config_and_cache(cfg, cache)
    stickers = dataset.stickers
    ids = stickers["sticker_id"].astype(str).tolist()
    mine = shard_ids(ids, shard) if shard is not None else ids
    has_images = bool("image" in stickers.columns and stickers["image"].notna().any())
    report: dict[str, Any] = {"dataset": dataset.name, "stickers": len(mine),
                              "shard": f"{shard[0]}/{shard[1]}" if shard else None}
    if not has_images:
        report["note"] = "no images (text-only dataset): nothing to compute"
        return report
    languages = dataset.meta.get("languages") if isinstance(dataset.meta, dict) else None
    ocr_cfg = cfg.ocr_config(languages if isinstance(languages, list) else None)
    notes: list[str] = []
    name = _resolve_encoder(cfg, stickers, has_images, notes)
    encoder = make_encoder(name, **cfg.encoder_params) if name is not None else None
    fp = stickers_fingerprint(stickers, dataset.root)  # as attach_features keys image features
    report.update(fill_image_features(stickers, dataset.root, fp, cache, ocr=ocr_cfg,
                                      encoder=encoder, ids=mine,
                                      workers=_workers(cfg, ocr_cfg), parallel=cfg.parallel,
                                      progress=progress))
    report["encoder"] = name
    return report
