"""Rank fusion ``fusion``: the rankings of other retrievers combined by RRF, CombSUM or CombMNZ.

A retriever that composes others: ``fit`` builds every input with
:func:`bench.registry.make_retriever` and fits it on the same :class:`TrainView`; ``search``
asks each input for its top ``depth`` (one batched call per input) and fuses, per request:

- ``rrf`` (Cormack et al., SIGIR 2009): ``score(d) = sum_i w_i / (rrf_k + rank_i(d))``, rank
  1-based in input i's list; inputs whose list lacks d add nothing;
- ``combsum``: ``score(d) = sum_i w_i * norm_i(d)``;
- ``combmnz``: ``combsum * (number of inputs whose list holds d)``;

with ``norm_i`` the input's scores normalised over that request's list: ``min-max``
``(s - min) / max(max - min, 1e-9)``, ``z-score`` ``(s - mean) / max(std, 1e-9)`` (population
std) or ``none``; a sticker missing from a list contributes 0. These are ranx's definitions
(``ranx.fuse`` with ``norm="min-max"|"zmuv"``, ``method="rrf"|"sum"|"mnz"|"wsum"``), which
``tests/test_fusion.py`` checks on the same runs. The fused list is sorted by score, ties by
sticker id (ascending), and cut at k.

Why not call ranx at run time: ranx is a dev extra, its fusion is numba-compiled and importing it
takes 6-8 s on this machine (``python -c "from ranx import fuse"``, load ~3.5), longer than the
whole fusion of a quickstart run; the three methods are a few vectorised pandas operations here.

Inputs (``inputs``): a registered retriever name, a mapping ``{name, params, label, weight}``,
or — once :func:`resolve_inputs` has run on an experiment's retrievers — the label of another
configured retriever, which then stands for that retriever with its parameters. ``weights``
(one per input) overrides the inputs' own weights; it is what ``sweeps/fusion_methods.yaml``
tunes. Only ``inputs`` needs a new ``fit``; the method, normalisation, weights, ``rrf_k`` and
``depth`` change only the fusion (a sweep reuses the fitted inputs and their cached lists).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bench.errors import ConfigError
from bench.params import Configurable, RetrieverParams, param
from bench.registry import register
from bench.retrieval import Request, Run, TrainView

METHODS = ("rrf", "combsum", "combmnz")
NORMALIZATIONS = ("min-max", "z-score", "none")
#: ranx's floor on a normaliser's denominator (equal scores normalise to 0, not NaN).
EPS = 1e-9


class FusionInput(BaseModel):
    """One input of a fusion: a registered retriever (``name``) with its ``params``, the
    ``label`` it is shown under (default: the name) and its ``weight``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    weight: float = Field(1.0, ge=0)

    @property
    def display(self) -> str:
        return self.label or self.name


def as_input(item: Any) -> FusionInput:
    """A :class:`FusionInput` from a name, a mapping or an input."""
    if isinstance(item, FusionInput):
        return item
    if isinstance(item, str):
        return FusionInput(name=item)
    return FusionInput(**dict(item))


def resolve_inputs(inputs: Sequence[Any], configured_specs: Sequence[Any]) -> list[dict]:
    """``inputs`` with every name that is the label of a configured retriever replaced by that
    retriever's spec (``{name, params, label, weight}``); other names are kept (registered
    retrievers). ``configured_specs``: the experiment's retrievers (objects or mappings with
    ``name``, ``label``, ``params``). A string or a mapping without ``params`` resolves; a
    configured fusion cannot be an input (it would fit its own inputs again)."""
    specs: dict[str, dict] = {}
    for spec in configured_specs:
        get = spec.get if isinstance(spec, dict) else (lambda k, s=spec: getattr(s, k, None))
        name, label = get("name"), get("label")
        specs[label or name] = {"name": name, "params": dict(get("params") or {})}
    out = []
    for i, item in enumerate(inputs):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        key = entry.get("name")
        if key in specs and "params" not in entry:
            target = specs[key]
            if target["name"] == FusionRetriever.name:
                raise ConfigError(f"fusion: inputs.{i} ({key!r}) is itself a fusion; name its "
                                  "inputs instead")
            entry = {**entry, "name": target["name"], "params": target["params"],
                     "label": entry.get("label") or key}
        out.append(entry)
    return out


@register("fusion")
class FusionRetriever(Configurable):
    """Rank fusion (RRF, CombSUM, CombMNZ) of other retrievers' rankings, weights per input.

    Every input is built with ``make_retriever`` and fitted on the same train view; each search
    asks every input for its top ``depth`` and fuses (module doc: formulas, ties by sticker id).
    """

    @classmethod
    def resolve_params(cls, params: dict, configured_specs) -> dict:
        """``params`` with the ``inputs`` that name a label of the experiment's other retrievers
        replaced by their specs (:func:`resolve_inputs`; called by the config check)."""
        if isinstance(params.get("inputs"), list):
            params = {**params, "inputs": resolve_inputs(params["inputs"], configured_specs)}
        return params

    name = "fusion"

    class Params(RetrieverParams):
        inputs: list[str | FusionInput] = param(
            ["bm25", "query-lookup", "user-history"], refit="fit",
            description="retrievers to fuse: names, configured labels or "
                        "{name, params, label, weight}")
        method: Literal["rrf", "combsum", "combmnz"] = param(
            "rrf", refit="search", description="rrf | combsum | combmnz")
        normalize: Literal["min-max", "z-score", "none"] = param(
            "min-max", refit="search", description="score normalisation of combsum/combmnz")
        rrf_k: float = param(60.0, ge=0, refit="search", description="RRF's k")
        depth: int = param(100, ge=1, refit="search", description="list depth read per input")
        weights: list[float] | None = param(
            None, refit="search", description="one weight per input (overrides theirs)")

    # ----------------------------------------------------------------------------------- fit
    def _inputs(self) -> list[FusionInput]:
        inputs = [as_input(x) for x in self.inputs]
        if not inputs:
            raise ConfigError("fusion: inputs is empty; name at least one retriever")
        labels = [x.display for x in inputs]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"fusion: inputs {', '.join(map(repr, dup))} appear twice; give "
                              "one a different label")
        if self.weights is not None:
            if len(self.weights) != len(inputs):
                raise ConfigError(f"fusion: weights has {len(self.weights)} values for "
                                  f"{len(inputs)} inputs ({', '.join(labels)})")
            if any(w < 0 for w in self.weights):
                raise ConfigError(f"fusion: weights must be >= 0, got {self.weights}")
        return inputs

    def fit(self, train: TrainView) -> "FusionRetriever":
        from bench.registry import make_retriever
        inputs = self._inputs()
        fitted = []
        for i, spec in enumerate(inputs):
            if spec.name == self.name:
                raise ConfigError(f"fusion: inputs.{i} is a fusion; name its inputs instead")
            try:
                retriever = make_retriever(spec.name, spec.params)
            except ConfigError as exc:
                raise ConfigError(f"fusion: inputs.{i} ({spec.display}): {exc}") from None
            fitted.append(retriever.fit(train))
        self.retrievers_ = fitted
        self.input_labels_ = ",".join(x.display for x in inputs)
        self._lists: dict = {}  # (requests, depth) -> per-input runs; shared by with_params copies
        return self

    # -------------------------------------------------------------------------------- search
    def input_runs(self, requests: Sequence[Request]) -> list[Run]:
        """Every input's top ``depth`` for ``requests`` (cached for the last request batch)."""
        key = (tuple(requests), int(self.depth))
        if key not in self._lists:
            self._lists.clear()
            self._lists[key] = [r.search(list(requests), int(self.depth))
                                for r in self.retrievers_]
        return self._lists[key]

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top ``k`` fused stickers per request."""
        if not hasattr(self, "retrievers_"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        requests = list(requests)
        inputs = self._inputs()
        weights = self.weights if self.weights is not None else [x.weight for x in inputs]
        long = runs_frame(self.input_runs(requests), requests, int(self.depth))
        fused = fuse_frame(long, np.asarray(weights, dtype=np.float64), self.method,
                           self.normalize, float(self.rrf_k))
        return frame_to_run(fused, requests, int(k), self.name)


# ------------------------------------------------------------------------------------ fusion

def runs_frame(runs: Sequence[Run], requests: Sequence[Request], depth: int) -> pd.DataFrame:
    """Long table of the inputs' lists: req (position in ``requests``), inp (input position),
    rank (1-based), sticker_id, score; each list cut at ``depth``, repeated ids dropped."""
    rows_req, rows_inp, rows_rank, ids, scores = [], [], [], [], []
    for j, run in enumerate(runs):
        for i, req in enumerate(requests):
            ranked = run.results.get(req, [])[:depth]
            n = len(ranked)
            rows_req.append(np.full(n, i, dtype=np.int64))
            rows_inp.append(np.full(n, j, dtype=np.int64))
            rows_rank.append(np.arange(1, n + 1, dtype=np.int64))
            ids.extend(str(s) for s, _ in ranked)
            scores.extend(float(s) for _, s in ranked)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
    frame = pd.DataFrame({"req": cat(rows_req), "inp": cat(rows_inp), "rank": cat(rows_rank),
                          "sticker_id": pd.Series(ids, dtype=object),
                          "score": np.asarray(scores, dtype=np.float64)})
    return frame.drop_duplicates(["req", "inp", "sticker_id"], keep="first")


def normalized(frame: pd.DataFrame, how: str) -> np.ndarray:
    """Each input's scores normalised within each request's list (module doc)."""
    s = frame["score"]
    if how == "none":
        return s.to_numpy(dtype=np.float64)
    g = s.groupby([frame["req"], frame["inp"]], sort=False)
    if how == "min-max":
        lo, hi = g.transform("min"), g.transform("max")
        return ((s - lo) / np.maximum(hi - lo, EPS)).to_numpy(dtype=np.float64)
    if how == "z-score":
        mean, std = g.transform("mean"), g.transform("std", ddof=0).fillna(0.0)
        return ((s - mean) / np.maximum(std, EPS)).to_numpy(dtype=np.float64)
    raise ConfigError(f"fusion: normalize must be one of {', '.join(NORMALIZATIONS)}, got {how!r}")


def fuse_frame(frame: pd.DataFrame, weights: np.ndarray, method: str, normalize: str,
               rrf_k: float = 60.0) -> pd.DataFrame:
    """Fused scores: one row per (req, sticker_id) with ``score``, sorted by req, score
    (descending), sticker_id. ``weights``: one per input position."""
    if method not in METHODS:
        raise ConfigError(f"fusion: method must be one of {', '.join(METHODS)}, got {method!r}")
    frame = frame.sort_values(["req", "inp", "rank"], kind="stable")  # fixed summation order
    w = weights[frame["inp"].to_numpy()] if len(frame) else np.zeros(0)
    if method == "rrf":
        part = w / (rrf_k + frame["rank"].to_numpy(dtype=np.float64))
    else:
        part = w * normalized(frame, normalize)
    contrib = pd.DataFrame({"req": frame["req"].to_numpy(),
                            "sticker_id": frame["sticker_id"].to_numpy(), "part": part})
    g = contrib.groupby(["req", "sticker_id"], sort=False)["part"]
    out = g.sum().rename("score").reset_index()
    if method == "combmnz":
        out["score"] = out["score"].to_numpy() * g.size().to_numpy()
    return out.sort_values(["req", "score", "sticker_id"], ascending=[True, False, True],
                           kind="stable").reset_index(drop=True)


def frame_to_run(fused: pd.DataFrame, requests: Sequence[Request], k: int, name: str) -> Run:
    """The top ``k`` of each request's fused rows as a :class:`Run` (every request present)."""
    run = Run(name=name)
    reqs = fused["req"].to_numpy()
    ids = fused["sticker_id"].to_numpy(dtype=object)
    scores = fused["score"].to_numpy(dtype=np.float64)
    starts = np.searchsorted(reqs, np.arange(len(requests) + 1))
    for i, req in enumerate(requests):
        a, e = int(starts[i]), min(int(starts[i + 1]), int(starts[i]) + max(0, k))
        run[req] = list(zip(ids[a:e].tolist(), scores[a:e].tolist()))
    return run
