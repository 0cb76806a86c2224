"""The retriever registry (DESIGN §5): ``@register("name")`` and the entry-point group.

A retriever is a class registered with ``@register("name")``; third-party packages add retrievers
through the entry-point group ``persrv_bench.retrievers`` (each entry point names a retriever
class, or a module whose import registers some). Built-in retrievers live in ``baselines/``, one
file each: every module of the package is imported on first lookup, so adding one is adding the
file. A user's own retrievers can live in plugin folders (``$PERSRV_BENCH_PLUGINS=dir1:dir2``, or
:func:`load_plugins` with a config's folders): each ``*.py`` file there is imported once.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.errors import ConfigError, closest

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "persrv_bench.retrievers"
BUILTIN_MODULES = ("baselines",)
#: Folders of one-file retriever plugins, separated by ``os.pathsep`` (``dir1:dir2``).
PLUGINS_ENV = "PERSRV_BENCH_PLUGINS"

_REGISTRY: dict[str, type] = {}
_LOADED = False
_LOAD_LOCK = threading.RLock()
_PLUGIN_DIRS_DONE: set[Path] = set()


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


def _import_package_modules(package: str) -> None:
    """Import every module of ``package`` (a retriever is one file: nothing to list anywhere)."""
    import importlib
    import pkgutil
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(getattr(pkg, "__path__", [])), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def plugin_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Plugin folders: ``extra`` (e.g. a config's ``plugins:``) then ``$PERSRV_BENCH_PLUGINS``
    (folders separated by ``os.pathsep``), resolved, without duplicates."""
    env = [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for raw in [*extra, *env]:
        path = Path(raw).expanduser().resolve()
        if path not in out:
            out.append(path)
    return out


def load_plugins(folders: Sequence[str | Path] = ()) -> list[str]:
    """Import every ``*.py`` file (not starting with ``_``) of each plugin folder once, so its
    ``@register`` classes join the registry. A missing folder or a file that fails to import is
    a one-line :class:`ConfigError` naming it. Returns the module files imported now."""
    import importlib.util
    loaded = []
    for folder in plugin_dirs(folders):
        if folder in _PLUGIN_DIRS_DONE:
            continue
        if not folder.is_dir():
            raise ConfigError(f"retriever plugin folder {folder} does not exist (from "
                              f"plugins: or ${PLUGINS_ENV})")
        _PLUGIN_DIRS_DONE.add(folder)
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith("_"):
                continue
            digest = hashlib.sha256(str(file).encode()).hexdigest()[:8]
            mod_name = f"persrv_bench_plugins.{file.stem}_{digest}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                _PLUGIN_DIRS_DONE.discard(folder)
                raise ConfigError(f"retriever plugin {file} failed to import: "
                                  f"{type(exc).__name__}: {exc}") from None
            loaded.append(str(file))
    return loaded


def _load_all() -> None:
    """Built-in modules (every module of ``baselines``), plugin folders from the environment,
    then entry points; built-ins and entry points once per process, plugin folders whenever
    ``$PERSRV_BENCH_PLUGINS`` names a new one."""
    global _LOADED
    load_plugins()
    if _LOADED:
        return
    with _LOAD_LOCK:  # a second thread waits for the first load instead of seeing it half done
        if _LOADED:
            return
        for mod in BUILTIN_MODULES:
            _import_package_modules(mod)
        from importlib.metadata import entry_points
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the harness
                log.warning("could not load retriever entry point %s (%s): %s", ep.name,
                            ep.value, exc)
                continue
            if inspect.isclass(obj) and ep.name not in _REGISTRY:
                register(ep.name)(obj)
        _LOADED = True


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
