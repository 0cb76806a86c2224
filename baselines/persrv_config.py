"""PerSRV's parameters: field/boost names, validation, the utility and cluster configs, and the
text of each BM25 field (:class:`PerSRVConfig`, a mixin of :class:`baselines.persrv.PerSRV`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.data.format import text_columns
from bench.data.persrv_csv import METADATA_TEXT_COLUMNS
from bench.errors import ConfigError
from bench.persrv.clustering import ClusterConfig
from bench.persrv.utility import UtilityConfig
from bench.retrieval import TrainView
from bench.text import CHINESE_MODES

#: PerSRV field -> the sticker column it reads ("queries" comes from the clicks).
FIELD_COLUMNS = {"ocr": "ocr_text", "description": "description", "keywords": "keywords"}
FIELD_BOOSTS = {"ocr": "ocr_boost", "queries": "queries_boost", "description": "desc_boost",
                "keywords": "keywords_boost", "text": "text_boost"}
INDEX_PARAMS = frozenset({"k1", "b", "k1_plus_one", "stem", "chinese", "text_columns"})
UTILITY_PARAMS = frozenset({"utility", "utility_source", "utility_components", "utility_combine",
                            "utility_normalize", "utility_factor", "utility_modifier",
                            "utility_missing"})
CLUSTER_PARAMS = frozenset({"personalization", "cluster_algorithm", "n_clusters",
                            "min_cluster_size", "hdbscan_min_samples", "hdbscan_noise",
                            "cluster_linkage", "gmm_covariance", "min_radius",
                            "cluster_max_iter", "kmeans_impl", "seed", "geometry"})
GEOMETRIES = ("cosine", "standardized")
#: The dataset meta key listing source fields kept as metadata, which the ``text`` field skips
#: unless ``text_columns`` names them (set by the persrv-csv builder).
METADATA_COLUMNS_KEY = METADATA_TEXT_COLUMNS


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


class PerSRVConfig:
    """Methods of :class:`~baselines.persrv.PerSRV` that read only its parameters (and the
    train view's text)."""

    name = "persrv"

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

    def _check_params(self) -> None:
        if self.chinese not in CHINESE_MODES:
            raise ConfigError(f"{self.name}: chinese must be one of {', '.join(CHINESE_MODES)}, "
                              f"got {self.chinese!r}")
        for f, boost in self.boosts().items():
            if not np.isfinite(boost) or boost < 0:
                raise ConfigError(f"{self.name}: {FIELD_BOOSTS[f]} must be >= 0, got {boost}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"{self.name}: need k1 >= 0 and 0 <= b <= 1 "
                              f"(got k1={self.k1}, b={self.b})")
        if int(self.pool) < 1:
            raise ConfigError(f"{self.name}: pool must be >= 1, got {self.pool}")
        if int(self.pool_per_k) < 0:
            raise ConfigError(f"{self.name}: pool_per_k must be >= 0, got {self.pool_per_k}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"{self.name}: geometry must be one of {', '.join(GEOMETRIES)}, "
                              f"got {self.geometry!r}")
        if self.rerank_mode not in ("multiply", "sum"):
            raise ConfigError(f"{self.name}: rerank_mode must be multiply or sum, "
                              f"got {self.rerank_mode!r}")
        self.utility_config()
        self.cluster_config()

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
