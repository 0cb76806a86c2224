"""The ``style-stats`` image encoder (art-style statistics, no weights) and L2 row normalisation."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from bench.errors import ConfigError
from bench.features.images import ImageTooLarge, size_problem


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


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
    #: Longest side padded as is; a longer image is shrunk to it first (a 16384 x 1 strip would
    #: otherwise pad a 16384^2 canvas, 1 GiB).
    PAD_LIMIT = 2048
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
        if size_problem(w, h):
            raise ImageTooLarge(f"style-stats: a {w}x{h} px image is over the size bounds")
        if max(w, h) > self.PAD_LIMIT:  # shrink before padding: the square canvas stays bounded
            ratio = self.PAD_LIMIT / max(w, h)
            w, h = max(1, round(w * ratio)), max(1, round(h * ratio))
            img = img.resize((w, h), Image.Resampling.BOX)
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
