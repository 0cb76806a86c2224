"""PerSRV's parameters, declared once (:class:`PerSRVParams`: types, ranges, allowed values,
refit groups), the utility and cluster configs derived from them, and the text of each BM25
field (:class:`PerSRVConfig`, the base of :class:`baselines.persrv.PerSRV`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Sequence

import numpy as np
import pandas as pd

from bench.data.format import text_columns
from bench.data.persrv_csv import METADATA_TEXT_COLUMNS
from pydantic import field_validator

from bench.errors import ConfigError
from bench.params import Configurable, RetrieverParams, param
from bench.persrv.clustering import (ALGORITHMS, COVARIANCES, DEFAULT_N_CLUSTERS, KMEANS_IMPLS,
                                     LINKAGES, NOISE, ClusterConfig)
from bench.persrv.rerank import MODES
from bench.persrv.utility import (COMBINES, MODIFIERS, NORMALIZES, SOURCES, UtilityConfig,
                                  parse_components)
from bench.retrieval import TrainView
from bench.text import CHINESE_MODES

#: PerSRV field -> the sticker column it reads ("queries" comes from the clicks).
FIELD_COLUMNS = {"ocr": "ocr_text", "description": "description", "keywords": "keywords"}
FIELD_BOOSTS = {"ocr": "ocr_boost", "queries": "queries_boost", "description": "desc_boost",
                "keywords": "keywords_boost", "text": "text_boost"}
GEOMETRIES = ("cosine", "standardized")
#: The dataset meta key listing source fields kept as metadata, which the ``text`` field skips
#: unless ``text_columns`` names them (set by the persrv-csv builder).
METADATA_COLUMNS_KEY = METADATA_TEXT_COLUMNS


def _boost(default: float, what: str) -> Any:
    return param(default, ge=0, refit="boosts", description=f"BM25 boost of the {what} field "
                 "(0: not searched)")


class PerSRVParams(RetrieverParams):
    """PerSRV's parameters, one declaration (flat names: sweeps and MLflow use them). The refit
    group of each says which part of a fitted PerSRV a change invalidates: ``index`` (tokenizer,
    BM25: everything), ``boosts`` (re-weight the index; a newly enabled field is indexed),
    ``recall`` (the pools), ``utility`` (the utility vector, then the pools), ``clusters`` (the
    users' clusters), ``threads`` (nothing but the thread count), ``search`` (nothing)."""

    REFIT_GROUPS: ClassVar[tuple[str, ...]] = ("index", "boosts", "recall", "utility",
                                               "clusters", "threads", "search", "fit")

    # -- recall: fields and BM25
    ocr_boost: float = _boost(1.0, "OCR text")
    queries_boost: float = _boost(0.5, "historical-query")
    desc_boost: float = _boost(1.0, "VLM description")
    keywords_boost: float = _boost(0.0, "VLM keywords")
    text_boost: float = _boost(1.0, "other text columns")
    text_columns: str = param("auto", refit="index", min_length=1, description=(
        "columns of the text field: auto | all | none | comma-separated names"))
    k1: float = param(1.2, ge=0, refit="index", description="BM25 k1")
    b: float = param(0.75, ge=0, le=1, refit="index", description="BM25 b")
    k1_plus_one: bool = param(False, refit="index", description="Lucene <= 7 (k1 + 1) numerator")
    stem: Optional[str] = param(None, refit="index", description="PyStemmer language or None")
    chinese: Literal[CHINESE_MODES] = param("jieba", refit="index",
                                            description="Chinese segmentation")
    pool: int = param(5000, ge=1, refit="recall", description="recall depth re-ranked")
    pool_per_k: int = param(0, ge=0, refit="search",
                            description="> 0: recall depth = pool_per_k x k (the reference: 5)")
    # -- utility
    utility: bool = param(True, refit="utility", description="utility boost on/off")
    utility_source: Literal[SOURCES] = param("clicks", refit="utility")
    utility_components: str = param("popularity", refit="utility",
                                    description="popularity, users, queries (comma-separated)")
    utility_combine: Literal[COMBINES] = param("sum", refit="utility")
    utility_normalize: Literal[NORMALIZES] = param("none", refit="utility")
    utility_factor: float = param(0.3, refit="utility", description="field_value_factor factor")
    utility_modifier: Literal[tuple(MODIFIERS)] = param("sqrt", refit="utility")
    utility_missing: Optional[float] = param(1.05, refit="utility",
                                             description="value of a sticker without clicks")
    # -- personalization: clusters
    personalization: bool = param(True, refit="clusters", description="re-rank on/off")
    cluster_algorithm: Literal[ALGORITHMS] = param("kmeans", refit="clusters")
    n_clusters: int = param(DEFAULT_N_CLUSTERS, ge=1, refit="clusters",
                            description="clusters per user (kmeans, agglomerative, gmm)")
    min_cluster_size: int = param(2, ge=2, refit="clusters", description="HDBSCAN")
    hdbscan_min_samples: Optional[int] = param(None, ge=1, refit="clusters")
    hdbscan_noise: Literal[NOISE] = param("singleton", refit="clusters")
    cluster_linkage: Literal[LINKAGES] = param("ward", refit="clusters")
    gmm_covariance: Literal[COVARIANCES] = param("diag", refit="clusters")
    min_radius: float = param(0.0, ge=0, le=2, refit="clusters",
                              description="floor of every radius (cosine distance)")
    cluster_max_iter: int = param(100, ge=1, refit="clusters")
    kmeans_impl: Literal[KMEANS_IMPLS] = param("batched", refit="clusters")
    geometry: Literal[GEOMETRIES] = param("cosine", refit="clusters", description=(
        "cosine | standardized (the reference's per-user standardised Euclidean space)"))
    seed: int = param(0, ge=0, refit="clusters", description="clustering randomness")
    # -- personalization: re-rank
    rerank_weight: float = param(0.3, refit="search", description="re-rank weight")
    rerank_mode: Literal[MODES] = param("multiply", refit="search")
    rerank_never_lower: bool = param(False, refit="search",
                                     description="a score is only ever raised (the reference)")
    n_threads: Optional[int] = param(None, ge=1, refit="threads", description=(
        "recall and re-rank threads (None: available CPUs, at most 4)"))

    @field_validator("utility_components")
    @classmethod
    def _components(cls, value: str) -> str:
        parse_components(value)  # ValueError names the allowed components
        return value

    @field_validator("stem")
    @classmethod
    def _stem(cls, value: str | None) -> str | None:
        from baselines.bm25 import check_stem
        return check_stem(value)


def _cell_text(value: Any, sep: str = " ") -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return sep.join(str(v) for v in value if v is not None)
    return str(value)


def historical_queries(clicks: pd.DataFrame, sticker_ids: Sequence[str],
                       sep: str = " ") -> list[str]:
    """Per sticker, its distinct train-click queries joined (see baselines.bm25)."""
    from baselines.bm25 import historical_queries as hq
    return hq(clicks, sticker_ids, sep=sep)


class PerSRVConfig(Configurable):
    """Methods of :class:`~baselines.persrv.PerSRV` that read only its parameters (and the
    train view's text)."""

    name = "persrv"
    Params = PerSRVParams

    def boosts(self) -> dict[str, float]:
        """PerSRV field -> boost."""
        return {f: float(getattr(self, p)) for f, p in FIELD_BOOSTS.items()}

    def utility_config(self) -> UtilityConfig:
        try:
            return UtilityConfig(components=self.utility_components, combine=self.utility_combine,
                                 normalize=self.utility_normalize, factor=self.utility_factor,
                                 modifier=self.utility_modifier, missing=self.utility_missing,
                                 source=self.utility_source)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None

    def cluster_config(self) -> ClusterConfig:
        try:
            return ClusterConfig(algorithm=self.cluster_algorithm, n_clusters=int(self.n_clusters),
                                 min_cluster_size=int(self.min_cluster_size),
                                 min_samples=self.hdbscan_min_samples, noise=self.hdbscan_noise,
                                 linkage=self.cluster_linkage,
                                 covariance_type=self.gmm_covariance,
                                 min_radius=float(self.min_radius),
                                 max_iter=int(self.cluster_max_iter),
                                 kmeans_impl=self.kmeans_impl, seed=int(self.seed))
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None

    # ---------------------------------------------------------------------------------- fit
    def field_texts(self, train: TrainView) -> dict[str, list[str]]:
        """The text of every PerSRV field present in ``train`` (one per sticker)."""
        st = train.stickers
        out: dict[str, list[str]] = {}
        for f, col in FIELD_COLUMNS.items():
            if col in st.columns:
                out[f] = [_cell_text(v) for v in st[col].tolist()]
        out["queries"] = historical_queries(train.clicks, train.sticker_ids)
        other = self.text_field_columns(train)
        if other:
            cols = [[_cell_text(v) for v in st[c].tolist()] for c in other]
            out["text"] = cols[0] if len(cols) == 1 else \
                [" ".join(v for v in row if v) for row in zip(*cols)]
        return out

    def text_field_columns(self, train: TrainView) -> list[str]:
        """The sticker columns joined into the ``text`` field. ``text_columns``: "auto" = every
        text column other than PerSRV's own fields, except those the dataset lists as metadata
        (meta ``metadata_text_columns``: persrv-csv's emotion, keyword, type, JSON fields ...,
        which the reference never searches); "all" = every other text column; "none" = none;
        else comma-separated column names (each must exist)."""
        other = [c for c in text_columns(train.stickers) if c not in FIELD_COLUMNS.values()]
        choice = str(self.text_columns).strip()
        if choice == "auto":
            skip = set((train.meta or {}).get(METADATA_COLUMNS_KEY) or ())
            return [c for c in other if c not in skip]
        if choice == "all":
            return other
        if choice in ("none", ""):
            return []
        names = [c.strip() for c in choice.split(",") if c.strip()]
        missing = [c for c in names if c not in other]
        if missing:
            raise ConfigError(f"{self.name}: text_columns names {', '.join(missing)}, not a text "
                              f"column of the dataset (text columns: {', '.join(other) or 'none'})")
        return names
