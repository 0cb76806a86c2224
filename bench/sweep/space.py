"""Optuna search spaces as YAML (``sweeps/*.yaml``): parsing, validation, sampling, grids.

A space file::

    retriever: persrv      # a configured retriever's label, else a registered retriever name
    metric: m_mrr          # m_mrr | mrr | recall | ndcg (or a full name such as m_mrr_at_20)
    k: 20                  # the cutoff of the objective (macro over users, validation split)
    direction: maximize    # or minimize
    sampler: tpe           # optional default for --sampler: tpe | random | grid
    n_trials: 50           # optional default for --n-trials
    params:
      rerank_weight: {float: [0.0, 1.0]}            # + log: true, step: 0.1
      n_clusters:    {int: [1, 20]}                 # + step: 2, log: true
      rerank_mode:   {choices: [multiply, sum]}
      pool:          {value: 2000}                  # fixed (a bare scalar works too: pool: 2000)
      cluster_algorithm:
        choices: [kmeans, hdbscan]
        conditional:                                # parameters that exist for one choice only
          kmeans:  {n_clusters: {int: [1, 20]}}
          hdbscan: {min_cluster_size: {int: [2, 10]}}
      features.encoder: {choices: [style-stats]}    # offline-feature parameters
      features.encoder_params.size: {choices: [32, 64]}

Parameter names are the retriever's constructor parameters (:func:`bench.registry.param_specs`)
or ``features.encoder`` / ``features.encoder_params.<name>``. Optuna sees a conditional parameter
under a name of its own per branch (``kmeans.n_clusters``, ``hdbscan.min_cluster_size``), as
Optuna's docs advise for define-by-run conditional spaces, and it is mapped back to the retriever
parameter (``n_clusters``). Choices may be any YAML values: lists and mappings reach Optuna as
their JSON text and come back as the values. ``grid: [...]`` on an int/float range lists the
points ``--sampler grid`` tries (int ranges default to every step; float ranges must list them).

Every mistake is a :class:`~bench.errors.ConfigError` naming the file and key, e.g.
``sweeps/x.yaml: params.cluster_algorithm.conditional.dbscan: not one of the choices``.
This module holds the validated types; :mod:`bench.sweep.space_parse` reads and checks the YAML.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.errors import ConfigError, closest

DISTRIBUTIONS = ("int", "float", "choices", "value")
OPTIONS = {"int": {"step", "log", "grid"}, "float": {"step", "log", "grid"},
           "choices": {"conditional"}, "value": set()}
TOP_KEYS = ("retriever", "metric", "k", "direction", "sampler", "n_trials", "params",
            "description")
SAMPLERS = ("tpe", "random", "grid")
FEATURE_PREFIX = "features."
FEATURE_PARAMS = ("features.encoder",)
FEATURE_PARAM_PREFIXES = ("features.encoder_params.",)
#: The largest grid ``--sampler grid`` enumerates.
MAX_GRID = 1_000_000


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a space: its target (retriever parameter or ``features.*`` key), the
    Optuna name (branch-prefixed when conditional), the distribution and, for choices, the
    parameters that exist only for one choice."""

    name: str
    optuna_name: str
    kind: str
    where: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    grid: tuple | None = None
    choices: tuple = ()
    labels: tuple = ()
    value: Any = None
    conditional: dict = field(default_factory=dict)  # label -> tuple[ParamSpec, ...]
    branch: tuple = ()  # ((choice param, label), ...) that must hold for this one to exist

    # -------------------------------------------------------------------------- optuna
    def distribution(self):
        import optuna.distributions as d
        if self.kind == "int":
            return d.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "choices":
            return d.CategoricalDistribution(list(self.labels))
        raise ValueError(f"{self.where}: a fixed value has no distribution")

    def suggest(self, trial) -> Any:
        """The Optuna label this trial picks (define-by-run)."""
        if self.kind == "int":
            return trial.suggest_int(self.optuna_name, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.optuna_name, self.low, self.high, step=self.step,
                                       log=self.log)
        return trial.suggest_categorical(self.optuna_name, list(self.labels))

    def decode(self, label: Any) -> Any:
        """Optuna label -> the parameter value."""
        if self.kind == "choices":
            for lab, choice in zip(self.labels, self.choices):
                if lab == label and type(lab) is type(label):
                    return choice
            for lab, choice in zip(self.labels, self.choices):
                if lab == label:
                    return choice
            raise KeyError(f"{self.where}: {label!r} is not one of the choices")
        if self.kind == "int":
            return int(label)
        if self.kind == "float":
            return float(label)
        return label

    def grid_labels(self) -> list:
        if self.kind == "choices":
            return list(self.labels)
        if self.grid is not None:
            return list(self.grid)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        raise ConfigError(f"{self.where}: --sampler grid needs the points of a float range: add "
                          f"grid: [...] (values in [{self.low}, {self.high}])")


@dataclass
class SearchSpace:
    """A validated search space (see the module doc)."""

    params: tuple[ParamSpec, ...]
    retriever: str | None = None
    metric: str = "m_mrr"
    k: int = 20
    direction: str = "maximize"
    sampler: str | None = None
    n_trials: int | None = None
    description: str | None = None
    source: str = "space"
    raw: dict = field(default_factory=dict)

    @property
    def objective_name(self) -> str:
        """The metric optimised: ``m_mrr_at_20``."""
        return f"{self.metric}_at_{self.k}"

    def walk(self, specs: Iterable[ParamSpec] | None = None) -> Iterable[ParamSpec]:
        """Every parameter, conditional ones included, depth first."""
        for spec in self.params if specs is None else specs:
            yield spec
            for branch in spec.conditional.values():
                yield from self.walk(branch)

    @property
    def has_conditional(self) -> bool:
        return any(s.conditional for s in self.params)

    def by_optuna_name(self) -> dict[str, ParamSpec]:
        return {s.optuna_name: s for s in self.walk() if s.kind != "value"}

    def targets(self) -> set[str]:
        return {s.name for s in self.walk()}

    def retriever_targets(self) -> set[str]:
        return {n for n in self.targets() if not n.startswith(FEATURE_PREFIX)}

    def fingerprint(self) -> str:
        """A hash of what the space searches (not of comments or defaults for the CLI)."""
        body = {k: v for k, v in self.raw.items() if k not in ("description", "n_trials",
                                                               "sampler")}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str)
                              .encode()).hexdigest()[:12]

    # ------------------------------------------------------------------------- sampling
    def resolve(self, pick: Callable[[ParamSpec], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Walk the space, ``pick(spec)`` giving each active parameter's Optuna label; returns
        ``(retriever params, features overrides)``."""
        rparams: dict[str, Any] = {}
        features: dict[str, Any] = {}

        def assign(name: str, value: Any) -> None:
            if name.startswith(FEATURE_PREFIX):
                parts = name[len(FEATURE_PREFIX):].split(".", 1)
                if len(parts) == 2:
                    features.setdefault(parts[0], {})[parts[1]] = value
                else:
                    features[parts[0]] = value
            else:
                rparams[name] = value

        def visit(specs: Iterable[ParamSpec]) -> None:
            for spec in specs:
                if spec.kind == "value":
                    assign(spec.name, spec.value)
                    continue
                label = pick(spec)
                assign(spec.name, spec.decode(label))
                branch = spec.conditional.get(label)
                if branch:
                    visit(branch)
        visit(self.params)
        return rparams, features

    def suggest(self, trial) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sample one trial's parameters (define-by-run): (retriever params, features)."""
        return self.resolve(lambda spec: spec.suggest(trial))

    def from_optuna(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A finished trial's ``params`` (Optuna names) -> (retriever params, features)."""
        def pick(spec: ParamSpec) -> Any:
            if spec.optuna_name not in params:
                raise KeyError(f"trial has no value for {spec.optuna_name!r}")
            return params[spec.optuna_name]
        return self.resolve(pick)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid as Optuna params (conditional branches expanded only under
        their own choice, so no two points differ in inactive parameters only)."""
        def expand(specs: tuple[ParamSpec, ...]) -> list[dict[str, Any]]:
            per_spec: list[list[dict[str, Any]]] = []
            for spec in specs:
                if spec.kind == "value":
                    continue
                options: list[dict[str, Any]] = []
                for label in spec.grid_labels():
                    branch = spec.conditional.get(label) if spec.kind == "choices" else None
                    for sub in (expand(branch) if branch else [{}]):
                        options.append({spec.optuna_name: label, **sub})
                per_spec.append(options)
            total = math.prod(len(o) for o in per_spec) if per_spec else 1
            if total > MAX_GRID:
                raise ConfigError(f"{self.source}: the grid has {total} points (more than "
                                  f"{MAX_GRID}); narrow the ranges or use --sampler tpe")
            out = []
            for combo in itertools.product(*per_spec):
                point: dict[str, Any] = {}
                for part in combo:
                    point.update(part)
                out.append(point)
            return out
        return expand(self.params)

    # ----------------------------------------------------------------------- validation
    def check_values(self, retriever_cls: type, base: dict[str, Any]) -> None:
        """Every value the space can give a retriever parameter — each choice, a range's ends,
        its grid points — must pass the retriever's declaration (type, range, choices), with
        the experiment's ``base`` parameters and the choices a conditional parameter lives
        under; otherwise a one-line ConfigError naming the space entry, before any trial."""
        from bench.params import supports_with_params, validate_params
        if not supports_with_params(retriever_cls):
            return
        for spec in self.walk():
            if spec.name.startswith(FEATURE_PREFIX):
                continue
            if spec.kind == "choices":
                values = list(spec.choices)
            elif spec.kind in ("int", "float"):
                values = [spec.low, spec.high, *(spec.grid or ())]
            else:
                values = [spec.value]
            context = {name: value for name, value in
                       ((self._spec_named(n).name, self._spec_named(n).decode(lab))
                        for n, lab in spec.branch) if not name.startswith(FEATURE_PREFIX)}
            for value in values:
                try:
                    validate_params(retriever_cls, {**base, **context, spec.name: value})
                except ConfigError as exc:
                    raise ConfigError(f"{self.source}: {spec.where}: {spec.name}={value!r} is "
                                      f"not a valid value ({exc})") from None

    def _spec_named(self, optuna_name: str) -> ParamSpec:
        return self.by_optuna_name()[optuna_name]

    def check_names(self, retriever: str, allowed: Iterable[str]) -> None:
        """Every parameter must be one of ``allowed`` (the retriever's constructor parameters)
        or a ``features.encoder`` / ``features.encoder_params.*`` key."""
        allowed = set(allowed)
        for spec in self.walk():
            if spec.name.startswith(FEATURE_PREFIX):
                if spec.name in FEATURE_PARAMS or (
                        spec.name.startswith(FEATURE_PARAM_PREFIXES)
                        and len(spec.name) > len(FEATURE_PARAM_PREFIXES[0])):
                    continue
                raise ConfigError(f"{self.source}: {spec.where}: unknown parameter "
                                  f"{spec.name!r}; the tunable feature parameters are "
                                  "features.encoder and features.encoder_params.<name>")
            if spec.name not in allowed:
                close = closest(spec.name, allowed)
                hint = f" Did you mean {close!r}?" if close else ""
                raise ConfigError(f"{self.source}: {spec.where}: unknown parameter "
                                  f"{spec.name!r}: retriever {retriever!r} has no such "
                                  f"parameter.{hint} Parameters: {', '.join(sorted(allowed))}")
