"""Progress of long stages (dataset build, OCR, embeddings, dense encoding, index builds).

One helper for every stage: :func:`progress` (a context manager with ``update(n)``),
:func:`track` (wraps an iterable) and :func:`encode_with_progress` (runs a batch encoder over
chunks of its input). Where the output goes:

- stderr is a terminal: a tqdm bar;
- stderr is not a terminal (a log file, CI, ``mlflow run``): one INFO line on the logger
  ``bench.progress`` every ``interval_s`` (10 s) or every 10% of the total, whichever comes
  first, e.g. ``OCR: 400/1000 stickers (40%), 21 img/s, ~30 s left``, and a last line when the
  stage ends. Nothing is written for a stage that ends within ``delay_s`` (2 s);
- ``PERSRV_BENCH_QUIET=1``: nothing at all.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

QUIET_ENV = "PERSRV_BENCH_QUIET"
INTERVAL_S = 10.0
STEP_FRACTION = 0.1
DELAY_S = 2.0

log = logging.getLogger("bench.progress")
T = TypeVar("T")


def is_quiet() -> bool:
    """True when ``PERSRV_BENCH_QUIET`` is set to anything but "", "0", "false" or "no"."""
    return os.environ.get(QUIET_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts work done out of ``total`` (None: unknown) and reports it (see the module doc).

    ``unit``: what is counted, plural (``stickers``); ``rate_unit``: the unit of the rate
    (``img`` gives ``21 img/s``; default ``unit``). ``enabled=False`` reports nothing.
    ``interval_s``, ``step`` (a fraction of ``total``) and ``delay_s`` default to the module's
    :data:`INTERVAL_S`, :data:`STEP_FRACTION` and :data:`DELAY_S`.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "items", *,
                 rate_unit: str | None = None, enabled: bool = True,
                 interval_s: float | None = None, step: float | None = None,
                 delay_s: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.rate_unit = rate_unit or unit
        self.interval_s = INTERVAL_S if interval_s is None else float(interval_s)
        self.step = STEP_FRACTION if step is None else float(step)
        if not 0 < self.step <= 1:
            raise ValueError(f"progress step must be in (0, 1], got {self.step}")
        self.delay_s = DELAY_S if delay_s is None else float(delay_s)
        self.n = 0
        self.lines = 0  # progress lines logged (not a terminal)
        self._lock = threading.Lock()
        self._t0 = self._last = time.monotonic()
        self._mark = 1  # the next line is due at mark x step x total items
        self._bar = None
        self._mode = "off" if not enabled or is_quiet() else \
            "bar" if _stderr_is_terminal() else "log"
        if self._mode == "bar":
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit,
                             file=sys.stderr, leave=False, dynamic_ncols=True, delay=self.delay_s)

    # ------------------------------------------------------------------------------ updates
    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += int(n)
            if self._bar is not None:
                self._bar.update(int(n))
            elif self._mode == "log":
                now = time.monotonic()
                if now - self._t0 < self.delay_s:
                    return
                if now - self._last >= self.interval_s or (self._mark_reached()
                                                           and self.n < (self.total or 0)):
                    self._emit(now)

    def message(self, now: float | None = None) -> str:
        """``desc: n/total unit (pct%), rate/s, ~eta left``."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._t0, 1e-9)
        rate = self.n / elapsed
        if self.total:
            text = (f"{self.desc}: {self.n}/{self.total} {self.unit} "
                    f"({100 * self.n / self.total:.0f}%), {_rate(rate)} {self.rate_unit}/s")
            if 0 < self.n < self.total and rate > 0:
                text += f", ~{_duration((self.total - self.n) / rate)} left"
            return text
        return f"{self.desc}: {self.n} {self.unit}, {_rate(rate)} {self.rate_unit}/s"

    def _emit(self, now: float) -> None:
        log.info("%s", self.message(now))
        self.lines += 1
        self._last = now
        while self._mark_reached():
            self._mark += 1

    def _mark_reached(self) -> bool:
        return bool(self.total) and self.n >= self._mark * self.step * self.total - 1e-9

    def close(self) -> None:
        """End the stage: close the bar, or log the last line (when anything was logged or the
        stage took longer than ``delay_s``)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._mode == "log":
            now = time.monotonic()
            if self.lines or now - self._t0 >= self.delay_s:
                log.info("%s, done in %s", self.message(now).split(", ~")[0],
                         _duration(now - self._t0))
                self.lines += 1
        self._mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(total: int | None, desc: str, unit: str = "items", **kwargs: Any
             ) -> Iterator[Progress]:
    """``with progress(len(todo), "OCR", "stickers", rate_unit="img") as p: ... p.update(k)``."""
    bar = Progress(total, desc, unit, **kwargs)
    try:
        yield bar
    finally:
        bar.close()


def track(items: Iterable[T], desc: str, unit: str = "items", total: int | None = None,
          **kwargs: Any) -> Iterator[T]:
    """Yield ``items``, counting each one (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit, **kwargs) as bar:
        for item in items:
            yield item
            bar.update(1)


def encode_with_progress(encode: Callable[[list[T]], Any], items: Sequence[T], desc: str, *,
                         unit: str = "texts", chunk: int = 1024, **kwargs: Any) -> np.ndarray:
    """``encode(items)`` run over chunks of ``chunk`` items with progress; the rows of every
    chunk's array stacked in order -> ``(len(items), dim)`` (the dtype ``encode`` returns)."""
    items = list(items)
    if len(items) <= chunk:
        with progress(len(items), desc, unit, **kwargs) as bar:
            out = np.asarray(encode(items))
            bar.update(len(items))
            return out
    parts = []
    with progress(len(items), desc, unit, **kwargs) as bar:
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            parts.append(np.asarray(encode(part)))
            bar.update(len(part))
    return np.concatenate(parts, axis=0)
