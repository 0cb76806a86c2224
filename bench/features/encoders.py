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

:func:`embed_stickers` runs an encoder over a stickers frame through the feature cache (only
stickers no cached part holds are encoded), images loaded in ``workers`` threads; stickers whose
image cannot be loaded get a zero vector and are counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
from PIL import Image

from bench.errors import BenchError, ConfigError
from bench.features.images import count_reasons, load_image_checked, load_rgba_checked

log = logging.getLogger(__name__)

EMBED_EXTRACTOR = "embeddings"


class EncoderUnavailable(BenchError):
    """An encoder's model or weights could not be loaded."""


@runtime_checkable
class ImageEncoder(Protocol):
    """Images in, L2-normalised float32 vectors out."""

    name: str

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def encode(self, images: list[Image.Image]) -> np.ndarray: ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _file_signature(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_tensor(out: Any):
    """Model outputs of transformers 4 (a tensor) and 5 (an output with ``pooler_output``)."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


# -------------------------------------------------------------------------------------- open_clip

class OpenClipEncoder:
    """open_clip image (and text) encoder.

    ``model``: a config name from ``open_clip.list_models()`` — or an already-built model (then
    ``preprocess`` is required, ``tokenizer`` optional and ``model_id`` recommended).
    ``pretrained``: a tag (``open_clip.list_pretrained_tags_by_model``), a local checkpoint path, or
    None for random weights (seeded with ``seed``; no network). Loads lazily on first use.
    """

    name = "open-clip"

    def __init__(self, model: Any = "ViT-B-32", pretrained: str | None = None,
                 device: str | None = None, batch_size: int = 64, *, preprocess: Any = None,
                 tokenizer: Any = None, seed: int = 0, cache_dir: str | None = None,
                 model_id: str | None = None):
        if not isinstance(model, str) and preprocess is None:
            raise ConfigError("open-clip: a model object needs its preprocess transform "
                              "(preprocess=...)")
        self.model_name = model if isinstance(model, str) else type(model).__name__
        self.pretrained, self.device, self.batch_size = pretrained, device, int(batch_size)
        self.seed, self.cache_dir = seed, cache_dir
        self._from_name, self._ready = isinstance(model, str), False
        self._model = None if isinstance(model, str) else model
        self._preprocess, self._tokenizer, self._model_id = preprocess, tokenizer, model_id

    def _load(self):
        if self._ready:
            return self._model
        if self._model is not None:  # a model object: use it where it is, or move it to device
            if self.device is None:
                self.device = str(next(self._model.parameters()).device)
            else:
                self._model.to(self.device)
            self._model.eval()
            self._ready = True
            return self._model
        import open_clip
        import torch
        self.device = _resolve_device(self.device)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained, device=self.device,
                    cache_dir=self.cache_dir)
        except Exception as exc:
            raise EncoderUnavailable(
                f"open-clip: could not create {self.model_name!r} with pretrained="
                f"{self.pretrained!r} ({type(exc).__name__}: {exc}). Offline, pass a local "
                "checkpoint file as pretrained=..., or pretrained=None for random weights; "
                "model names: open_clip.list_models()") from None
        model.eval()
        self._model, self._preprocess, self._ready = model, preprocess, True
        return model

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            if self._from_name:
                p = self.pretrained
                if p is None:
                    what = f"random-seed{self.seed}"
                elif os.path.exists(str(p)):
                    what = _file_signature(p)
                else:
                    what = str(p)
                self._model_id = f"open-clip:{self.model_name}:{what}"
            else:  # a model object without a model_id: fingerprint its weights
                h = hashlib.sha256()
                for k, v in sorted(self._load().state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().float().cpu().numpy().tobytes())
                self._model_id = f"open-clip:{self.model_name}:sha256-{h.hexdigest()[:16]}"
        return self._model_id

    @property
    def dim(self) -> int:
        model = self._load()
        out = getattr(getattr(model, "visual", None), "output_dim", None)
        if out is None:
            out = int(self.encode([Image.new("RGB", (32, 32))]).shape[1])
        return int(out)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        import torch
        model = self._load()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = torch.stack([self._preprocess(im.convert("RGB"))
                                     for im in images[i:i + self.batch_size]]).to(self.device)
                outs.append(model.encode_image(batch).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))

    def _get_tokenizer(self):
        if self._tokenizer is None:
            import open_clip
            ctx = getattr(self._load(), "context_length", 77)
            if self._from_name and self.model_name in open_clip.list_models():
                self._tokenizer = open_clip.get_tokenizer(self.model_name)
            else:
                self._tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        return self._tokenizer

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text vectors in the image space (for dense text-to-image retrieval), L2-normalised."""
        import torch
        model = self._load()
        tok = self._get_tokenizer()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                ids = tok(list(texts[i:i + self.batch_size])).to(self.device)
                outs.append(model.encode_text(ids).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))


# ----------------------------------------------------------------------------------- Chinese-CLIP

class ChineseClipEncoder:
    """Chinese-CLIP (transformers ``ChineseCLIPModel`` + ``ChineseCLIPProcessor``).

    ``model``: a hub id (default ``OFA-Sys/chinese-clip-vit-base-patch16``) or a local directory
    written by ``save_pretrained``. Loads lazily.
    """

    name = "chinese-clip"
    DEFAULT = "OFA-Sys/chinese-clip-vit-base-patch16"

    def __init__(self, model: str = DEFAULT, revision: str | None = None, device: str | None = None,
                 batch_size: int = 64, local_files_only: bool = False):
        self.model_name, self.revision = str(model), revision
        self.device, self.batch_size = device, int(batch_size)
        self.local_files_only = local_files_only
        self._model = self._processor = None
        self._model_id: str | None = None

    def _load(self):
        if self._model is None:
            from transformers import ChineseCLIPModel, ChineseCLIPProcessor
            self.device = _resolve_device(self.device)
            kw = dict(revision=self.revision, local_files_only=self.local_files_only)
            try:
                model = ChineseCLIPModel.from_pretrained(self.model_name, **kw)
                processor = ChineseCLIPProcessor.from_pretrained(self.model_name, **kw)
            except Exception as exc:
                raise EncoderUnavailable(
                    f"chinese-clip: could not load {self.model_name!r} ({type(exc).__name__}: "
                    f"{exc}). Download it once (huggingface-cli download {self.DEFAULT}) or pass "
                    "a local directory as model=...") from None
            self._model, self._processor = model.to(self.device).eval(), processor
        return self._model

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            p = Path(self.model_name)
            if p.is_dir():
                h = hashlib.sha256()
                for f in sorted(p.iterdir()):
                    if f.is_file():
                        h.update(_file_signature(f).encode())
                self._model_id = f"chinese-clip:{p.resolve()}:{h.hexdigest()[:16]}"
            else:
                commit = getattr(self._config(), "_commit_hash", None)
                rev = commit or self.revision or "main"
                self._model_id = f"chinese-clip:{self.model_name}@{rev}"
        return self._model_id

    def _config(self):
        if self._model is not None:
            return self._model.config
        from transformers import ChineseCLIPConfig
        try:
            return ChineseCLIPConfig.from_pretrained(self.model_name, revision=self.revision,
                                                     local_files_only=self.local_files_only)
        except Exception:
            return self._load().config  # raises EncoderUnavailable with the full explanation

    @property
    def dim(self) -> int:
        return int(self._config().projection_dim)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        import torch
        model = self._load()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = [im.convert("RGB") for im in images[i:i + self.batch_size]]
                px = self._processor(images=batch, return_tensors="pt")["pixel_values"]
                feats = _as_tensor(model.get_image_features(pixel_values=px.to(self.device)))
                outs.append(feats.float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        model = self._load()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._processor(text=list(texts[i:i + self.batch_size]), padding=True,
                                      truncation=True, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()
                       if k in ("input_ids", "attention_mask", "token_type_ids")}
                outs.append(_as_tensor(model.get_text_features(**enc)).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))


# ------------------------------------------------------------------------------------ style-stats

class StyleStatsEncoder:
    """Art-style statistics of an RGBA image; no weights, no network.

    Blocks (each a small vector of non-negative statistics, computed on the image padded to a
    square and resized to ``size`` px, alpha kept):

    - ``alpha``: coverage, solid and semi-transparent fractions, content box size/fill, margin;
    - ``border``: how much of the canvas edge the drawing touches (pack padding conventions);
    - ``soft``: anti-aliasing/soft-edge width of the silhouette;
    - ``gradient``: histogram of colour-gradient magnitudes inside the silhouette (flat fills vs
      shading — 0 for flat vector art, small and non-zero for 3D renders);
    - ``texture``: Laplacian energy, edge density, outline darkness (dark pixels on strong edges),
      dark fraction, darkness of the silhouette rim;
    - ``saturation``, ``value``: histograms; ``hue``: 24-bin hue histogram weighted by saturation;
    - ``lbp``: uniform local-binary-pattern histograms (threshold 4/255 and 16/255);
    - ``palette``: how few colours cover the drawing (flat styles use few).

    Raw statistics (``raw_features``) are ``log(x + eps)``; :meth:`finalize` z-scores them (over
    the set being embedded, or statistics frozen by :meth:`fit`), weights each block by
    1/sqrt(its size) so every block counts the same, and L2-normalises.
    :func:`embed_stickers` caches the raw statistics and standardises over the whole dataset,
    so vectors of one dataset share one space; ``encode(images)`` standardises over ``images``.
    """

    name = "style-stats"
    needs_alpha = True
    VERSION = 1
    BLOCK_DIMS = {"alpha": 8, "border": 3, "soft": 1, "gradient": 8, "texture": 6,
                  "saturation": 8, "value": 8, "hue": 24, "lbp": 40, "palette": 5}
    DEFAULT_BLOCKS = ("alpha", "border", "soft", "gradient", "texture", "saturation", "hue", "lbp")

    def __init__(self, size: int = 64, blocks: Sequence[str] | None = None,
                 weights: dict[str, float] | None = None, eps: float = 1e-3):
        blocks = tuple(blocks or self.DEFAULT_BLOCKS)
        bad = [b for b in blocks if b not in self.BLOCK_DIMS]
        if bad:
            raise ConfigError(f"style-stats: unknown block(s) {bad}; known: "
                              f"{', '.join(self.BLOCK_DIMS)}")
        self.size, self.blocks, self.eps = int(size), blocks, float(eps)
        self.weights = {b: float((weights or {}).get(b, 1.0)) for b in blocks}
        self._stats: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def raw_dim(self) -> int:
        return sum(self.BLOCK_DIMS[b] for b in self.blocks)

    @property
    def dim(self) -> int:
        return self.raw_dim

    @property
    def model_id(self) -> str:
        # weights apply in finalize (not cached): they are not part of the raw features' id
        return (f"style-stats-v{self.VERSION}:size{self.size}:eps{self.eps:g}:"
                f"{'+'.join(self.blocks)}")

    def to_array(self, image: Image.Image) -> np.ndarray:
        """RGBA float32 (size, size, 4) in [0, 1]: padded to a square (transparent), resized."""
        img = image if image.mode == "RGBA" else image.convert("RGBA")
        w, h = img.size
        if w != h:
            side = max(w, h)
            canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            canvas.paste(img, ((side - w) // 2, (side - h) // 2))
            img = canvas
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.Resampling.BOX
                             if img.width > self.size else Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0

    def raw_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``log(stat + eps)`` of every block, float32 (n, raw_dim); cached by embed_stickers."""
        if not len(images):
            return np.zeros((0, self.raw_dim), np.float32)
        blocks = _style_blocks(np.stack([self.to_array(im) for im in images]), self.blocks)
        raw = np.concatenate([blocks[b] for b in self.blocks], axis=1)
        return np.log(np.maximum(raw, 0.0) + self.eps).astype(np.float32)

    def fit(self, raw_or_images: Any) -> "StyleStatsEncoder":
        """Freeze standardisation statistics (from raw features or from images)."""
        raw = np.asarray(raw_or_images) if isinstance(raw_or_images, np.ndarray) \
            else self.raw_features(raw_or_images)
        self._stats = (raw.mean(0), raw.std(0))
        return self

    def finalize(self, raw: np.ndarray) -> np.ndarray:
        """Standardise raw features, weight blocks, L2-normalise -> (n, dim) float32."""
        raw = np.asarray(raw, dtype=np.float64)
        mean, std = self._stats if self._stats is not None else (raw.mean(0), raw.std(0))
        z = (raw - mean) / np.where(std > 1e-6, std, np.inf)
        start = 0
        for b in self.blocks:
            d = self.BLOCK_DIMS[b]
            z[:, start:start + d] *= self.weights[b] / np.sqrt(d)
            start += d
        return l2_normalise(z)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self.finalize(self.raw_features(images))


def _rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0.0)
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4))
    return np.where(d > 0, h / 6.0, 0.0), s, mx


def _lbp_lut() -> np.ndarray:
    """8-neighbour codes -> uniform LBP class: number of set bits if <= 2 transitions, else 9."""
    lut = np.zeros(256, np.int64)
    for code in range(256):
        bits = [(code >> k) & 1 for k in range(8)]
        transitions = sum(bits[k] != bits[k - 1] for k in range(8))
        lut[code] = sum(bits) if transitions <= 2 else 9
    return lut


_LBP_LUT = _lbp_lut()
#: gradient magnitude in half-steps of 1/255 (0..255) -> one of 8 bins
_GRAD_LUT = np.searchsorted(np.array([1, 4, 12, 32, 80, 102, 255]), np.arange(256),
                            side="right").astype(np.int64)


def _row_hist(idx: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """Row-wise weighted counts of integer bins (n, P) -> (n, bins), rows summing to 1 (or 0)."""
    n = idx.shape[0]
    flat = np.clip(idx, 0, bins - 1) + np.arange(n, dtype=np.int64)[:, None] * bins
    out = np.bincount(flat.ravel(), weights=weights.ravel(), minlength=n * bins).reshape(n, bins)
    return out / np.maximum(out.sum(1, keepdims=True), 1e-9)


def _whist(values: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """Row-wise weighted histograms of values in [0, 1] with equal-width bins."""
    return _row_hist((values * bins).astype(np.int64), weights, bins)


def _erode(mask: np.ndarray, k: int = 1) -> np.ndarray:
    m = mask
    for _ in range(k):
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=False)
        m = m & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return m


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, values.ndim))
    return (values * mask).sum(axes) / np.maximum(mask.sum(axes), 1)


def _style_blocks(x: np.ndarray, blocks: Sequence[str]) -> dict[str, np.ndarray]:
    """Raw non-negative statistics per block for a batch of RGBA arrays (n, S, S, 4) in [0, 1]."""
    n, S = x.shape[0], x.shape[1]
    P = S * S
    a, rgb = x[..., 3], x[..., :3]
    covered, opaque, solid = a > 0.02, a > 0.5, a > 0.98
    inner = _erode(opaque, 1)
    h, s, v = _rgb_to_hsv(rgb)
    w = (a * opaque).reshape(n, P)  # colour weight: opaque pixels by alpha
    out: dict[str, np.ndarray] = {}
    if "alpha" in blocks:
        def extent(any_: np.ndarray):
            has = any_.any(1)
            first = np.where(has, np.argmax(any_, 1), S // 2)
            last = np.where(has, S - 1 - np.argmax(any_[:, ::-1], 1), S // 2)
            return first / S, (S - 1 - last) / S, (last - first + 1) / S
        top, bottom, height = extent(opaque.any(2))
        left, right, width = extent(opaque.any(1))
        fill = opaque.sum((1, 2)) / np.maximum(height * width * P, 1)
        margin = np.minimum(np.minimum(top, bottom), np.minimum(left, right))
        semi = (covered & ~solid).sum((1, 2)) / np.maximum(covered.sum((1, 2)), 1)
        out["alpha"] = np.stack([covered.mean((1, 2)), solid.mean((1, 2)), semi, height, width,
                                 fill, margin, np.maximum(height, width)], 1)
    if "border" in blocks:
        ring1 = np.zeros((S, S), bool)
        ring1[0, :] = ring1[-1, :] = ring1[:, 0] = ring1[:, -1] = True
        ring2 = ~np.pad(np.ones((S - 4, S - 4), bool), 2, constant_values=False)
        out["border"] = np.stack([(a[:, ring1] > 0.02).mean(1), (a[:, ring2] > 0.02).mean(1),
                                  (a[:, ring1] > 0.5).mean(1)], 1)
    if "soft" in blocks:
        gy, gx = np.gradient(a, axis=(1, 2))
        hard = (np.sqrt(gx ** 2 + gy ** 2) > 0.3).sum((1, 2))
        out["soft"] = ((covered & ~solid).sum((1, 2)) / np.maximum(hard, 1))[:, None]
    need_grad = {"gradient", "texture"} & set(blocks)
    if need_grad:
        gy, gx = np.gradient(rgb, axis=(1, 2))
        mag = np.sqrt(gx ** 2 + gy ** 2).max(-1)
    if "gradient" in blocks:  # bins (x/255): 0-0.5, 0.5-2, 2-6, 6-16, 16-40, 40-51, 51-128, 128+
        q = np.minimum(mag * 510, 255).astype(np.uint8)  # half-steps of 1/255
        out["gradient"] = _row_hist(_GRAD_LUT[q].reshape(n, P),
                                    inner.reshape(n, P).astype(np.float64), 8)
    if "texture" in blocks:
        lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        lap = np.abs(4 * lum - np.roll(lum, 1, 1) - np.roll(lum, -1, 1)
                     - np.roll(lum, 1, 2) - np.roll(lum, -1, 2))
        strong, dark = (mag > 0.2) & inner, v < 0.25
        rim = opaque & ~_erode(opaque, 2)
        out["texture"] = np.stack([
            _masked_mean(lap, inner), _masked_mean(strong, inner),
            _masked_mean(dark, strong),
            (dark.reshape(n, P) * w).sum(1) / np.maximum(w.sum(1), 1e-9),
            _masked_mean(dark, rim), _masked_mean(v, rim)], 1)
    if "saturation" in blocks:
        out["saturation"] = _whist(s.reshape(n, P), w, 8)
    if "value" in blocks:
        out["value"] = _whist(v.reshape(n, P), w, 8)
    if "hue" in blocks:
        out["hue"] = _whist(h.reshape(n, P), w * s.reshape(n, P), 24)
    if "lbp" in blocks:
        lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        c = lum[:, 1:-1, 1:-1]
        core = inner[:, 1:-1, 1:-1]
        offs = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
        diffs = [lum[:, 1 + dy:S - 1 + dy, 1 + dx:S - 1 + dx] - c for dy, dx in offs]
        weights = core.reshape(n, -1).astype(np.float64)
        hists = []
        for th in (4 / 255, 16 / 255):
            for sign in (1, -1):
                code = np.zeros(c.shape, np.uint8)
                for k, d in enumerate(diffs):
                    code |= ((sign * d) > th).astype(np.uint8) << k
                hists.append(_row_hist(_LBP_LUT[code].reshape(n, -1), weights, 10))
        out["lbp"] = np.concatenate(hists, 1)
    if "palette" in blocks:
        q = (np.clip(rgb * 16, 0, 15.999).astype(np.int64) * np.array([256, 16, 1])).sum(-1)
        q, om = q.reshape(n, P), opaque.reshape(n, P)
        pal = np.zeros((n, 5))
        for i in range(n):
            vals = q[i][om[i]]
            if len(vals):
                cs = np.cumsum(np.sort(np.bincount(vals, minlength=4096))[::-1]) / len(vals)
                k50, k80, k95 = (np.searchsorted(cs, t) + 1 for t in (0.5, 0.8, 0.95))
                pal[i] = [np.log(k50) / np.log(P), np.log(k80) / np.log(P),
                          np.log(k95) / np.log(P), cs[0], cs[min(3, len(cs) - 1)]]
        out["palette"] = pal
    return {k: np.asarray(val, dtype=np.float64) for k, val in out.items()}


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
}


def make_encoder(name: str, **params: Any):
    """Build the encoder registered as ``name`` (see :data:`ENCODERS`) with its parameters."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    try:
        return ENCODERS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: bad parameters {params} ({exc})") from None


# ----------------------------------------------------------------------------------- embedding

def _image_paths(stickers: pd.DataFrame, root: str | os.PathLike | None) -> list[str | None]:
    from bench.features.ocr import image_paths
    return image_paths(stickers, Path(root) if root is not None else None)


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
            return pd.DataFrame({"sticker_id": chunk, "vector": list(v.astype(np.float32)),
                                 "missing": r})

        if cache is None:
            step = chunk_size or 512
            parts = [fn(ids[i:i + step]) for i in range(0, len(ids), step)]
            frame = pd.concat(parts, ignore_index=True) if parts else None
        else:
            if dataset_fingerprint is None:
                from bench.features.ocr import stickers_fingerprint
                dataset_fingerprint = stickers_fingerprint(
                    stickers, Path(root) if root is not None else None)
            params = {"encoder": encoder.name, "raw": hasattr(encoder, "raw_features")}
            key = cache.key(dataset_fingerprint=dataset_fingerprint, extractor=EMBED_EXTRACTOR,
                            params=params, model=encoder.model_id)
            frame = cache.compute(
                key, ids, fn, chunk_size=chunk_size or (1024 if params["raw"] else 256),
                progress=f"embed ({encoder.name})" if progress else None,
                meta={"dataset_fingerprint": dataset_fingerprint, "extractor": EMBED_EXTRACTOR,
                      "params": params, "model": encoder.model_id})
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
