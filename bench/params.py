"""Retriever parameters, declared once (issue 25).

A retriever declares its parameters as one typed model, a nested ``Params`` class::

    @register("my-retriever")
    class MyRetriever(Configurable):
        class Params(RetrieverParams):
            alpha: float = param(0.5, ge=0, le=1, refit="search", description="mixing weight")
            fields: list[str] | str = param("all", refit="fit")

        def fit(self, train): ...          # reads self.alpha, self.fields
        def search(self, requests, k): ...

From that one declaration come: the constructor (``MyRetriever(alpha=0.2)`` validates and sets
one attribute per parameter), the defaults and descriptions ``persrv-bench retrievers`` prints,
validation before any work (types are strict: ``"0.5"`` is not a float, ``2.5`` not an int,
``"false"`` not a bool; NaN and infinities are refused), the flat names sweeps and MLflow use
(the field names), and the refit group of each parameter that ``with_params`` relies on:

- ``"search"``: only changes how a fitted retriever answers; the fitted state is reused;
- ``"fit"`` (default): the retriever must be fitted again.

A retriever whose fit has parts may name finer groups in ``Params.REFIT_GROUPS`` (PerSRV:
``index``, ``boosts``, ``recall``, ``utility``, ``clusters``, ``threads``) and refine
``with_params`` to refit only those parts, but the group a parameter belongs to is always read
from its declaration (:meth:`RetrieverParams.in_group`), never from a hand-kept list.

``with_params`` is part of the declared interface (:func:`supports_with_params`): on a fitted
retriever it returns a fitted copy (refitted on the same :class:`~bench.retrieval.TrainView`
when a non-``search`` parameter changed), so ``r.with_params(p=v)`` ranks exactly as a fresh
``fit`` with ``p=v`` (``tests/test_params.py`` checks every parameter of every retriever).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import ConfigError, closest

REFIT_GROUPS = ("search", "fit")


def param(default: Any, *, refit: str = "fit", description: str | None = None,
          **constraints: Any) -> Any:
    """A declared parameter: its default, the refit group a change needs (:data:`REFIT_GROUPS`),
    a one-line description and pydantic constraints (``ge``, ``gt``, ``le``, ``lt``, ...)."""
    if not isinstance(refit, str) or not refit.isidentifier():
        raise ValueError(f"refit must be a group name such as {', '.join(REFIT_GROUPS)}, "
                         f"got {refit!r}")
    return Field(default, description=description, json_schema_extra={"refit": refit},
                 **constraints)


class RetrieverParams(BaseModel):
    """Base of every retriever's ``Params``: unknown names, loose types and non-finite numbers
    are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              validate_default=True)

    #: The refit groups this retriever's parameters may name (``search`` and ``fit`` always).
    REFIT_GROUPS: ClassVar[tuple[str, ...]] = REFIT_GROUPS

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        allowed = set(cls.REFIT_GROUPS) | set(REFIT_GROUPS)
        for name in cls.model_fields:
            group = cls.refit_group(name)
            if group not in allowed:
                raise TypeError(f"{cls.__qualname__}.{name}: refit group {group!r} is not in "
                                f"REFIT_GROUPS ({', '.join(sorted(allowed))})")

    @classmethod
    def in_group(cls, group: str) -> frozenset[str]:
        """The names of the parameters declared in refit ``group``."""
        return frozenset(n for n in cls.model_fields if cls.refit_group(n) == group)

    @classmethod
    def refit_group(cls, name: str) -> str:
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("refit", "fit") if isinstance(extra, dict) else "fit"

    @classmethod
    def names(cls) -> list[str]:
        return list(cls.model_fields)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {n: f.get_default(call_default_factory=True) for n, f in cls.model_fields.items()}


def _shown(value: Any) -> str:
    shown = repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _one_line(retriever: str, exc: ValidationError) -> str:
    """One line naming each bad parameter, its value and what is allowed; a union's branches
    (``list[str] | str``) are folded into one entry."""
    by_name: dict[str, list[dict]] = {}
    for err in exc.errors():
        loc = err.get("loc", ())
        by_name.setdefault(str(loc[0]) if loc else "params", []).append(err)
    parts = []
    for name, errs in by_name.items():
        err = errs[0]
        if err.get("type") == "extra_forbidden":
            parts.append(f"no parameter {name!r}")
        elif len(errs) > 1 and all(len(e.get("loc", ())) > 1 for e in errs):
            kinds = " or ".join(str(e["loc"][1]) for e in errs)
            parts.append(f"{name}={_shown(err.get('input'))}: expected {kinds}")
        else:
            parts.append(f"{name}={_shown(err.get('input'))}: {err.get('msg', 'invalid')}")
    return f"retriever {retriever!r}: " + "; ".join(parts)


def validate_params(cls: type, params: dict[str, Any]) -> RetrieverParams:
    """``cls.Params(**params)``, or a one-line :class:`ConfigError` naming each bad key, its value
    and what is allowed (with a did-you-mean for an unknown name)."""
    model = cls.Params
    name = getattr(cls, "name", cls.__name__)
    unknown = [k for k in params if k not in model.model_fields]
    if unknown:
        key = unknown[0]
        close = closest(key, model.model_fields)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ConfigError(f"retriever {name!r} has no parameter {key!r}.{hint} "
                          f"Parameters: {', '.join(model.model_fields) or '(none)'}")
    try:
        return model(**params)
    except ValidationError as exc:
        raise ConfigError(_one_line(name, exc)) from None


def with_defaults(params: type[RetrieverParams], **defaults: Any) -> type[RetrieverParams]:
    """A subclass of ``params`` whose listed parameters have other defaults (type, constraints,
    refit group and description kept): presets such as PerSRV's ablations."""
    from pydantic import create_model
    unknown = [k for k in defaults if k not in params.model_fields]
    if unknown:
        raise TypeError(f"{params.__qualname__} has no parameter(s) {', '.join(unknown)}")
    fields = {}
    for name, value in defaults.items():
        info = copy.copy(params.model_fields[name])
        info.default = value
        fields[name] = (params.model_fields[name].annotation, info)
    return create_model(params.__name__, __base__=params, __module__=params.__module__,
                        **fields)


def _remember_view(fit):
    """Wrap a retriever's ``fit`` so that ``with_params`` can refit on the same view."""
    @functools.wraps(fit)
    def wrapper(self, train, *args, **kwargs):
        out = fit(self, train, *args, **kwargs)
        self._fit_view = train
        return out
    wrapper._remembers_view = True
    return wrapper


class Configurable:
    """Mixin giving a retriever its constructor, ``get_params`` and a generic ``with_params``
    from its declared ``Params``."""

    Params: ClassVar[type[RetrieverParams]] = RetrieverParams
    name: ClassVar[str] = "retriever"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is not None and not getattr(fit, "_remembers_view", False):
            cls.fit = _remember_view(fit)

    def __init__(self, **params: Any):
        self._set_params(validate_params(type(self), params))

    def _set_params(self, validated: RetrieverParams) -> None:
        self.params = validated
        for pname in type(validated).model_fields:
            setattr(self, pname, getattr(validated, pname))

    def get_params(self) -> dict[str, Any]:
        return self.params.model_dump()

    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def changed_params(self, changes: dict[str, Any]) -> tuple[RetrieverParams, set[str]]:
        """(the validated parameters with ``changes`` applied, the names whose value differs)."""
        validated = validate_params(type(self), {**self.params.model_dump(), **changes})
        changed = {k for k in changes if getattr(self.params, k) != getattr(validated, k)}
        return validated, changed

    def fitted_view(self):
        """The :class:`~bench.retrieval.TrainView` of the last ``fit`` (None before fit)."""
        return self.__dict__.get("_fit_view")

    def with_params(self, **changes: Any) -> "Configurable":
        """A copy with ``changes`` applied, fitted when this one is. When every changed
        parameter is in the ``search`` group the fitted state is shared; otherwise the copy is
        fitted again on the same view (an unfitted retriever gives an unfitted copy)."""
        validated, changed = self.changed_params(changes)
        if not changed:
            return self
        if all(self.Params.refit_group(k) == "search" for k in changed):
            new = copy.copy(self)
            new._set_params(validated)
            return new
        new = type(self)(**validated.model_dump())
        view = self.fitted_view()
        if view is None and self.is_fitted():
            raise RuntimeError(f"{self.name}: fitted without remembering its view (fit replaced "
                               "after the class was made?); fit the copy yourself")
        return new.fit(view) if view is not None else new

    def needs_fit_after(self, changes: dict[str, Any]) -> bool:
        """True when changing ``changes`` needs a new ``fit`` (any non-``search`` parameter)."""
        return any(self.Params.refit_group(k) != "search" for k in changes)


def supports_with_params(retriever: Any) -> bool:
    """True when a retriever (class or instance) declares its parameters (:class:`Configurable`)
    and so ``with_params`` — a sweep may fit it once and derive each trial from it. Older
    plugins (parameters only in the constructor) are constructed and fitted per trial."""
    cls = retriever if isinstance(retriever, type) else type(retriever)
    return issubclass(cls, Configurable) and cls.Params is not RetrieverParams
