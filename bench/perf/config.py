"""What ``persrv-bench perf`` measures: :class:`PerfConfig`, the targets and the stage names."""

from __future__ import annotations

from dataclasses import dataclass

PAPER_STICKERS = 543_098
PAPER_REQUESTS = 12_568
#: The scaling curve's corpus sizes: half decades from a tenth to ten times the paper's
#: (54,310 ... 5,430,980 stickers); requests grow with the corpus (:func:`paper_density_requests`).
DEFAULT_SCALING = tuple(round(PAPER_STICKERS * 10 ** (e / 2)) for e in (-2, -1, 0, 1, 2))


def paper_density_requests(size: int) -> int:
    """Test requests at the paper's density for a corpus of ``size`` stickers (12,568 per
    543,098: 125,680 at 5,430,980)."""
    return max(1, round(size * PAPER_REQUESTS / PAPER_STICKERS))


def zipf_users(size: int) -> int:
    """Simulated users of the zipf workload: one per 40 stickers up to the paper's 12,568
    (reached at 502,720 stickers), then at the paper's density (125,680 at 5,430,980), so the
    test split has about one request per user at every size past the paper's."""
    if size <= PAPER_STICKERS:
        return int(min(PAPER_REQUESTS, max(100, size // 40)))
    return paper_density_requests(size)
#: Workloads (``--workload``): ``zipf`` (the default, the targets are judged on it) and
#: ``concepts`` (the 46-concept synthetic vocabulary of the ``synthetic`` builder).
WORKLOADS = ("zipf", "concepts")
#: Targets on zipf at paper scale (2 cores, features cached): name -> (goal, op, unit).
TARGETS = {
    "pipeline_s": (60.0, "<=", "s"),
    "peak_rss_gb": (4.0, "<=", "GB"),
    "bm25_fastest": (1.0, ">=", "x"),
    "rank_bm25_speedup": (100.0, ">=", "x"),
    "rank_bm25_identical": (1.0, ">=", "fraction"),
    "sweep_trial_s": (3.0, "<=", "s"),
    "help_s": (0.5, "<", "s"),
}
#: PerSRV fit stages: (stage, method of PerSRV.fit timed by wrapping it on the instance).
FIT_STAGES = (("index", "_fit_index"), ("utility", "_fit_utility"),
              ("clusters", "_fit_clusters"))
#: The default retrievers (the pipeline of issue 16: bm25 + 7 PerSRV variants), in run order:
#: variants with identical recall are adjacent, so the recall-pool cache (two configurations)
#: serves them. Other registered retrievers (``persrv-reference``...) run only when named in
#: ``--retrievers``.
ORDER = ("bm25", "persrv", "persrv-no-personalization", "persrv-no-description",
         "persrv-no-utility", "persrv-bm25", "persrv-no-ocr", "persrv-no-queries")
STAGE_COLUMNS = ("index", "utility", "clusters", "recall", "rerank", "results", "metrics")
BM25_FIELDS = "ocr_text,queries"
#: Parameters of retrievers measured when named in ``--retrievers`` (not in :data:`ORDER`):
#: ``ltr`` on the workload's fields, without its dense-text encoder (sentence embeddings of
#: 543,098 stickers take hours on 2 CPU cores); ``perf --retrievers bm25,persrv,ltr``.
RETRIEVER_PARAMS = {"ltr": {"fields": ["ocr_text", "queries"], "dense": False}}
MB = 1 << 20


@dataclass
class PerfConfig:
    """What ``persrv-bench perf`` measures (see :mod:`bench.perf`).

    ``workload``: ``zipf`` or ``concepts`` (:mod:`bench.perf.workloads`); ``size``: stickers;
    ``requests``: most test requests (the first ones); ``k``: ranking depth; ``pool``: PerSRV
    recall depth; ``retrievers``: names (None: :data:`ORDER`, bm25 + the 7 PerSRV variants);
    ``rank_bm25_sample`` / ``naive_sample``: requests run on the slow references (0 skips);
    ``peers``: run the fast references (bm25s numba, tantivy) on all requests; ``scaling``:
    corpus sizes of the scaling curve (empty skips); ``sweep_trial`` and ``help_check``: measure
    those too; ``dataset_dir``: an existing dataset instead of the workload's build;
    ``batch_size``: requests per search call, as the runner's default.
    """

    size: int = PAPER_STICKERS
    requests: int = PAPER_REQUESTS
    k: int = 20
    pool: int = 5000
    seed: int = 0
    workload: str = "zipf"
    retrievers: tuple[str, ...] | None = None
    rank_bm25_sample: int = 200
    naive_sample: int = 50
    peers: bool = True
    scaling: tuple[int, ...] = DEFAULT_SCALING
    sweep_trial: bool = True
    help_check: bool = True
    dataset_dir: str | None = None
    batch_size: int = 2048
    fill: str = "popularity"  #: list-length policy, as the runner's ``evaluation.fill``

    @property
    def ks(self) -> list[int]:
        return sorted({x for x in (1, 5, 10, 20) if x <= self.k} | {self.k})
