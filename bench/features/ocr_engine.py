"""The interface every OCR engine implements; the engines are registered by class in
:data:`bench.features.ocr.OCR_ENGINES` (name -> class), and ``features.ocr.engine`` picks one.

An engine reads image files (:meth:`OcrEngine.read_paths`); an engine that can also read images
already decoded (``reads_decoded = True``) lets the feature pipeline decode each sticker once for
OCR and the image encoder (:mod:`bench.features.image_pipeline`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

#: One reading: (text, mean confidence 0-100, missing reason or "").
Reading = tuple[str, float, str]


class OcrEngine:
    """One OCR engine. Subclasses set ``name`` and implement :meth:`model_id` and
    :meth:`read_paths`; ``reads_decoded`` engines also :meth:`read_decoded`."""

    name: str = ""
    reads_decoded: bool = False

    def model_id(self, config: Any) -> str:
        """The engine and its version (part of the cache key); raises
        :class:`bench.features.ocr_tesseract.OcrUnavailable` if it is not installed."""
        raise NotImplementedError

    def read_paths(self, paths: Sequence[str | os.PathLike | None], config: Any
                   ) -> list[Reading]:
        """OCR image files (no cache), one :data:`Reading` per path, in order."""
        raise NotImplementedError

    def read_decoded(self, images: Sequence[Any], config: Any,
                     timings: dict[str, float] | None = None) -> list[tuple[str, float]]:
        """OCR decoded RGBA images (PIL), ``(text, confidence)`` each; adds wall seconds spent to
        ``timings["detect"]`` and ``timings["recognise"]`` (CPU seconds of the calling thread to
        ``detect_cpu`` and ``recognise_cpu``)."""
        raise NotImplementedError(f"OCR engine {self.name!r} reads files only")

    def warm_up(self, config: Any) -> None:
        """Load what the first :meth:`read_decoded` call would load (models, libraries), so a
        worker process pays its start-up before its first task; by default nothing."""


def add_stage_time(timings: dict[str, float], stage: str, wall0: float, cpu0: float
                   ) -> tuple[float, float]:
    """Add the wall seconds and this thread's CPU seconds since ``(wall0, cpu0)`` (from
    ``time.perf_counter()``, ``time.thread_time()``) to ``timings[stage]`` and
    ``timings[stage + "_cpu"]``; returns the new ``(wall, cpu)`` start."""
    wall, cpu = time.perf_counter(), time.thread_time()
    timings[stage] = timings.get(stage, 0.0) + wall - wall0
    timings[stage + "_cpu"] = timings.get(stage + "_cpu", 0.0) + cpu - cpu0
    return wall, cpu
