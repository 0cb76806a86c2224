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

Retrievers may refine ``with_params`` (PerSRV keeps its index when only boosts change), but the
group a parameter belongs to is always read from its declaration.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.errors import ConfigError, closest

REFIT_GROUPS = ("search", "fit")


def param(default: Any, *, refit: str = "fit", description: str | None = None,
          **constraints: Any) -> Any:
    """A declared parameter: its default, the refit group a change needs (:data:`REFIT_GROUPS`),
    a one-line description and pydantic constraints (``ge``, ``gt``, ``le``, ``lt``, ...)."""
    if refit not in REFIT_GROUPS:
        raise ValueError(f"refit must be one of {', '.join(REFIT_GROUPS)}, got {refit!r}")
    return Field(default, description=description, json_schema_extra={"refit": refit},
                 **constraints)


class RetrieverParams(BaseModel):
    """Base of every retriever's ``Params``: unknown names, loose types and non-finite numbers
    are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              validate_default=True)

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


def _one_line(retriever: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "params"
        value = err.get("input")
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            parts.append(f"no parameter {loc!r}")
        else:
            shown = repr(value) if not isinstance(value, float) or math.isfinite(value) \
                else str(value)
            parts.append(f"{loc}={shown[:60]}: {msg}")
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


class Configurable:
    """Mixin giving a retriever its constructor, ``get_params`` and a generic ``with_params``
    from its declared ``Params``."""

    Params: ClassVar[type[RetrieverParams]] = RetrieverParams
    name: ClassVar[str] = "retriever"

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

    def with_params(self, **changes: Any) -> "Configurable":
        """A copy with ``changes`` applied. When every changed parameter is in the ``search``
        group the fitted state is shared; otherwise the copy is unfitted (call ``fit``)."""
        merged = {**self.params.model_dump(), **changes}
        validated = validate_params(type(self), merged)
        changed = {k for k in changes if getattr(self.params, k) != getattr(validated, k)}
        if not changed:
            return self
        if all(self.Params.refit_group(k) == "search" for k in changed):
            new = copy.copy(self)
            new._set_params(validated)
            return new
        return type(self)(**validated.model_dump())

    def needs_fit_after(self, changes: dict[str, Any]) -> bool:
        """True when changing ``changes`` needs a new ``fit`` (any non-``search`` parameter)."""
        return any(self.Params.refit_group(k) != "search" for k in changes)
