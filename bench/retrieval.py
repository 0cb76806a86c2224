"""Requests, runs, the train view and the retriever protocol (DESIGN §5).

A retriever's ``__init__`` only stores typed parameters (scikit-learn style), ``fit(train)`` builds
indexes from a :class:`TrainView`, ``search(requests, k)`` answers a batch and returns a
:class:`Run`. The registry (``@register("name")``, entry points) lives in :mod:`bench.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

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
    their own work (dense-text embeddings); ``context`` the run's shared in-memory work
    (:class:`bench.run_context.RunContext`: tokenized fields, loaded encoders), None = nothing
    shared.
    """

    stickers: "pd.DataFrame"
    clicks: "pd.DataFrame"
    meta: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    embeddings: Any = None
    cache: Any = None
    seed: int = 0
    context: Any = None

    @property
    def sticker_ids(self) -> list[str]:
        return self.stickers["sticker_id"].tolist()


def leak_safe_view(stickers: "pd.DataFrame", clicks: "pd.DataFrame", *, meta: dict | None = None,
                   root: Path | None = None, embeddings: Any = None, cache: Any = None,
                   seed: int = 0, context: Any = None) -> TrainView:
    """The one place a :class:`TrainView` is built for a retriever (DESIGN §3): ground-truth
    ``gt_*`` columns are dropped from the corpus, and ``clicks`` must already be the fitting
    history of the split being evaluated (``Splits.history_for``). Used by run, sweep and perf.
    ``context``: the run's :class:`~bench.run_context.RunContext` (a new one when None)."""
    if context is None:
        from bench.run_context import RunContext
        context = RunContext()
    public = stickers[[c for c in stickers.columns if not str(c).startswith("gt_")]]
    clicks = clicks[[c for c in clicks.columns if not str(c).startswith("gt_")]]
    return TrainView(stickers=public, clicks=clicks, meta=dict(meta or {}), root=root,
                     embeddings=embeddings, cache=cache, seed=seed, context=context)


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
        """Write TREC run format: ``qid Q0 docid rank score tag``; scores at full precision
        (``repr``), so a tool that re-sorts by score sees no ties the run does not have."""
        path = Path(path)
        tag = (tag or self.name).replace(" ", "_")
        with open(path, "w", encoding="utf-8") as fh:
            for i, (req, ranked) in enumerate(self.results.items()):
                qid = qids[req] if qids else f"q{i}"
                for rank, (sid, score) in enumerate(ranked, start=1):
                    fh.write(f"{qid} Q0 {sid} {rank} {float(score)!r} {tag}\n")
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


def iter_batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


_MOVED_TO_REGISTRY = frozenset({"register", "registry", "make_retriever", "get_retriever_class",
                                "param_specs", "get_params", "describe_retriever"})


def __getattr__(name: str) -> Any:
    """Compatibility for plugins written before the registry got its own module:
    ``from bench.retrieval import register`` still works (use :mod:`bench.registry`)."""
    if name in _MOVED_TO_REGISTRY:
        import bench.registry
        return getattr(bench.registry, name)
    raise AttributeError(f"module 'bench.retrieval' has no attribute {name!r}")
