"""The PaddleOCR engine: PP-OCRv4 detection + recognition (Chinese + English, one model) on
onnxruntime, from the ``rapidocr-onnxruntime`` wheel — the models ship inside it, nothing is
downloaded. :class:`PaddleEngine` runs rapidocr's own detector, cropper and recogniser in three
steps so that each can be sized for stickers:

- **size-aware detection**: an image is detected with its long side scaled to ``det_side`` px
  (default 256; a 512 px sticker is detected at 256, a 120 px one at 256), and the boxes are
  mapped back, so text is cropped from the full-resolution image. Detection cost grows with the
  pixel count: 50 -> 25 ms per mixed-size (120-512 px) sticker on one core, CER unchanged
  (at 224 px, 5 of 159 one-character Chinese captions were missed: CER 0.031 vs 0.009).
  ``det_side: null`` keeps the older rule (own size, short side at least ``det_min_side``).
- **recognition at the crop's own width**: each text crop is recognised at height 48 and its own
  width rounded up to 16 px (at least ``rec_min_width``, default 224; rapidocr pads every crop to
  320), so a short caption costs less (at 160 px single-character Chinese captions were missed:
  CER 0.019 vs 0.009 at 224 on 159 rendered captions). Crops of the same width from any
  images are batched (``rec_batch``); a crop's result depends on nothing but the crop (checked
  bit for bit: batch of 1 or 16, the same scores), so results do not depend on how images are
  grouped into chunks, workers or shards. Batching gave no speed on CPU (measured: 2.9 s for 147
  crops one at a time, 3.2-3.6 s in batches of 4-16), hence ``rec_batch: 1``.
- **no recognition where detection finds no text**.

The direction classifier is off (stickers are upright). Very thin images are padded to
:data:`MAX_ASPECT` first (memory bound). Transparency: a sticker is flattened onto white; if that
reads nothing and the sticker has transparent pixels, it is read again flattened onto black.
Threads each borrow one engine from a pool kept between calls, one onnxruntime thread per engine;
:mod:`bench.features.image_pipeline` runs worker processes instead.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from bench.features.config import OcrConfig
from bench.features.images import BLACK, WHITE, flatten, load_rgba_checked
from bench.features.ocr_engine import OcrEngine, Reading, add_stage_time

log = logging.getLogger(__name__)

#: Idle engines; a thread borrows one, so no engine runs in two threads at once.
_POOL: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
_POOL_LOCK = threading.Lock()
#: rapidocr's recogniser input height and its score threshold for a text box.
REC_HEIGHT = 48
TEXT_SCORE = 0.5
#: Widest aspect ratio read as is: thinner images are padded (transparent) to this ratio first,
#: so that scaling them cannot make a multi-gigapixel array.
MAX_ASPECT = 32


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


def _new_engine():
    """A RapidOCR instance; only its detector, cropper and recogniser are used. Its detector's
    own resizing is off (limit 32 px, i.e. only rounding to multiples of 32): we resize."""
    from rapidocr_onnxruntime import RapidOCR
    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, use_cls=False,
                    print_verbose=False, det_limit_side_len=32, det_limit_type="min")


@contextmanager
def _borrowed_engine() -> Iterator[Any]:
    """An engine used by this thread alone until the block ends, then kept for the next call
    (loading one takes ~0.4 s)."""
    try:
        engine = _POOL.get_nowait()
    except queue.Empty:
        with _POOL_LOCK:
            engine = _new_engine()
    try:
        yield engine
    finally:
        _POOL.put(engine)


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


def _bgr(rgba, background) -> np.ndarray:
    """The image flattened onto ``background`` as a contiguous BGR uint8 array (what the
    engine expects); an opaque image skips the composite."""
    arr = np.asarray(rgba)
    if arr.ndim == 3 and arr.shape[2] == 4 and arr[:, :, 3].min() == 255:
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(np.asarray(flatten(rgba, background).convert("RGB"))[:, :, ::-1])


def _det_scale(h: int, w: int, config: OcrConfig) -> float:
    if config.det_side is not None:
        return config.det_side / max(h, w)
    return max(1.0, config.det_min_side / min(h, w))


def _detect(engine, bgr: np.ndarray, config: OcrConfig) -> list[np.ndarray]:
    """Text boxes (4 x 2 float32, full-resolution coordinates) in rapidocr's order."""
    import cv2
    h, w = bgr.shape[:2]
    s = _det_scale(h, w, config)
    if abs(s - 1.0) > 1e-9:
        size = (max(32, round(w * s)), max(32, round(h * s)))
        small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    else:
        small = bgr
    img, op = engine.maybe_add_letterbox(small, {})
    boxes, _ = engine.auto_text_det(img)
    if boxes is None:
        return []
    top = op["padding_1"]["top"]
    sx, sy = w / small.shape[1], h / small.shape[0]
    out = []
    for b in boxes:
        b = np.array(b, dtype=np.float32)
        b[:, 1] -= top
        b[:, 0] = np.clip(b[:, 0] * sx, 0, w - 1)
        b[:, 1] = np.clip(b[:, 1] * sy, 0, h - 1)
        out.append(b)
    return out


def _rec_width(crop: np.ndarray, config: OcrConfig) -> int:
    """A crop's recogniser input width: its own at height 48, rounded up to 16 px."""
    h, w = crop.shape[:2]
    return max(config.rec_min_width, math.ceil(REC_HEIGHT * w / max(1, h) / 16) * 16)


def _recognise(engine, crops: list[np.ndarray], config: OcrConfig) -> list[tuple[str, float]]:
    """(text, score) per crop; crops of equal input width batched ``config.rec_batch`` at a
    time (a crop's result does not depend on its batch)."""
    rec = engine.text_rec
    widths = [_rec_width(c, config) for c in crops]
    out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
    by_width: dict[int, list[int]] = {}
    for i, wd in enumerate(widths):
        by_width.setdefault(wd, []).append(i)
    for wd, idx in sorted(by_width.items()):
        for start in range(0, len(idx), config.rec_batch):
            sub = idx[start:start + config.rec_batch]
            batch = np.stack([rec.resize_norm_img(crops[i], wd / REC_HEIGHT) for i in sub])
            preds = rec.session(batch.astype(np.float32))[0]
            for i, res in zip(sub, rec.postprocess_op(preds, False)):
                out[i] = (str(res[0]), float(res[1]))
    return out


def _assemble(boxes: list[np.ndarray], texts: list[tuple[str, float]]) -> tuple[str, float]:
    """Boxes scored at least :data:`TEXT_SCORE`, in reading order (top to bottom, then left to
    right), joined by spaces; the confidence is their mean score x 100."""
    kept = [(b, t, s) for b, (t, s) in zip(boxes, texts) if s >= TEXT_SCORE]
    if not kept:
        return "", 0.0
    kept.sort(key=lambda r: (round(float(r[0][:, 1].min()) / 8), float(r[0][0][0])))
    words = [t.strip() for _, t, _ in kept if t.strip()]
    return " ".join(words), float(np.mean([s for _, _, s in kept])) * 100.0


def _read_pass(engine, bgrs: list[np.ndarray], config: OcrConfig,
               timings: dict[str, float]) -> list[tuple[str, float]]:
    clock = time.perf_counter(), time.thread_time()
    boxes = [_detect(engine, b, config) for b in bgrs]
    crops, owner = [], []
    for i, (bgr, bx) in enumerate(zip(bgrs, boxes)):
        if bx:  # no recognition where detection found no text
            crops += engine.get_crop_img_list(bgr, bx)
            owner += [i] * len(bx)
    clock = add_stage_time(timings, "detect", *clock)
    texts = _recognise(engine, crops, config) if crops else []
    add_stage_time(timings, "recognise", *clock)
    per_image: list[list[tuple[str, float]]] = [[] for _ in bgrs]
    for i, t in zip(owner, texts):
        per_image[i].append(t)
    return [_assemble(bx, per_image[i]) for i, bx in enumerate(boxes)]


class PaddleEngine(OcrEngine):
    """PP-OCRv4 via rapidocr-onnxruntime (see the module docstring)."""

    name = "paddle"
    reads_decoded = True

    def model_id(self, config: OcrConfig) -> str:
        return f"paddle-{paddle_version()}"

    def read_decoded(self, images: Sequence[Any], config: OcrConfig,
                     timings: dict[str, float] | None = None) -> list[tuple[str, float]]:
        timings = {} if timings is None else timings
        images = [_bounded_aspect(im) for im in images]
        with _borrowed_engine() as engine:
            res = _read_pass(engine, [_bgr(im, WHITE) for im in images], config, timings)
            # white text on a transparent background: read nothing on white, try black
            again = [i for i, (text, _) in enumerate(res)
                     if not text and (np.asarray(images[i].getchannel("A")) < 250).mean() >= 0.01]
            if again:
                second = _read_pass(engine, [_bgr(images[i], BLACK) for i in again], config,
                                    timings)
                for i, r in zip(again, second):
                    res[i] = r
        return res

    def _read_one(self, path: str | None, config: OcrConfig) -> Reading:
        rgba, reason = load_rgba_checked(path, frames=config.frames)
        if rgba is None:
            return "", 0.0, reason or "unreadable"
        try:
            text, conf = self.read_decoded([rgba], config)[0]
        except Exception as exc:  # a model error on one image must not stop the run
            log.warning("paddle OCR failed on %s: %s", path, exc)
            return "", 0.0, "ocr_failed"
        return text, conf, ""

    def read_paths(self, paths: Sequence[str | os.PathLike | None], config: OcrConfig
                   ) -> list[Reading]:
        paths = [None if p is None else str(p) for p in paths]
        if not paths:
            return []
        workers = max(1, min(config.workers, os.cpu_count() or 1, len(paths)))
        if workers == 1:
            return [self._read_one(p, config) for p in paths]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda p: self._read_one(p, config), paths))


def paddle_images(paths: Sequence[str | os.PathLike | None], config: OcrConfig | None = None
                  ) -> list[Reading]:
    """OCR image files (no cache): ``(text, mean confidence 0-100, missing reason or "")``."""
    return PaddleEngine().read_paths(paths, config or OcrConfig(engine="paddle"))
