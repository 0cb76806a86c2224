"""Work shared within one run, owned by the run (issue 25): a :class:`RunContext` is created per
run (:func:`bench.retrieval.leak_safe_view` gives each :class:`~bench.retrieval.TrainView` one),
reaches retrievers as ``train.context`` and is cleared when the run ends. No module of the
package keeps a cache of its own at module level (``tests/test_architecture.py`` checks).

What it holds: tokenized BM25 field term counts (PerSRV's ablations share fields: each field is
tokenized once per run) and loaded text encoders (dense-text). Each cache is a small LRU; the
time spent filling it is kept per kind in :attr:`RunContext.seconds`, so a run can report shared
work as its own stage instead of charging it to whichever retriever came first. PerSRV's recall
pools are not shared between retrievers: they belong to a fitted retriever and the copies
``with_params`` derives from it (:mod:`bench.persrv.recall_cache`), so the search time logged
per retriever does not depend on the order of the config's retrievers.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Hashable

#: Entries kept per kind unless a caller asks for another size.
DEFAULT_SIZE = 8


class LRUCache:
    """At most ``size`` entries; the least recently used is dropped first."""

    def __init__(self, size: int = DEFAULT_SIZE):
        if int(size) < 1:
            raise ValueError(f"cache size must be >= 1, got {size}")
        self.size = int(size)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: Any) -> Any:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


class RunContext:
    """The caches of one run, by kind (``"bm25-field-counts"``, ``"text-encoders"``, ...).

    ``cached(kind, key, compute)`` returns the entry, computing it once; :attr:`seconds` holds
    the time spent computing entries per kind and :attr:`hits` how often one was reused.
    Use as a context manager (or call :meth:`clear`) to drop everything when the run ends."""

    def __init__(self):
        self._caches: dict[str, LRUCache] = {}
        self.seconds: dict[str, float] = {}
        self.hits: dict[str, int] = {}

    def cache(self, kind: str, size: int = DEFAULT_SIZE) -> LRUCache:
        """The LRU of ``kind`` (created with ``size`` entries on first use)."""
        if kind not in self._caches:
            self._caches[kind] = LRUCache(size)
        return self._caches[kind]

    def cached(self, kind: str, key: Hashable, compute: Callable[[], Any],
               size: int = DEFAULT_SIZE) -> Any:
        """The entry ``key`` of ``kind``, from ``compute()`` the first time (timed)."""
        cache = self.cache(kind, size)
        if key in cache:
            self.hits[kind] = self.hits.get(kind, 0) + 1
            return cache.get(key)
        t0 = time.perf_counter()
        value = compute()
        self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - t0
        return cache.put(key, value)

    def stage_seconds(self) -> dict[str, float]:
        """``shared_<kind>_seconds`` of every kind computed so far (for a run's metrics)."""
        return {f"shared_{k.replace('-', '_')}_seconds": round(v, 6)
                for k, v in sorted(self.seconds.items())}

    def clear(self) -> None:
        """Drop every cached entry (the timings stay)."""
        for cache in self._caches.values():
            cache.clear()
        self._caches.clear()

    def __enter__(self) -> "RunContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.clear()
