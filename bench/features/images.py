"""Robust sticker image loading, shared by OCR, the image encoders and the VLM.

Stickers come as PNG (often RGBA), JPEG, static or animated GIF and WebP, and sometimes as video
(webm/mp4) or broken files. Nothing here raises for a bad file: :func:`load_image_checked` returns
``(None, reason)`` so callers can count failures by reason, and :func:`load_image` just ``None``.

Reasons: ``no_image`` (no path), ``missing`` (no such file), ``empty`` (0 bytes), ``video``
(webm/mp4/... by extension or magic bytes), ``truncated`` (decoder ran out of data),
``too_large`` (a side over :data:`MAX_SIDE` or an area over :data:`MAX_PIXELS`, read from the
header of EVERY frame or page read before it is decoded, or Pillow's decompression-bomb guard), ``unreadable`` (anything
else Pillow rejects).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

#: File extensions treated as video (never decoded as images).
VIDEO_EXTENSIONS = frozenset({".webm", ".mp4", ".m4v", ".mov", ".mkv", ".avi", ".tgs"})

REASONS = ("no_image", "missing", "empty", "video", "truncated", "too_large", "unreadable")

#: Largest image side accepted (px); a larger one is ``too_large`` (checked before decoding).
MAX_SIDE = 16384
#: Largest image area accepted (px, per frame and for frames stacked); 64 Mpx = 256 MiB as RGBA.
MAX_PIXELS = 64 * 2 ** 20


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than :data:`MAX_SIDE`/:data:`MAX_PIXELS`."""


def size_problem(width: int, height: int, n_frames: int = 1) -> str | None:
    """``"too_large"`` if a ``width x height`` image (``n_frames`` of them stacked) is over the
    bounds, else None."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height * max(1, n_frames) > MAX_PIXELS:
        return "too_large"
    return None


def _is_video(path: Path) -> bool:
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head.startswith(b"\x1a\x45\xdf\xa3") or head[4:8] == b"ftyp"  # EBML (webm/mkv), ISO-BMFF


def _problem(path: str | os.PathLike | None) -> tuple[Path | None, str | None]:
    if path is None or (isinstance(path, float) and np.isnan(path)) or str(path) == "":
        return None, "no_image"
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        return p, "missing"
    if not p.is_file():
        return p, "missing"
    if size == 0:
        return p, "empty"
    if _is_video(p):
        return p, "video"
    return p, None


def image_problem(path: str | os.PathLike | None) -> str | None:
    """Cheap check without decoding: the reason a path cannot be an image, or None if it may be."""
    return _problem(path)[1]


def _classify(exc: BaseException) -> str:
    if isinstance(exc, (Image.DecompressionBombError, ImageTooLarge)):
        return "too_large"
    msg = str(exc).lower()
    if "truncated" in msg or "premature end" in msg or "unexpected end" in msg:
        return "truncated"
    return "unreadable"


def to_rgba(frame: Image.Image) -> Image.Image:
    """Any Pillow mode as RGBA: palette transparency and LA alpha kept, opaque modes alpha 255."""
    if frame.mode == "RGBA":
        return frame
    if frame.mode == "P" and "transparency" in frame.info:
        return frame.convert("RGBA")
    if frame.mode in ("LA", "La", "PA", "RGBa"):
        return frame.convert("RGBA")
    if frame.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(frame, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 1.0
        arr = (arr / (hi if hi > 0 else 1.0) * 255).clip(0, 255).astype(np.uint8)
        frame = Image.fromarray(arr, "L")
    return frame.convert("RGB").convert("RGBA")


def flatten(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Composite an image (any mode) onto a solid background colour and return RGB."""
    if image.mode == "RGB":
        return image
    rgba = to_rgba(image)
    if rgba.getextrema()[3][0] == 255:  # fully opaque
        return rgba.convert("RGB")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _pick_frames(n_frames: int, frames: int) -> list[int]:
    if frames <= 1 or n_frames <= 1:
        return [0]
    k = min(frames, n_frames)
    return sorted({round(i * (n_frames - 1) / (k - 1)) for i in range(k)})


def frame_extent(im: Image.Image) -> tuple[int, int]:
    """The size the current frame will be decoded at, from its header (``im.size`` and the
    tile extents after ``seek``): nothing is decoded."""
    width, height = im.size
    for tile in getattr(im, "tile", None) or []:
        extents = tile[1] if len(tile) > 1 else None
        if extents and len(extents) == 4:
            width, height = max(width, int(extents[2])), max(height, int(extents[3]))
    return width, height


def _read_frames(p: Path, frames: int) -> list[Image.Image]:
    """Decoded RGBA frames (evenly spaced over the animation, first frame always included).

    Every frame up to the last one wanted is bounded before it is decoded: after ``seek`` its
    header size (:func:`frame_extent`) must pass :func:`size_problem`, and the wanted frames
    together too — Pillow decodes the frames in between to composite the next one, so a small
    first frame cannot hide a huge later frame or page (GIF, multi-page TIFF, WebP, APNG)."""
    with Image.open(p) as im:  # reads the header only: the size is known before decoding
        n = int(getattr(im, "n_frames", 1) or 1)
        wanted = set(_pick_frames(n, frames))
        if size_problem(im.width, im.height, len(wanted)):
            raise ImageTooLarge(f"{im.width}x{im.height} px x {len(wanted)} frame(s)")
        out = []
        stacked = 0
        for i in range(max(wanted) + 1):
            if i:
                im.seek(i)  # reads frame i's header; decodes frame i-1 (already bounded)
            width, height = frame_extent(im)
            if size_problem(width, height):
                raise ImageTooLarge(f"frame {i}: {width}x{height} px")
            if i in wanted:
                stacked += width * height
                if stacked > MAX_PIXELS:
                    raise ImageTooLarge(f"frames 0..{i}: {stacked} px in total")
                im.load()
                out.append(to_rgba(im.copy()))
    # drop consecutive duplicate frames (animations often repeat a still)
    uniq: list[Image.Image] = []
    for fr in out:
        if not uniq or fr.tobytes() != uniq[-1].tobytes():
            uniq.append(fr)
    return uniq


def load_frames_checked(path: str | os.PathLike | None, frames: int = 1
                        ) -> tuple[list[Image.Image] | None, str | None]:
    """Up to ``frames`` distinct RGBA frames of a (possibly animated) image, or (None, reason)."""
    p, reason = _problem(path)
    if reason is not None:
        return None, reason
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _read_frames(p, max(1, int(frames))), None
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        return None, _classify(exc)


def merge_frames(frames: list[Image.Image]) -> Image.Image:
    """Stack frames vertically (each centred) into one RGBA image; one frame is returned as is."""
    if len(frames) == 1:
        return frames[0]
    width = max(f.width for f in frames)
    height = sum(f.height for f in frames)
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    y = 0
    for f in frames:
        canvas.paste(f, ((width - f.width) // 2, y))
        y += f.height
    return canvas


def load_rgba_checked(path: str | os.PathLike | None, frames: int = 1
                      ) -> tuple[Image.Image | None, str | None]:
    """The raw RGBA image (alpha kept; ``frames`` > 1 stacks frames vertically), or
    ``(None, reason)``."""
    fr, reason = load_frames_checked(path, frames)
    if fr is None:
        return None, reason
    return merge_frames(fr), None


def load_rgba(path: str | os.PathLike | None, frames: int = 1) -> Image.Image | None:
    """Like :func:`load_rgba_checked` without the reason."""
    return load_rgba_checked(path, frames)[0]


def load_image_checked(path: str | os.PathLike | None, frames: int = 1,
                       background: tuple[int, int, int] = WHITE
                       ) -> tuple[Image.Image | None, str | None]:
    """An RGB image flattened onto ``background`` (GIF: first frame, or ``frames`` frames stacked
    vertically), or ``(None, reason)``; never raises."""
    img, reason = load_rgba_checked(path, frames)
    if img is None:
        return None, reason
    return flatten(img, background), None


def load_image(path: str | os.PathLike | None, frames: int = 1,
               background: tuple[int, int, int] = WHITE) -> Image.Image | None:
    """An RGB image (transparency flattened onto white), or None if it cannot be loaded."""
    return load_image_checked(path, frames, background)[0]


def count_reasons(reasons: Iterable[str | None]) -> dict[str, int]:
    """``{reason: count}`` of the non-None reasons, in :data:`REASONS` order."""
    counts: dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    order = {r: i for i, r in enumerate(REASONS)}
    return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order))))
