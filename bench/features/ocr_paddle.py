"""The PaddleOCR engine: PP-OCRv4 detection + recognition (Chinese + English, one model) on
onnxruntime, from the ``rapidocr-onnxruntime`` wheel — the models ship inside it, nothing is
downloaded. :class:`PaddleEngine` runs rapidocr's own detector, cropper and recogniser in three
steps so that each can be sized for stickers:

- **size-aware detection**: an image whose long side is over ``det_side`` px (default 256) is
  detected shrunk to it, and the boxes are mapped back, so text is cropped from the
  full-resolution image; smaller ones are detected at their own size, the short side at least
  ``det_min_side`` (192; the older rule for every size, ``det_side: null``). Detection cost
  grows with the pixel count: 50 -> 25 ms per mixed-size (120-512 px) sticker on one core
  (shrinking to 224 px missed 5 of 159 one-character Chinese captions: CER 0.031 vs 0.009).
- **recognition at the crop's own width**: each text crop is recognised alone at height 48 and
  its own width, at least ``rec_min_width`` (default 320, as rapidocr and PaddleOCR pad; 224
  saves ~20% of recognition but read "xoxo" as "X0X0" more often: English CER 0.0072 vs 0.0039
  on 200 rendered 192 px captions; 160 missed one-character Chinese captions). Crops of the
  same width from any images can be batched (``rec_batch``); a crop's result depends on nothing
  but the crop (checked bit for bit: batch of 1 or 16, the same scores), so results do not
  depend on how images are grouped into tasks, workers or shards. Batching gave no speed on CPU
  (2.9 s for 147 crops one at a time, 3.2-3.6 s in batches of 4-16), hence ``rec_batch: 1``.
- **symbol-only boxes dropped** (``symbols: false``, as for tesseract): a drawn star read as
  "★" is not a caption.
- **no recognition where detection finds no text**.
- **folded graphs** (``graph: folded``, the default): both models run rewritten for
  onnxruntime's blocked-layout CPU kernels, a quarter less CPU for the same readings
  (:mod:`bench.features.ocr_graph`); ``graph: rapidocr`` runs them as shipped.

The direction classifier is off (stickers are upright). Very thin images are padded to
:data:`MAX_ASPECT` first (memory bound). Transparency: a sticker is flattened onto white; if that
reads nothing and the sticker has transparent pixels, it is read again flattened onto black.
Threads each borrow one engine (of the configured graph) from a pool kept between calls, one
onnxruntime thread per engine;
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

from bench.features.config import OCR_GRAPHS, OcrConfig
from bench.features.images import BLACK, WHITE, flatten, load_rgba_checked
from bench.features.ocr_engine import OcrEngine, Reading, add_stage_time

log = logging.getLogger(__name__)

#: Idle engines by ``features.ocr.graph``; a thread borrows one, so no engine runs in two
#: threads at once.
_POOL: "dict[str, queue.SimpleQueue[Any]]" = {g: queue.SimpleQueue() for g in OCR_GRAPHS}
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


def _new_engine(graph: str = "folded"):
    """A RapidOCR instance; only its detector, cropper and recogniser are used. Its detector's
    own resizing is off (limit 32 px, i.e. only rounding to multiples of 32): we resize. It
    carries the detector's input table (:func:`det_input_table`). ``graph`` "folded": both
    models run rewritten (:mod:`bench.features.ocr_graph`); "rapidocr": as shipped."""
    from rapidocr_onnxruntime import RapidOCR
    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, use_cls=False,
                      print_verbose=False, det_limit_side_len=32, det_limit_type="min")
    if graph == "folded":
        from bench.features.ocr_graph import folded_session
        for holder in (engine.text_det.infer, engine.text_rec.session):
            holder.session = folded_session(holder.session)
    engine.persrv_det_table = det_input_table(engine.text_det)
    return engine


def det_input_table(det) -> np.ndarray:
    """``float32 (3, 256)``: the detector's normalised input for each uint8 value per channel,
    computed with the very operations of rapidocr's ``DetPreProcess.normalize`` (``float32 x
    scale``, then ``- mean`` and ``/ std`` in float64, cast to float32), so a lookup gives the
    same bits as its per-pixel float64 arithmetic at a sixth of the time (1.8 -> 0.3 ms for a
    256 px sticker, of ~20 ms to detect it)."""
    pre = det.get_preprocess(32)
    values = np.arange(256, dtype=np.uint8).astype("float32") * pre.scale
    mean, std = np.asarray(pre.mean), np.asarray(pre.std)
    return np.stack([((values - mean[c]) / std[c]).astype(np.float32) for c in range(3)])


def _det_input(engine, img: np.ndarray) -> np.ndarray:
    """``float32 (1, 3, H, W)`` detector input of a BGR uint8 image whose sides are multiples of
    32 (what rapidocr's pre-processing returns for it, bit for bit: its resize is then a copy)."""
    table = engine.persrv_det_table
    planes = np.ascontiguousarray(img.transpose(2, 0, 1))  # channel planes: a contiguous take
    out = np.empty((1,) + planes.shape, dtype=np.float32)
    for c in range(3):
        np.take(table[c], planes[c], out=out[0, c])
    return out


@contextmanager
def _borrowed_engine(graph: str) -> Iterator[Any]:
    """An engine running ``graph`` used by this thread alone until the block ends, then kept
    for the next call (loading one takes ~0.4 s; folding its graphs ~1.5 s more the first time
    in a process, mostly importing ``onnx``)."""
    try:
        engine = _POOL[graph].get_nowait()
    except queue.Empty:
        with _POOL_LOCK:
            engine = _new_engine(graph)
    try:
        yield engine
    finally:
        _POOL[graph].put(engine)


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
    import cv2
    arr = np.asarray(rgba)
    # channel reorders by OpenCV (the same bytes as numpy's reversed view + copy, ~4x faster)
    if arr.ndim == 3 and arr.shape[2] == 4 and cv2.extractChannel(arr, 3).min() == 255:
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(np.asarray(flatten(rgba, background).convert("RGB")), cv2.COLOR_RGB2BGR)


def _det_scale(h: int, w: int, config: OcrConfig) -> float:
    """Detection scale: a long side over ``det_side`` is shrunk to it; otherwise the image is
    detected at its own size, a short side under ``det_min_side`` enlarged to it (enlarging a
    192 px sticker to 256 merged words: English CER 0.004 -> 0.034 on 200 captions)."""
    if config.det_side is not None and max(h, w) > config.det_side:
        return config.det_side / max(h, w)
    return max(1.0, config.det_min_side / min(h, w))


def _detect(engine, bgr: np.ndarray, config: OcrConfig) -> list[np.ndarray]:
    """Text boxes (4 x 2 float32, full-resolution coordinates) in rapidocr's order."""
    import cv2
    h, w = bgr.shape[:2]
    s = _det_scale(h, w, config)
    # straight to multiples of 32 (the detector's own rounding then changes nothing); enlarging
    # as rapidocr's detector does (bilinear), shrinking by pixel area
    size = (max(32, round(w * s / 32) * 32), max(32, round(h * s / 32) * 32))
    if size != (w, h):
        small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    else:
        small = bgr
    img, op = engine.maybe_add_letterbox(small, {})
    top = op["padding_1"]["top"]
    if top == 0:  # boxes mapped to the full image by the detector's own post-processing
        det = engine.text_det
        preds = det.infer(_det_input(engine, img))[0]
        boxes, _ = det.postprocess_op(preds, (h, w))
        boxes = det.filter_tag_det_res(boxes, (h, w))
        return [np.asarray(b, dtype=np.float32) for b in engine.sorted_boxes(boxes)] \
            if len(boxes) else []
    boxes, _ = engine.auto_text_det(img)  # letterboxed (very flat) images: map back by hand
    if boxes is None:
        return []
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
    """A crop's recogniser input width: its own at height 48 (as rapidocr sizes a crop
    recognised alone), at least ``rec_min_width``."""
    h, w = crop.shape[:2]
    return max(config.rec_min_width, int(REC_HEIGHT * w / max(1, h)))


def _rec_input(crop: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` with an exact input width: the crop at height 48 (at most
    ``width`` wide), scaled to [-1, 1], zero-padded on the right to ``width``."""
    import cv2
    h, w = crop.shape[:2]
    resized_w = min(width, math.ceil(REC_HEIGHT * w / max(1, h)))
    img = cv2.resize(crop, (resized_w, REC_HEIGHT)).astype(np.float32)
    out = np.zeros((3, REC_HEIGHT, width), dtype=np.float32)
    out[:, :, :resized_w] = (img.transpose((2, 0, 1)) / 255 - 0.5) / 0.5
    return out


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
            preds = rec.session(np.stack([_rec_input(crops[i], wd) for i in sub]))[0]
            for i, res in zip(sub, rec.postprocess_op(preds, False)):
                out[i] = (str(res[0]), float(res[1]))
    return out


def _reading_order(boxes: list[np.ndarray]) -> list[int]:
    """Box indices in reading order: lines top to bottom (a box whose vertical centre lies
    within the current line's extent joins it), boxes left to right within a line. Sorting by
    the top edge alone put "ON" before "HOLD" when a detector box sat a few pixels higher."""
    order = sorted(range(len(boxes)), key=lambda i: (float(boxes[i][:, 1].min()),
                                                     float(boxes[i][:, 0].min())))
    lines: list[list[int]] = []
    top = bottom = 0.0
    for i in order:
        y0, y1 = float(boxes[i][:, 1].min()), float(boxes[i][:, 1].max())
        if lines and top <= (y0 + y1) / 2 <= bottom:
            lines[-1].append(i)
            bottom = max(bottom, y1)
        else:
            lines.append([i])
            top, bottom = y0, y1
    return [i for line in lines for i in sorted(line, key=lambda j: float(boxes[j][:, 0].min()))]


def _assemble(boxes: list[np.ndarray], texts: list[tuple[str, float]], symbols: bool = False
              ) -> tuple[str, float]:
    """Boxes scored at least :data:`TEXT_SCORE`, in reading order (:func:`_reading_order`),
    joined by spaces; the confidence is their mean score x 100. Unless ``symbols``, a box without
    any letter, digit or CJK character is dropped, as tesseract's words are: a drawn star read
    as "★" is not a caption (4 of 159 rendered Chinese stickers, CER 0.019 -> 0.013)."""
    keep = [i for i, (t, s) in enumerate(texts)
            if s >= TEXT_SCORE and (symbols or any(c.isalnum() for c in t))]
    if not keep:
        return "", 0.0
    order = [keep[j] for j in _reading_order([boxes[i] for i in keep])]
    words = [texts[i][0].strip() for i in order if texts[i][0].strip()]
    return " ".join(words), float(np.mean([texts[i][1] for i in order])) * 100.0


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
    return [_assemble(bx, per_image[i], config.symbols) for i, bx in enumerate(boxes)]


class PaddleEngine(OcrEngine):
    """PP-OCRv4 via rapidocr-onnxruntime (see the module docstring)."""

    name = "paddle"
    reads_decoded = True

    def model_id(self, config: OcrConfig) -> str:
        """The wheel's version (raises :class:`OcrUnavailable` before any work when a package
        the configured graph needs is missing)."""
        import importlib.util
        version = paddle_version()
        if config.graph == "folded" and importlib.util.find_spec("onnx") is None:
            from bench.features.ocr_tesseract import OcrUnavailable
            raise OcrUnavailable("features.ocr.graph: folded needs the onnx package (pip install "
                                 "onnx), or set features.ocr.graph: rapidocr")
        return f"paddle-{version}"

    def read_decoded(self, images: Sequence[Any], config: OcrConfig,
                     timings: dict[str, float] | None = None) -> list[tuple[str, float]]:
        timings = {} if timings is None else timings
        images = [_bounded_aspect(im) for im in images]
        with _borrowed_engine(config.graph) as engine:
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

    def warm_up(self, config: OcrConfig) -> None:
        """One engine loaded into this process's pool (~0.4 s, plus onnxruntime's import)."""
        with _borrowed_engine(config.graph):
            pass

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
