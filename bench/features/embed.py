"""Cached embedding of a stickers frame with any image encoder (DESIGN §7, §9).

:func:`embed_stickers` runs an encoder over a stickers frame through the feature cache (only
stickers no cached part holds are encoded), images loaded in ``workers`` threads; stickers whose
image cannot be loaded get a zero vector and are counted by reason.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.features.images import count_reasons, load_image_checked, load_rgba_checked
from bench.progress import Progress

log = logging.getLogger(__name__)

EMBED_EXTRACTOR = "embeddings"


def _image_paths(stickers: pd.DataFrame, root: str | os.PathLike | None) -> list[str | None]:
    from bench.features.ocr import image_paths
    return image_paths(stickers, Path(root) if root is not None else None)


def embed_cache_key(cache: Any, fingerprint: str, encoder: Any) -> tuple[str, dict[str, Any]]:
    """``(key, meta)`` of the embeddings cache entry of an image encoder on a dataset."""
    params = {"encoder": encoder.name, "raw": hasattr(encoder, "raw_features")}
    key = cache.key(dataset_fingerprint=fingerprint, extractor=EMBED_EXTRACTOR, params=params,
                    model=encoder.model_id)
    return key, {"dataset_fingerprint": fingerprint, "extractor": EMBED_EXTRACTOR,
                 "params": params, "model": encoder.model_id}


def embed_rows(ids: list[str], vecs: np.ndarray, reasons: list[str]) -> pd.DataFrame:
    """The cached embedding columns for ``ids``: ``sticker_id, vector, missing``."""
    return pd.DataFrame({"sticker_id": ids, "vector": list(vecs.astype(np.float32)),
                         "missing": reasons})


def _encode_paths(encoder: Any, paths: Sequence[str | None], workers: int
                  ) -> tuple[np.ndarray, list[str]]:
    """Load and encode images; unloadable ones get zero rows and a reason."""
    raw = hasattr(encoder, "raw_features")
    loader = load_rgba_checked if getattr(encoder, "needs_alpha", False) else load_image_checked

    def work(sub: Sequence[str | None]):
        loaded = [loader(p) for p in sub]
        ok = [i for i, (im, _) in enumerate(loaded) if im is not None]
        reasons = [r or "" for _, r in loaded]
        images = [loaded[i][0] for i in ok]
        if raw and ok:  # numpy on whole arrays releases the GIL: parallel in threads
            return encoder.raw_features(images), reasons, ok, []
        return None, reasons, ok, images

    workers = max(1, int(workers))
    size = max(1, -(-len(paths) // workers))
    subs = [paths[i:i + size] for i in range(0, len(paths), size)]
    if workers == 1 or len(subs) == 1:
        results = [work(s) for s in subs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(work, subs))
    reasons = [r for _, rs, _, _ in results for r in rs]
    if raw:
        vecs = np.zeros((len(paths), encoder.raw_dim), np.float32)
        offset = 0
        for (feats, _, ok, _), sub in zip(results, subs):
            if feats is not None:
                vecs[[offset + i for i in ok]] = feats
            offset += len(sub)
        return vecs, reasons
    # model encoders: images loaded in threads above, encoded here in batches
    images, rows = [], []
    offset = 0
    for (_, _, ok, imgs), sub in zip(results, subs):
        images += imgs
        rows += [offset + i for i in ok]
        offset += len(sub)
    vecs = np.zeros((len(paths), encoder.dim), np.float32)
    if images:
        vecs[rows] = encoder.encode(images)
    return vecs, reasons


def embed_stickers(stickers: pd.DataFrame, root: str | os.PathLike | None, encoder: Any,
                   cache: Any = None, dataset_fingerprint: str | None = None, workers: int = 2,
                   *, progress: bool = True, chunk_size: int | None = None,
                   details: dict[str, Any] | None = None) -> tuple[np.ndarray, int]:
    """Vectors for every sticker row, ``(float32 (n, dim) aligned with stickers, missing count)``.

    Through ``cache`` (a :class:`FeatureCache`; None: no cache) under the key (dataset
    fingerprint, "embeddings", encoder name, encoder ``model_id``); vectors are stored as a
    ``list<float32>`` column, and only stickers no cached part holds are encoded. Encoders with
    ``raw_features``/``finalize`` (style-stats) cache raw statistics and standardise over the
    whole dataset here. Unloadable images: zero vector, counted (by reason in
    ``details["missing_by_reason"]`` when a ``details`` dict is passed; also ``computed`` and
    ``seconds``).
    """
    t0 = time.perf_counter()
    ids = stickers["sticker_id"].astype(str).tolist()
    if not getattr(encoder, "needs_images", True):
        vecs, reasons = encoder.encode_frame(stickers)
        computed = len(ids)
    else:
        paths = dict(zip(ids, _image_paths(stickers, root)))
        computed = 0

        def fn(chunk: list[str]) -> pd.DataFrame:
            nonlocal computed
            v, r = _encode_paths(encoder, [paths[s] for s in chunk], workers)
            computed += len(chunk)
            return embed_rows(chunk, v, r)

        if cache is None:
            step = chunk_size or 512
            parts = []
            with Progress(len(ids), f"embed ({encoder.name})", "stickers", rate_unit="img",
                          enabled=progress) as bar:
                for i in range(0, len(ids), step):
                    parts.append(fn(ids[i:i + step]))
                    bar.update(len(parts[-1]))
            frame = pd.concat(parts, ignore_index=True) if parts else None
        else:
            if dataset_fingerprint is None:
                from bench.features.ocr import stickers_fingerprint
                dataset_fingerprint = stickers_fingerprint(
                    stickers, Path(root) if root is not None else None)
            key, meta = embed_cache_key(cache, dataset_fingerprint, encoder)
            frame = cache.compute(
                key, ids, fn, chunk_size=chunk_size or (1024 if meta["params"]["raw"] else 256),
                progress=f"embed ({encoder.name})" if progress else None, rate_unit="img",
                meta=meta)
        dim = encoder.raw_dim if hasattr(encoder, "raw_features") else encoder.dim
        if frame is None or not len(frame):
            vecs, reasons = np.zeros((0, dim), np.float32), []
        else:
            vecs = np.stack([np.asarray(v, dtype=np.float32) for v in frame["vector"]]) \
                .reshape(len(frame), dim)
            reasons = frame["missing"].fillna("").astype(str).tolist()
        if hasattr(encoder, "finalize"):
            ok = np.array([not r for r in reasons], dtype=bool)
            out = np.zeros((len(vecs), encoder.dim), np.float32)
            if ok.any():
                out[ok] = encoder.finalize(vecs[ok])
            vecs = out
    missing = count_reasons(reasons)
    n_missing = sum(missing.values())
    if n_missing:
        log.warning("embeddings (%s): %d of %d stickers have no usable %s (%s); they get a zero "
                    "vector", encoder.name, n_missing, len(ids),
                    "image" if getattr(encoder, "needs_images", True) else "embedding",
                    ", ".join(f"{k}={v}" for k, v in missing.items()))
    if details is not None:
        details.update(missing_by_reason=missing, computed=computed,
                       seconds=time.perf_counter() - t0)
    return np.ascontiguousarray(vecs, dtype=np.float32), n_missing
