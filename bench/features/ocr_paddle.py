"""The PaddleOCR engine: PP-OCRv4 detection + recognition (Chinese + English, one model) on
onnxruntime, from the ``rapidocr-onnxruntime`` wheel — the models ship inside it, nothing is
downloaded.

Speed (2 cores, 192 px synthetic stickers): the detector's default ``limit_side_len`` 736
upscales every small sticker to 736 px (1.6 images/s); reading at the sticker's own size, at
least ``det_min_side`` px (default 192), gives 14 images/s per process with the same CER on
rendered captions. The direction classifier is off (stickers are upright). ``workers`` threads
each borrow one engine from a pool kept between calls (onnxruntime releases the GIL while a model
runs; threads avoid forking a process that may hold torch's OpenMP pool), one onnxruntime thread
per engine. Very thin images are padded to :data:`MAX_ASPECT` first (memory bound).

Transparency: a sticker is flattened onto white; if that reads nothing and the sticker has
transparent pixels, it is read again flattened onto black (white text on a transparent
background).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from bench.features.config import OcrConfig
from bench.features.images import BLACK, WHITE, flatten, load_rgba_checked

log = logging.getLogger(__name__)

#: Idle engines by ``det_min_side``; a thread borrows one, so no engine runs in two threads.
_POOL: dict[int, "queue.SimpleQueue[Any]"] = {}
_POOL_LOCK = threading.Lock()


def paddle_version() -> str:
    """``rapidocr-onnxruntime`` version and the PP-OCR model files it carries."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"rapidocr-{version('rapidocr-onnxruntime')}-ppocrv4"
    except PackageNotFoundError:
        from bench.features.ocr_tesseract import OcrUnavailable
        raise OcrUnavailable("the paddle OCR engine needs the rapidocr-onnxruntime package "
                             "(pip install rapidocr-onnxruntime), or choose features.ocr.engine: "
                             "tesseract, or turn OCR off (features: {ocr: false})") from None


def _new_engine(det_min_side: int):
    from rapidocr_onnxruntime import RapidOCR
    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, use_cls=False,
                    print_verbose=False, det_limit_side_len=det_min_side, det_limit_type="min")


@contextmanager
def _borrowed_engine(config: OcrConfig) -> Iterator[Any]:
    """An engine used by this thread alone until the block ends, then kept for the next call
    (loading one takes ~0.4 s; a fresh thread pool per cache chunk would reload them)."""
    with _POOL_LOCK:
        idle = _POOL.setdefault(config.det_min_side, queue.SimpleQueue())
    try:
        engine = idle.get_nowait()
    except queue.Empty:
        engine = _new_engine(config.det_min_side)
    try:
        yield engine
    finally:
        idle.put(engine)


def _read(engine, rgb: np.ndarray) -> tuple[str, float]:
    """Text boxes in reading order (top to bottom, then left to right), joined by spaces."""
    result, _ = engine(rgb[:, :, ::-1].copy(), use_cls=False)  # the engine expects BGR
    if not result:
        return "", 0.0
    boxes = sorted(result, key=lambda r: (round(min(p[1] for p in r[0]) / 8), r[0][0][0]))
    words = [str(r[1]).strip() for r in boxes if str(r[1]).strip()]
    conf = float(np.mean([float(r[2]) for r in boxes])) * 100.0 if boxes else 0.0
    return " ".join(words), conf


#: Widest aspect ratio read as is: the engine scales the *short* side up (to 30 px, then to
#: ``det_min_side``), so a 16384 x 1 strip would become a 3-Gpx array; thinner images are padded
#: (transparent) to this ratio first.
MAX_ASPECT = 32


def _bounded_aspect(rgba):
    """Pad an RGBA image so that its long side is at most :data:`MAX_ASPECT` x the short one."""
    from PIL import Image
    w, h = rgba.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return rgba
    side = -(-max(w, h) // MAX_ASPECT)
    size = (w, side) if w > h else (side, h)
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.paste(rgba, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


def _read_one(path: str | None, config: OcrConfig) -> tuple[str, float, str]:
    rgba, reason = load_rgba_checked(path, frames=config.frames)
    if rgba is None:
        return "", 0.0, reason or "unreadable"
    rgba = _bounded_aspect(rgba)
    try:
        with _borrowed_engine(config) as engine:
            text, conf = _read(engine, np.asarray(flatten(rgba, WHITE).convert("RGB")))
            alpha = np.asarray(rgba.getchannel("A"))
            if not text and (alpha < 250).mean() >= 0.01:
                text, conf = _read(engine, np.asarray(flatten(rgba, BLACK).convert("RGB")))
    except Exception as exc:  # a model error on one image must not stop the run
        log.warning("paddle OCR failed on %s: %s", path, exc)
        return "", 0.0, "ocr_failed"
    return text, conf, ""


def paddle_images(paths: Sequence[str | os.PathLike | None], config: OcrConfig | None = None
                  ) -> list[tuple[str, float, str]]:
    """OCR image files (no cache): ``(text, mean confidence 0-100, missing reason or "")``."""
    config = config or OcrConfig(engine="paddle")
    paths = [None if p is None else str(p) for p in paths]
    if not paths:
        return []
    workers = max(1, min(config.workers, os.cpu_count() or 1, len(paths)))
    if workers == 1:
        return [_read_one(p, config) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: _read_one(p, config), paths))
