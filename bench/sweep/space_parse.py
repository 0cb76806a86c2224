"""Reading and validating a search-space YAML file into a :class:`~bench.sweep.space.SearchSpace`
(the format is described in :mod:`bench.sweep.space`). Every mistake is a
:class:`~bench.errors.ConfigError` naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.sweep.space import (
    DISTRIBUTIONS,
    OPTIONS,
    SAMPLERS,
    TOP_KEYS,
    ParamSpec,
    SearchSpace,
)


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _fmt(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) \
        else value


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space YAML file."""
    from bench.yaml_load import safe_yaml_load
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    raw = safe_yaml_load(text, str(p))  # size, aliases, depth, duplicate keys
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
    if kind == "value":
        return ParamSpec(name, optuna_name, "value", where, value=body[kind], branch=branch)
    if kind in ("int", "float"):
        return _parse_range(name, optuna_name, kind, body, where, branch, fail)
    return _parse_choices(name, optuna_name, body, where, prefix, branch, fail)


def _parse_range(name: str, optuna_name: str, kind: str, body: dict, where: str, branch: tuple,
                 fail) -> ParamSpec:
    """``{int: [low, high]}`` / ``{float: [low, high]}`` with ``step``, ``log``, ``grid``."""
    arg = body[kind]
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


def _parse_choices(name: str, optuna_name: str, body: dict, where: str, prefix: str,
                   branch: tuple, fail) -> ParamSpec:
    """``{choices: [...], conditional: {choice: {param: distribution}}}``."""
    arg = body["choices"]
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
