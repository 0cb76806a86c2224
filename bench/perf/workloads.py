"""The datasets ``persrv-bench perf`` measures on (``--workload``), built once into the cache.

``concepts``: the ``synthetic`` builder in text-only mode (46 concepts, each with ~5 query
phrases: a few hundred distinct test queries, which flatters per-query caches).

``zipf`` (the default, :func:`build_zipf`): looks like real logs. A vocabulary of
``n_words`` (50,000) pronounceable words with Zipfian frequencies (word of rank r drawn with
probability proportional to 1 / r); ``n_stickers // 50`` topics, each with a few core words
drawn from that distribution and 3-6 query phrases of 1-3 of its core words; every sticker
belongs to one topic, ``ocr_fraction`` (60 %) of them carry OCR text (1-4 words, mostly their
topic's core words, the rest background words from the Zipfian vocabulary); one of 6 styles,
with a precomputed style vector in ``embedding`` (prototype + noise). Users are simulated by
:func:`bench.data.simulate.simulate_clicks` with per-user style preferences over ``gt_style``
and topic interests over ``gt_topic`` (:func:`bench.perf.config.zipf_users`: ``n_stickers // 40``
users up to the paper's 12,568, then the paper's users per sticker). At paper
scale that gives thousands of distinct test queries (``perf`` prints the count).

Either is written in the canonical format (DESIGN §2) under the dataset cache
(``<cache>/datasets/``), keyed by its parameters; a dataset not cached yet is built in a
subprocess (``python -m bench.perf build``) so its time and memory stay out of the measures.
"""

from __future__ import annotations

from functools import cached_property

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.errors import ConfigError
from bench.perf.config import WORKLOADS, PerfConfig, zipf_users

ZIPF_WORDS = 50_000
ZIPF_VERSION = "2"  # 2: users past the paper size grow with the corpus (zipf_users)
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


@dataclass
class PerfData:
    """What the measured pipeline starts from (as :func:`bench.runner.prepare` gives it)."""

    ds: Any
    splits: Any
    requests: Any      # bench.data.splits.Requests, capped
    view: Any          # TrainView for the test run (train + validation clicks)
    n_requests_all: int
    built_s: float | None

    @cached_property
    def fill_order(self):
        """The fitting clicks' popularity order (:mod:`bench.listing`), computed once."""
        from bench.listing import FillOrder
        return FillOrder.from_view(self.view.stickers, self.view.clicks)


# ------------------------------------------------------------------------------------ zipf

def zipf_words(n_words: int, seed: int) -> np.ndarray:
    """``n_words`` distinct pronounceable words (2-3 consonant+vowel syllables), in the
    order of their Zipf rank (a seeded shuffle)."""
    syl = [c + v for c in _CONSONANTS for v in _VOWELS]
    n2, n3 = len(syl) ** 2, len(syl) ** 3
    if not 1 <= n_words <= n2 + n3:
        raise ConfigError(f"zipf workload: n_words = {n_words}: expected 1..{n2 + n3}")
    codes = np.random.default_rng([seed, 20]).choice(n2 + n3, size=n_words, replace=False)
    out = []
    for c in codes.tolist():
        parts, width = [], 2 if c < n2 else 3
        c = c if c < n2 else c - n2
        for _ in range(width):
            c, r = divmod(c, len(syl))
            parts.append(syl[r])
        out.append("".join(parts))
    return np.array(out, dtype=object)


def _zipf_draw(rng: np.random.Generator, n_words: int, size: Any, s: float = 1.0) -> np.ndarray:
    """Word ranks drawn with probability proportional to 1 / (rank + 1) ** s."""
    cum = np.cumsum((np.arange(n_words) + 1.0) ** -s)
    return np.searchsorted(cum, rng.random(size) * cum[-1], side="right").clip(0, n_words - 1)


def zipf_topics(n_topics: int, n_words: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, ...]]]]:
    """Per topic its core word ranks (padded (n_topics, 6) matrix, -1 = none), the core sizes,
    and its query phrases as tuples of word ranks (1-3 words of the core, distinct)."""
    n_core = rng.integers(3, 7, size=n_topics)
    draws = _zipf_draw(rng, n_words, (n_topics, 6))
    core = np.full((n_topics, 6), -1, dtype=np.int64)
    sizes = np.zeros(n_topics, dtype=np.int64)
    n_queries = rng.integers(3, 7, size=n_topics)
    lengths = rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15], size=(n_topics, 6))
    phrases: list[list[tuple[int, ...]]] = []
    for t in range(n_topics):
        words = list(dict.fromkeys(draws[t, :n_core[t]].tolist()))
        core[t, :len(words)] = words
        sizes[t] = len(words)
        seen: dict[tuple[int, ...], None] = {}
        for j in range(int(n_queries[t])):
            order = rng.permutation(len(words))[:min(int(lengths[t, j]), len(words))]
            seen.setdefault(tuple(words[i] for i in order.tolist()), None)
        phrases.append(list(seen))
    return core, sizes, phrases


def build_zipf(out: str | Path, *, n_stickers: int, seed: int = 0, n_words: int = ZIPF_WORDS,
               ocr_fraction: float = 0.6, embedding_dim: int = 32,
               embedding_noise: float = 0.5, n_styles: int = 6):
    """Write the zipf workload (module doc) into ``out``; returns the loaded Dataset."""
    from bench.data.format import write_dataset
    from bench.data.simulate import simulate_clicks, simulator_config
    from bench.data.synthetic import STYLES, style_embeddings
    import pandas as pd
    if n_stickers < 100:
        raise ConfigError(f"zipf workload: n_stickers = {n_stickers}: expected >= 100")
    rng = np.random.default_rng([seed, 21])
    words = zipf_words(n_words, seed)
    n_topics = max(20, n_stickers // 50)
    core, sizes, phrases = zipf_topics(n_topics, n_words, rng)
    topic = rng.integers(n_topics, size=n_stickers)
    # OCR text on part of the stickers: 1-4 words, each from the topic's core (70 %) or the
    # background Zipfian vocabulary
    n_ocr = rng.integers(1, 5, size=n_stickers)
    from_core = rng.random((n_stickers, 4)) < 0.7
    from_core[:, 0] = True
    core_pick = core[topic[:, None], (rng.random((n_stickers, 4)) *
                                      sizes[topic][:, None]).astype(np.int64)]
    ranks = np.where(from_core, core_pick, _zipf_draw(rng, n_words, (n_stickers, 4)))
    has_ocr = rng.random(n_stickers) < ocr_fraction
    ocr = [" ".join(words[r[:n]]) if keep else None
           for r, n, keep in zip(ranks, n_ocr.tolist(), has_ocr.tolist())]
    width = max(6, len(str(n_stickers)))
    ids = np.array([f"zipf-{i:0{width}d}" for i in range(1, n_stickers + 1)], dtype=object)
    style_names = np.array(list(STYLES)[:n_styles], dtype=object)
    stickers = pd.DataFrame({
        "sticker_id": ids, "image": None, "ocr_text": ocr,
        "gt_topic": np.char.add("t", topic.astype(str)).astype(object),
        "gt_style": style_names[rng.integers(n_styles, size=n_stickers)]})
    stickers["embedding"] = list(style_embeddings(stickers["gt_style"], embedding_dim,
                                                  embedding_noise, seed))
    lists = [[" ".join(words[list(p)]) for p in ph] for ph in phrases]  # one object per topic
    queries = dict(zip(ids.tolist(), (lists[t] for t in topic.tolist())))
    cfg = simulator_config(None, n_users=zipf_users(n_stickers),
                           seed=seed, group_col="gt_style", topic_col="gt_topic")
    clicks = simulate_clicks(stickers, queries, cfg)
    params = zipf_params(n_stickers, seed) | dict(ocr_fraction=ocr_fraction,
                                                  embedding_dim=embedding_dim,
                                                  embedding_noise=embedding_noise,
                                                  n_styles=n_styles)
    meta = {"name": f"perf-zipf-{n_stickers}", "version": ZIPF_VERSION,
            "source": "bench.perf.workloads.build_zipf (seeded generator)",
            "license": "CC0-1.0 (generated)", "languages": ["en"],
            "simulator": {**cfg.to_dict(), "stats": clicks.attrs.get("simulator_stats", {})},
            "builder_params": params}
    cols = ["sticker_id", "image", "ocr_text", "embedding", "gt_topic", "gt_style"]
    return write_dataset(Path(out), stickers[cols], clicks, meta)


def zipf_params(size: int, seed: int) -> dict[str, Any]:
    return {"workload": "zipf", "version": ZIPF_VERSION, "n_stickers": int(size),
            "n_words": ZIPF_WORDS, "seed": int(seed)}


# ----------------------------------------------------------------------------- the cache

def dataset_spec(size: int, seed: int):
    """The ``concepts`` workload: the synthetic builder, text-only."""
    from bench.config import DatasetSpec
    params: dict[str, Any] = {"n_stickers": int(size), "images": False}
    if seed:
        params["seed"] = int(seed)
    return DatasetSpec(builder="synthetic", params=params)


def _zipf_key(size: int, seed: int) -> str:
    blob = json.dumps(zipf_params(size, seed), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def zipf_dir(size: int, seed: int) -> Path:
    from bench.features.cache import datasets_cache_dir
    return datasets_cache_dir() / f"perf-zipf-{_zipf_key(size, seed)[:12]}"


def _check(workload: str) -> None:
    if workload not in WORKLOADS:
        raise ConfigError(f"perf: unknown workload {workload!r}; expected one of "
                          f"{', '.join(WORKLOADS)}")


def dataset_cached(workload: str, size: int, seed: int) -> bool:
    from bench.data.format import META_FILE
    _check(workload)
    if workload == "zipf":
        meta = zipf_dir(size, seed) / META_FILE
        key = _zipf_key(size, seed)
    else:
        from bench.data.resolve import _params_key, built_dataset_dir
        spec = dataset_spec(size, seed)
        meta, key = built_dataset_dir(spec) / META_FILE, _params_key(spec)
    return meta.exists() and \
        json.loads(meta.read_text(encoding="utf-8")).get("builder_params_key") == key


def build_workload(workload: str, size: int, seed: int):
    """Build (or reuse) the workload's dataset in this process; returns it loaded."""
    from bench.data.format import META_FILE, load_dataset, write_json_atomic
    _check(workload)
    if workload == "concepts":
        from bench.data.resolve import resolve_dataset
        return resolve_dataset(dataset_spec(size, seed))
    out = zipf_dir(size, seed)
    if dataset_cached("zipf", size, seed):
        return load_dataset(out)
    build_zipf(out, n_stickers=size, seed=seed)
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    meta["builder_params_key"] = _zipf_key(size, seed)
    write_json_atomic(out / META_FILE, meta)
    return load_dataset(out)


def ensure_dataset(workload: str, size: int, seed: int,
                   echo: Callable[[str], None] = print) -> float | None:
    """Build the workload's dataset into the cache in a subprocess (so its time and memory stay
    out of the measurements); seconds spent, None if it was cached."""
    if dataset_cached(workload, size, seed):
        return None
    echo(f"building the {workload} workload ({size:,} stickers, text-only) into the cache ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.perf", "build", "--workload", workload,
                    "--size", str(size), "--seed", str(seed)], check=True)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ loading

def cap_requests(requests, n: int):
    from bench.data.splits import Requests
    if n <= 0 or len(requests) <= n:
        return requests
    keep = requests.requests[:n]
    return Requests(keep, {r: requests.relevant[r] for r in keep})


def load_data(cfg: PerfConfig, clock, echo: Callable[[str], None] = print) -> PerfData:
    """Dataset (cache or ``dataset_dir``), splits, capped test requests, the test TrainView;
    each step timed on ``clock`` (a :class:`bench.perf.measure.StageClock`) as owner
    ``data``."""
    from bench.data.format import load_dataset
    from bench.data.splits import split_interactions
    from bench.features.cache import FeatureCache
    from bench.retrieval import leak_safe_view
    from bench.runner import attach_configured_features
    built = None
    if cfg.dataset_dir is None:
        built = ensure_dataset(cfg.workload, cfg.size, cfg.seed, echo)
    with clock.stage("data", "load"):
        ds = load_dataset(cfg.dataset_dir) if cfg.dataset_dir else \
            build_workload(cfg.workload, cfg.size, cfg.seed)
    with clock.stage("data", "split"):
        splits = split_interactions(ds.interactions)
        all_requests = splits.requests("test")
        requests = cap_requests(all_requests, cfg.requests)
    with clock.stage("data", "features"):
        stickers, embeddings, _ = attach_configured_features(ds, {})
        view = leak_safe_view(stickers, splits.history_for("test"), meta=ds.meta,
                              root=ds.root, embeddings=embeddings, cache=FeatureCache(None),
                              seed=cfg.seed)
    return PerfData(ds, splits, requests, view, len(all_requests), built)
