"""The retriever registry (DESIGN §5): ``@register("name")`` and the entry-point group.

A retriever is a class registered with ``@register("name")``; third-party packages add retrievers
through the entry-point group ``persrv_bench.retrievers`` (each entry point names a retriever
class, or a module whose import registers some). Built-in retrievers live in ``baselines/``, one
file each, and are imported on first lookup.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from bench.errors import ConfigError, closest

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "persrv_bench.retrievers"
BUILTIN_MODULES = ("baselines",)

_REGISTRY: dict[str, type] = {}
_LOADED = False


def register(name: str):
    """Class decorator: make a retriever available under ``name`` in configs and the CLI."""
    def deco(cls: type) -> type:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and \
                f"{existing.__module__}.{existing.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(f"retriever name {name!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the harness
            log.warning("could not load retriever entry point %s (%s): %s", ep.name, ep.value, exc)
            continue
        if inspect.isclass(obj) and ep.name not in _REGISTRY:
            register(ep.name)(obj)


def registry() -> dict[str, type]:
    """All registered retrievers (built-in baselines and entry-point plugins), by name."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_retriever_class(name: str) -> type:
    reg = registry()
    if name not in reg:
        close = closest(name, reg)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ConfigError(f"unknown retriever {name!r}.{hint} Registered: {', '.join(reg)}")
    return reg[name]


def declared_params(cls: type):
    """The retriever's declared ``Params`` model (:mod:`bench.params`), or None for a class that
    declares its parameters only in its constructor signature (older plugins)."""
    from bench.params import RetrieverParams
    model = getattr(cls, "Params", None)
    if isinstance(model, type) and issubclass(model, RetrieverParams) and model is not RetrieverParams:
        return model
    return None


def param_specs(cls: type) -> dict[str, inspect.Parameter]:
    """The parameters of a retriever class (its tunable, logged parameters), from its declared
    ``Params`` or, for older plugins, its constructor signature."""
    model = declared_params(cls)
    if model is not None:
        return {n: inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d,
                                     annotation=model.model_fields[n].annotation)
                for n, d in model.defaults().items()}
    sig = inspect.signature(cls.__init__)
    return {n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make_retriever(name: str, params: dict[str, Any] | None = None) -> Any:
    """Construct a registered retriever; unknown parameters are a :class:`ConfigError`."""
    cls = get_retriever_class(name)
    params = dict(params or {})
    if declared_params(cls) is not None:
        from bench.params import validate_params
        validated = validate_params(cls, params)  # one-line ConfigError before any work
        return cls(**validated.model_dump())
    specs = param_specs(cls)
    for key in params:
        if key not in specs:
            close = closest(key, specs)
            hint = f" Did you mean {close!r}?" if close else ""
            raise ConfigError(f"retriever {name!r} has no parameter {key!r}.{hint} "
                              f"Parameters: {', '.join(specs) or '(none)'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retriever {name!r}: {exc}") from None


def get_params(retriever: Any) -> dict[str, Any]:
    """Current parameter values of a retriever (declared ``Params``, or constructor parameters
    read back as attributes)."""
    if declared_params(type(retriever)) is not None and hasattr(retriever, "params"):
        return retriever.params.model_dump()
    return {n: getattr(retriever, n, p.default) for n, p in param_specs(type(retriever)).items()}


def describe_retriever(cls: type) -> str:
    """First line of the class docstring."""
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def supports_with_params(retriever: Any) -> bool:
    """Whether a retriever (class or instance) declares its parameters and so ``with_params``
    (:func:`bench.params.supports_with_params`): sweeps fit it once and derive each trial with
    ``with_params``; other plugins are constructed and fitted per trial. Use this, never
    ``hasattr(retriever, "with_params")``."""
    from bench.params import supports_with_params as supports
    return supports(retriever)
