"""Requests, runs, the retriever protocol and the registry (DESIGN §5).

A retriever is a class registered with ``@register("name")``: its ``__init__`` only stores typed
parameters (scikit-learn style), ``fit(train)`` builds indexes from a :class:`TrainView`,
``search(requests, k)`` answers a batch and returns a :class:`Run`. Third-party packages add
retrievers through the entry-point group ``persrv_bench.retrievers`` (each entry point names a
retriever class, or a module whose import registers some).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from bench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "persrv_bench.retrievers"
BUILTIN_MODULES = ("baselines",)


@dataclass(frozen=True, order=True)
class Request:
    """One search: a user typing a query."""

    user_id: str
    query: str


@dataclass
class TrainView:
    """What a retriever may learn from: the corpus (no ``gt_*`` columns) and the fitting clicks.

    ``stickers``: sticker_id, image, text columns (and ``embedding`` when the dataset has one).
    ``clicks``: user_id, query, sticker_id, ts — train clicks (train + validation for the final
    test run). Offline features are already attached: OCR text, VLM ``description`` and
    ``keywords`` as sticker columns, image embeddings as ``embeddings`` (float32, one row per
    sticker, in ``stickers`` order; None when no encoder ran). ``root`` is the dataset directory
    (image paths are relative to it); ``cache`` the feature cache, for retrievers that cache
    their own work (dense-text embeddings).
    """

    stickers: "pd.DataFrame"
    clicks: "pd.DataFrame"
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    embeddings: Any = None
    cache: Any = None
    seed: int = 0

    @property
    def sticker_ids(self) -> list[str]:
        return self.stickers["sticker_id"].tolist()


class Run:
    """Ranked results per request: ``run[request] -> [(sticker_id, score), ...]`` best first.

    Requests keep their insertion order; the TREC qid of a request is its position (``q0``, ...)
    unless explicit qids are given.
    """

    def __init__(self, results: dict[Request, list[tuple[str, float]]] | None = None,
                 name: str = "run"):
        self.results: dict[Request, list[tuple[str, float]]] = dict(results or {})
        self.name = name

    def __getitem__(self, request: Request) -> list[tuple[str, float]]:
        return self.results[request]

    def __setitem__(self, request: Request, ranked: list[tuple[str, float]]) -> None:
        self.results[request] = ranked

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.results)

    def __contains__(self, request: object) -> bool:
        return request in self.results

    def ids(self, request: Request) -> list[str]:
        return [sid for sid, _ in self.results.get(request, [])]

    def to_frame(self, qids: dict[Request, str] | None = None) -> "pd.DataFrame":
        """Long table: qid, user_id, query, rank (1-based), sticker_id, score."""
        import pandas as pd
        rows = []
        for i, (req, ranked) in enumerate(self.results.items()):
            qid = qids[req] if qids else f"q{i}"
            for rank, (sid, score) in enumerate(ranked, start=1):
                rows.append((qid, req.user_id, req.query, rank, sid, float(score)))
        return pd.DataFrame(rows, columns=["qid", "user_id", "query", "rank", "sticker_id",
                                           "score"])

    def save_trec(self, path: str | Path, qids: dict[Request, str] | None = None,
                  tag: str | None = None) -> Path:
        """Write TREC run format: ``qid Q0 docid rank score tag``."""
        path = Path(path)
        tag = (tag or self.name).replace(" ", "_")
        with open(path, "w", encoding="utf-8") as fh:
            for i, (req, ranked) in enumerate(self.results.items()):
                qid = qids[req] if qids else f"q{i}"
                for rank, (sid, score) in enumerate(ranked, start=1):
                    fh.write(f"{qid} Q0 {sid} {rank} {float(score):.6f} {tag}\n")
        return path

    def save_parquet(self, path: str | Path, qids: dict[Request, str] | None = None) -> Path:
        self.to_frame(qids).to_parquet(path, index=False)
        return Path(path)

    @classmethod
    def from_frame(cls, df: "pd.DataFrame", name: str = "run") -> "Run":
        run = cls(name=name)
        df = df.sort_values(["qid", "rank"], kind="stable") if "rank" in df else df
        order = dict.fromkeys(df["qid"])  # first-seen qid order
        for qid in order:
            part = df[df["qid"] == qid]
            req = Request(str(part["user_id"].iloc[0]), str(part["query"].iloc[0]))
            run[req] = list(zip(part["sticker_id"].astype(str), part["score"].astype(float)))
        return run

    @classmethod
    def load_parquet(cls, path: str | Path, name: str = "run") -> "Run":
        import pandas as pd
        return cls.from_frame(pd.read_parquet(path), name=name)


@runtime_checkable
class Retriever(Protocol):
    """The retriever contract (DESIGN §5)."""

    name: str

    def fit(self, train: TrainView) -> "Retriever": ...

    def search(self, requests: Sequence[Request], k: int) -> Run: ...


# ---------------------------------------------------------------------------------------- registry

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
        import difflib
        close = difflib.get_close_matches(name, reg, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown retriever {name!r}.{hint} Registered: {', '.join(reg)}")
    return reg[name]


def param_specs(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor parameters of a retriever class (its tunable, logged parameters)."""
    sig = inspect.signature(cls.__init__)
    return {n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make_retriever(name: str, params: dict[str, Any] | None = None) -> Any:
    """Construct a registered retriever; unknown parameters are a :class:`ConfigError`."""
    cls = get_retriever_class(name)
    params = dict(params or {})
    specs = param_specs(cls)
    for key in params:
        if key not in specs:
            import difflib
            close = difflib.get_close_matches(key, specs, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"retriever {name!r} has no parameter {key!r}.{hint} "
                              f"Parameters: {', '.join(specs) or '(none)'}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retriever {name!r}: {exc}") from None


def get_params(retriever: Any) -> dict[str, Any]:
    """Current parameter values of a retriever (constructor parameters read back as attributes)."""
    return {n: getattr(retriever, n, p.default) for n, p in param_specs(type(retriever)).items()}


def describe_retriever(cls: type) -> str:
    """First line of the class docstring."""
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def iter_batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
