"""Per-process state of a sweep worker (:class:`SweepSession`) and the retriever a space tunes.

Work done once per process and reused by every trial: the dataset, splits and offline features
(:func:`bench.runner.prepare`), and the fitted base retriever. A retriever with ``with_params``
(PerSRV) is fitted once and each trial calls ``base.with_params(**trial_params)``, which reuses
the BM25 index and the recall cache and only re-clusters / re-ranks what the trial changes; any
other retriever is constructed and fitted per trial. A trial that changes ``features.encoder``
(or ``features.encoder_params.*``) gets that encoder's embeddings once per process (from the
on-disk feature cache after the first time) and its own fitted base.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from bench.config import ExperimentConfig, RetrieverSpec
from bench.errors import ConfigError
from bench.sweep.space import SearchSpace


def resolve_target(space: SearchSpace, cfg: ExperimentConfig) -> RetrieverSpec:
    """The retriever a space tunes: a configured label, else the one configured retriever of that
    registered name, else the registered name with no base params; without ``retriever:`` the
    config's only retriever, or the one labelled persrv."""
    from bench.registry import registry
    labels = {s.display: s for s in cfg.retrievers}
    name = space.retriever
    if name is None:
        if len(cfg.retrievers) == 1:
            return cfg.retrievers[0]
        if "persrv" in labels:
            return labels["persrv"]
        raise ConfigError(f"{space.source}: no `retriever:`; name one of the config's "
                          f"retrievers ({', '.join(labels)}) or a registered retriever")
    if name in labels:
        return labels[name]
    same = [s for s in cfg.retrievers if s.name == name]
    if len(same) == 1:  # configured under another label: keep its base parameters
        return same[0]
    if name in registry():
        return RetrieverSpec(name=name)
    raise ConfigError(f"{space.source}: retriever: {name!r} is neither a retriever of the "
                      f"experiment config ({', '.join(labels)}) nor a registered retriever "
                      f"({', '.join(registry())})")


class SweepSession:
    """Per-process state shared by every trial: data, features per encoder, fitted bases."""

    def __init__(self, cfg: ExperimentConfig, spec: RetrieverSpec, ks: list[int], depth: int):
        from bench.registry import get_retriever_class
        from bench.runner import prepare
        self.cfg = cfg
        self.spec = spec
        self.cls = get_retriever_class(spec.name)
        self.ks = ks
        self.depth = depth
        self.val_cfg = cfg.model_copy(update={"eval_split": "validation"})
        self.ds, self.splits, self.requests, self.view, self.feature_report = prepare(self.val_cfg)
        from bench.listing import FillOrder
        self.fill_order = FillOrder.from_view(self.view.stickers, self.view.clicks)
        self._resolved_encoder = (self.feature_report or {}).get("encoder")
        self._views: dict[str, Any] = {self._features_key({}): self.view}
        self._bases: dict[str, Any] = {}
        self.base_fits = 0

    # -------------------------------------------------------------------------- features
    def _effective_features(self, overrides: dict[str, Any]) -> dict[str, Any]:
        feats = copy.deepcopy(self.cfg.features.raw())
        for key, value in overrides.items():
            if key == "encoder_params":
                merged = dict(feats.get("encoder_params") or {})
                merged.update(value)
                feats["encoder_params"] = merged
            else:
                feats[key] = value
        return feats

    def _features_key(self, overrides: dict[str, Any]) -> str:
        """The features a view is built with, normalised: defaults filled in, and ``auto``
        replaced by the encoder it resolved to for this dataset, so a trial asking for the
        encoder the config already uses gets the shared base view and base retriever."""
        from bench.features.config import FeaturesConfig
        feats = self._effective_features(overrides)
        try:
            norm = FeaturesConfig.model_validate(feats).model_dump(mode="json")
        except Exception:
            norm = feats
        if norm.get("encoder") == "auto":
            norm["encoder"] = self._resolved_encoder
        return json.dumps(norm, sort_keys=True, default=str)

    def view_for(self, overrides: dict[str, Any], base_view=None, ds=None):
        """A TrainView with the features of ``overrides`` (embeddings from the cache after the
        first time; one view per encoder setting per process)."""
        from bench.retrieval import leak_safe_view
        from bench.runner import attach_configured_features
        base_view = base_view or self.view
        ds = ds or self.ds
        key = self._features_key(overrides)
        if base_view is self.view and key in self._views:
            return self._views[key]
        if key == self._features_key({}):
            return base_view
        stickers, embeddings, _ = attach_configured_features(ds, self._effective_features(
            overrides))
        view = leak_safe_view(stickers, base_view.clicks, meta=base_view.meta,
                              root=base_view.root, embeddings=embeddings, cache=base_view.cache,
                              seed=base_view.seed)
        if base_view is self.view:
            self._views[key] = view
        return view

    # ------------------------------------------------------------------------ retrievers
    def retriever(self, rparams: dict[str, Any], features: dict[str, Any]):
        from bench.registry import make_retriever
        view = self.view_for(features)
        from bench.registry import supports_with_params
        if supports_with_params(self.cls):
            key = self._features_key(features)
            base = self._bases.get(key)
            if base is None:
                base = make_retriever(self.spec.name, dict(self.spec.params))
                base.fit(view)
                self.base_fits += 1
                self._bases[key] = base
            return base.with_params(**rparams) if rparams else base  # a fitted copy
        retriever = make_retriever(self.spec.name, {**self.spec.params, **rparams})
        retriever.fit(view)
        return retriever

    def evaluate(self, rparams: dict[str, Any], features: dict[str, Any]) -> dict[str, float]:
        """Macro metrics on the validation requests, through the one evaluation loop (same list
        length, order and tie rules as ``run``)."""
        from bench.eval_loop import EvalSettings, evaluate
        retriever = self.retriever(rparams, features)
        settings = EvalSettings(ks=tuple(self.ks), depth=max(1, min(self.depth,
                                                                     len(self.view.stickers))),
                                batch_size=self.cfg.batch_size, fill=self.cfg.evaluation.fill)
        return evaluate(retriever, self.view_for(features), self.requests, settings,
                        self.fill_order, fit=False, name=self.spec.display).scored.macro
