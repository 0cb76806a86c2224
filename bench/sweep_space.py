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

Parameter names are the retriever's constructor parameters (:func:`bench.retrieval.param_specs`)
or ``features.encoder`` / ``features.encoder_params.<name>``. Optuna sees a conditional parameter
under a name of its own per branch (``kmeans.n_clusters``, ``hdbscan.min_cluster_size``), as
Optuna's docs advise for define-by-run conditional spaces, and it is mapped back to the retriever
parameter (``n_clusters``). Choices may be any YAML values: lists and mappings reach Optuna as
their JSON text and come back as the values. ``grid: [...]`` on an int/float range lists the
points ``--sampler grid`` tries (int ranges default to every step; float ranges must list them).

Every mistake is a :class:`~bench.errors.ConfigError` naming the file and key, e.g.
``sweeps/x.yaml: params.cluster_algorithm.conditional.dbscan: not one of the choices``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.errors import ConfigError

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


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _fmt(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) \
        else value


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
    def check_names(self, retriever: str, allowed: Iterable[str]) -> None:
        """Every parameter must be one of ``allowed`` (the retriever's constructor parameters)
        or a ``features.encoder`` / ``features.encoder_params.*`` key."""
        import difflib
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
                close = difflib.get_close_matches(spec.name, allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{self.source}: {spec.where}: unknown parameter "
                                  f"{spec.name!r}: retriever {retriever!r} has no such "
                                  f"parameter.{hint} Parameters: {', '.join(sorted(allowed))}")


# ------------------------------------------------------------------------------------ parsing

def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space YAML file."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_space(raw, source=str(p))


def parse_space(raw: Any, source: str = "space") -> SearchSpace:
    """Validate a space mapping; every error names ``source`` and the offending key."""
    from bench.metrics import METRICS

    def fail(msg: str):
        raise ConfigError(f"{source}: {msg}")

    if not isinstance(raw, dict):
        fail(f"expected a mapping at the top level, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            fail(f"unknown key {key!r} (expected {', '.join(TOP_KEYS)})")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        fail("params: expected a non-empty mapping of parameter -> distribution")
    metric = raw.get("metric", "m_mrr")
    k = raw.get("k", 20)
    if isinstance(metric, str) and "_at_" in metric:
        metric, _, k_text = metric.rpartition("_at_")
        if not k_text.isdigit():
            fail(f"metric: {raw['metric']!r} is not <metric>_at_<k>")
        if "k" in raw and int(k_text) != raw["k"]:
            fail(f"metric: {raw['metric']!r} disagrees with k: {raw['k']}")
        k = int(k_text)
    if metric not in METRICS:
        fail(f"metric: unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        fail(f"k: expected a positive integer, got {k!r}")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        fail(f"direction: expected maximize or minimize, got {direction!r}")
    sampler = raw.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        fail(f"sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    n_trials = raw.get("n_trials")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int)
                                 or n_trials < 1):
        fail(f"n_trials: expected a positive integer, got {n_trials!r}")
    retriever = raw.get("retriever")
    if retriever is not None and not isinstance(retriever, str):
        fail(f"retriever: expected a retriever label or name, got {retriever!r}")

    specs = _parse_params(params, "params", "", (), fail)
    space = SearchSpace(params=specs, retriever=retriever, metric=metric, k=k,
                        direction=direction, sampler=sampler, n_trials=n_trials,
                        description=raw.get("description"), source=source, raw=raw)
    _check_conflicts(space, fail)
    return space


def _parse_params(params: dict, where: str, prefix: str, branch: tuple, fail
                  ) -> tuple[ParamSpec, ...]:
    out = []
    for name, body in params.items():
        if not isinstance(name, str) or not name.strip():
            fail(f"{where}: parameter names must be non-empty strings, got {name!r}")
        out.append(_parse_one(name.strip(), body, f"{where}.{name}", prefix, branch, fail))
    return tuple(out)


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float))


def _parse_one(name: str, body: Any, where: str, prefix: str, branch: tuple, fail) -> ParamSpec:
    optuna_name = f"{prefix}{name}"
    if isinstance(body, list):
        fail(f"{where}: write {{choices: [...]}} for a choice or {{value: [...]}} for a fixed "
             "list")
    if not isinstance(body, dict):  # a bare scalar is a fixed value
        return ParamSpec(name, optuna_name, "value", where, value=body, branch=branch)
    kinds = [k for k in body if k in DISTRIBUTIONS]
    if not kinds:
        unknown = next(iter(body), None)
        fail(f"{where}: unknown distribution keyword {unknown!r} (expected one of "
             f"{', '.join(DISTRIBUTIONS)})" if unknown is not None else
             f"{where}: empty distribution (expected one of {', '.join(DISTRIBUTIONS)})")
    if len(kinds) > 1:
        fail(f"{where}: give one distribution, got {', '.join(kinds)}")
    kind = kinds[0]
    for key in body:
        if key != kind and key not in OPTIONS[kind]:
            allowed = sorted(OPTIONS[kind])
            fail(f"{where}: unknown distribution keyword {key!r} for {kind} (allowed: "
                 f"{', '.join(allowed) or 'none'})")
    arg = body[kind]
    if kind == "value":
        return ParamSpec(name, optuna_name, "value", where, value=arg, branch=branch)
    if kind in ("int", "float"):
        integer = kind == "int"
        if not (isinstance(arg, list) and len(arg) == 2 and all(_number(v, integer) for v in arg)):
            fail(f"{where}.{kind}: expected [low, high] {'integers' if integer else 'numbers'}, "
                 f"got {arg!r}")
        low, high = (int(v) for v in arg) if integer else (float(v) for v in arg)
        if low > high:
            fail(f"{where}.{kind}: empty range [{arg[0]}, {arg[1]}] (low > high)")
        log = body.get("log", False)
        if not isinstance(log, bool):
            fail(f"{where}.log: expected true or false, got {log!r}")
        step = body.get("step")
        if step is not None:
            if not _number(step, integer) or step <= 0:
                fail(f"{where}.step: expected a positive {'integer' if integer else 'number'}, "
                     f"got {step!r}")
            if log and (not integer or step != 1):
                fail(f"{where}: log and step cannot be combined")
            step = int(step) if integer else float(step)
        if log and low <= 0:
            fail(f"{where}.log: a log range needs low > 0, got {arg[0]}")
        grid = body.get("grid")
        if grid is not None:
            if not isinstance(grid, list) or not grid or \
                    not all(_number(v, integer) and low <= v <= high for v in grid):
                fail(f"{where}.grid: expected a non-empty list of {kind}s in [{low}, {high}], "
                     f"got {grid!r}")
            grid = tuple(dict.fromkeys(int(v) if integer else float(v) for v in grid))
        return ParamSpec(name, optuna_name, kind, where, low=low, high=high, step=step, log=log,
                         grid=grid, branch=branch)
    # choices
    if not isinstance(arg, list):
        fail(f"{where}.choices: expected a list, got {arg!r}")
    if not arg:
        fail(f"{where}.choices: empty choices")
    if all(_primitive(c) for c in arg):
        labels = tuple(arg)
    else:
        labels = tuple(c if _primitive(c) else json.dumps(c, sort_keys=True, ensure_ascii=False)
                       for c in arg)
    seen = set()
    for lab in labels:
        key = (type(lab).__name__, lab)
        if key in seen:
            fail(f"{where}.choices: duplicate choice {lab!r}")
        seen.add(key)
    conditional: dict[Any, tuple[ParamSpec, ...]] = {}
    cond = body.get("conditional")
    if cond is not None:
        if not isinstance(cond, dict):
            fail(f"{where}.conditional: expected a mapping choice -> parameters")
        for key, sub in cond.items():
            label = _match_choice(key, arg, labels)
            if label is _NO_MATCH:
                fail(f"{where}.conditional.{key}: {key!r} is not one of the choices "
                     f"[{', '.join(_fmt(c) for c in arg)}]")
            if sub is None:
                continue
            if not isinstance(sub, dict):
                fail(f"{where}.conditional.{key}: expected a mapping of parameter -> "
                     "distribution")
            conditional[label] = _parse_params(
                sub, f"{where}.conditional.{key}", f"{prefix}{_label_text(label)}.",
                branch + ((optuna_name, label),), fail)
    return ParamSpec(name, optuna_name, "choices", where, choices=tuple(arg), labels=labels,
                     conditional=conditional, branch=branch)


_NO_MATCH = object()


def _label_text(label: Any) -> str:
    return label if isinstance(label, str) else json.dumps(label)


def _match_choice(key: Any, choices: list, labels: tuple) -> Any:
    for choice, label in zip(choices, labels):
        if key == choice and type(key) is type(choice):
            return label
    for choice, label in zip(choices, labels):
        if key == choice or str(key) == str(label) or str(key) == _label_text(label):
            return label
    return _NO_MATCH


def _possible(spec: ParamSpec) -> set[str]:
    """Every parameter name ``spec`` may set (its own and its branches')."""
    out = {spec.name}
    for branch in spec.conditional.values():
        for sub in branch:
            out |= _possible(sub)
    return out


def _check_conflicts(space: SearchSpace, fail) -> None:
    """Optuna names are unique, and no parameter can be set twice in one trial: parameters of
    one list (the top level or a branch) are active together, so what they may set must not
    overlap, and a choice's branches must not set the choice itself. Sibling branches of one
    choice are exclusive, so they may share a parameter (``n_clusters`` for kmeans and gmm)."""
    seen_optuna: dict[str, str] = {}
    for spec in space.walk():
        if spec.kind == "value":
            continue
        if spec.optuna_name in seen_optuna:
            fail(f"{spec.where}: Optuna name {spec.optuna_name!r} is also used by "
                 f"{seen_optuna[spec.optuna_name]}; rename a choice")
        seen_optuna[spec.optuna_name] = spec.where

    def check_list(specs: tuple[ParamSpec, ...]) -> None:
        owner: dict[str, str] = {}
        for spec in specs:
            for name in _possible(spec):
                if name in owner:
                    fail(f"{spec.where}: parameter {name!r} can also be set by {owner[name]}")
                owner[name] = spec.where
            for label, branch in spec.conditional.items():
                for sub in branch:
                    if spec.name in _possible(sub):
                        fail(f"{sub.where}: a branch of {spec.name!r} cannot set "
                             f"{spec.name!r} again")
                check_list(branch)
    check_list(space.params)
