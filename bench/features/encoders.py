"""Image encoders for personalization (DESIGN §7) and dense retrieval, and cached embedding.

One interface, :class:`ImageEncoder`: ``name``, ``dim``, ``model_id`` (goes into the cache key) and
``encode(images) -> float32 (n, dim)``, rows L2-normalised. :func:`make_encoder` builds one by name:

- ``open-clip``: any open_clip model (``pretrained``: a tag, a checkpoint path, or None = random
  init, which works offline); also ``encode_texts`` for the dense-clip retriever.
- ``chinese-clip``: transformers' ChineseCLIPModel from a hub id or a local directory; also
  ``encode_texts``.
- ``style-stats``: no weights — colour, shading, outline, alpha and texture statistics that
  separate art styles (k-means ARI on emoji-styles: see ``benchmarks/style_stats_ari.py``).
- ``precomputed``: the dataset's ``embedding`` column.
- ``clip-checkpoint``: the image tower of a ``persrv-bench train-clip`` checkpoint
  (``checkpoint``: its folder or MLflow run id).

The CLIP encoders live in :mod:`bench.features.clip_encoders`; :func:`embed_stickers` (the
cached embedding loop, :mod:`bench.features.embed`) is re-exported here.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from PIL import Image

from bench.errors import ConfigError
from bench.features.clip_encoders import (ChineseClipEncoder, ClipCheckpointEncoder,
                                          EncoderUnavailable, OpenClipEncoder)
from bench.features.embed import EMBED_EXTRACTOR, embed_stickers
from bench.features.style_stats import StyleStatsEncoder, l2_normalise

log = logging.getLogger(__name__)

__all__ = ["EMBED_EXTRACTOR", "ENCODERS", "ChineseClipEncoder", "EncoderUnavailable",
           "ImageEncoder", "OpenClipEncoder", "PrecomputedEncoder", "StyleStatsEncoder",
           "embed_stickers", "l2_normalise", "make_encoder"]


@runtime_checkable
class ImageEncoder(Protocol):
    """Images in, L2-normalised float32 vectors out."""

    name: str

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def encode(self, images: list[Image.Image]) -> np.ndarray: ...


# ------------------------------------------------------------------------------------ precomputed

class PrecomputedEncoder:
    """Vectors from a stickers column (default ``embedding``: a list of floats per sticker).

    Needs no images (``needs_images = False``); use :meth:`encode_frame`. Rows that are null or
    of another length than the first valid row become zero vectors and are counted as missing.
    """

    name = "precomputed"
    needs_images = False

    def __init__(self, column: str = "embedding", normalize: bool = True):
        self.column, self.normalize = column, normalize
        self._dim: int | None = None

    @property
    def model_id(self) -> str:
        return f"precomputed:{self.column}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError("precomputed encoder: dim is known after encode_frame()")
        return self._dim

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        raise TypeError("the precomputed encoder reads the stickers' embedding column; "
                        "use encode_frame(stickers)")

    def encode_frame(self, stickers: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """``(vectors (n, dim) float32, reasons)``; reasons: "", no_embedding or bad_length."""
        if self.column not in stickers.columns:
            raise ConfigError(f"encoder 'precomputed': the stickers have no {self.column!r} "
                              f"column (columns: {', '.join(map(str, stickers.columns))})")
        values = stickers[self.column].tolist()
        arrs: list[np.ndarray | None] = []
        for v in values:
            if v is None or (isinstance(v, float) and np.isnan(v)):
                arrs.append(None)
            else:
                a = np.asarray(v, dtype=np.float32).ravel()
                arrs.append(a if a.size and np.isfinite(a).all() else None)
        dims = [a.size for a in arrs if a is not None]
        self._dim = int(pd.Series(dims).mode().iloc[0]) if dims else 0
        out = np.zeros((len(values), self._dim), np.float32)
        reasons = []
        for i, a in enumerate(arrs):
            if a is None:
                reasons.append("no_embedding")
            elif a.size != self._dim:
                reasons.append("bad_length")
            else:
                out[i] = a
                reasons.append("")
        return (l2_normalise(out) if self.normalize else out), reasons


# ---------------------------------------------------------------------------------------- factory

ENCODERS: dict[str, Callable[..., Any]] = {
    "open-clip": OpenClipEncoder,
    "chinese-clip": ChineseClipEncoder,
    "style-stats": StyleStatsEncoder,
    "precomputed": PrecomputedEncoder,
    "clip-checkpoint": ClipCheckpointEncoder,
}


def make_encoder(name: str, **params: Any):
    """Build the encoder registered as ``name`` (see :data:`ENCODERS`) with its parameters."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    try:
        return ENCODERS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: bad parameters {params} ({exc})") from None
