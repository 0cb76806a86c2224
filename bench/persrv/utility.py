"""PerSRV's sticker utility: click statistics as an additive recall boost (DESIGN §7).

Components, counted over the fitting clicks only (train; train + validation for the test run):

- ``popularity``: clicks on the sticker;
- ``users`` (cross-user adaptability): distinct users who clicked it;
- ``queries`` (query adaptability): distinct queries it was clicked under.

With ``source="columns"`` the dataset's precomputed columns are read instead (PerSRV reference
format): ``clicks_per_doc``, ``unique_users_per_doc``, ``versatility`` for the three components
(we read ``versatility`` as query adaptability). Those columns were computed by the dataset's
authors over all of their clicks, so they may include test interactions: use them only to
reproduce the reference setup, never for a leakage-free benchmark.

:func:`utility_values` gives u(d) (NaN for a sticker with no value: never clicked, or a null
column); :func:`utility_boost` turns it into the recall boost exactly as Elasticsearch's
``function_score`` / ``field_value_factor`` with ``boost_mode: sum`` does::

    boost(d) = modifier(factor * value(d)),  value(d) = u(d), or ``missing`` when u(d) is NaN

Defaults give DESIGN §7's ``sqrt(0.3 * u(d))`` with u = 1.05 for missing values. Note that a
sticker never clicked then gets sqrt(0.315) = 0.561, more than a sticker clicked once
(sqrt(0.3) = 0.548): that is the reference's setting, kept as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

#: Component name -> (what it counts in the clicks, the reference-format column).
COMPONENTS = {"popularity": ("clicks", "clicks_per_doc"),
              "users": ("user_id", "unique_users_per_doc"),
              "queries": ("query", "versatility")}
ALIASES = {"clicks": "popularity", "cross_user": "users", "user_adaptability": "users",
           "query_adaptability": "queries", "versatility": "queries"}
COMBINES = ("sum", "mean", "product", "max")
NORMALIZES = ("none", "log1p", "minmax")
SOURCES = ("clicks", "columns")
#: Elasticsearch field_value_factor modifiers (``log`` is log10, ``log1p`` is log10(1 + x),
#: ``ln1p`` is ln(1 + x), as Elasticsearch defines them).
MODIFIERS = {
    "none": lambda x: x,
    "log": np.log10,
    "log1p": lambda x: np.log10(x + 1),
    "log2p": lambda x: np.log10(x + 2),
    "ln": np.log,
    "ln1p": np.log1p,
    "ln2p": lambda x: np.log1p(x + 1),
    "square": np.square,
    "sqrt": np.sqrt,
    "reciprocal": lambda x: 1.0 / x,
}


def parse_components(components: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical component names from a list or a comma/plus-separated string."""
    if isinstance(components, str):
        components = [c for c in components.replace("+", ",").split(",")]
    out = []
    for c in components:
        c = str(c).strip().lower()
        if not c:
            continue
        c = ALIASES.get(c, c)
        if c not in COMPONENTS:
            raise ValueError(f"unknown utility component {c!r}; use "
                             f"{', '.join(COMPONENTS)} (aliases: {', '.join(ALIASES)})")
        if c not in out:
            out.append(c)
    if not out:
        raise ValueError("utility components must name at least one of "
                         f"{', '.join(COMPONENTS)}")
    return tuple(out)


@dataclass(frozen=True)
class UtilityConfig:
    """How u(d) is computed and turned into a boost (defaults: DESIGN §7).

    ``components``: names from :data:`COMPONENTS` (list or ``"popularity,users"``).
    ``combine``: ``sum``, ``mean``, ``product`` or ``max`` of the (normalised) components.
    ``normalize``: per component before combining: ``none``, ``log1p`` (natural) or ``minmax``
    (to [0, 1] over the stickers that have a value; a constant component becomes 1).
    ``factor``, ``modifier``, ``missing``: Elasticsearch ``field_value_factor`` settings.
    ``source``: ``clicks`` (count the fitting clicks) or ``columns`` (precomputed columns).
    """

    components: tuple[str, ...] = ("popularity",)
    combine: str = "sum"
    normalize: str = "none"
    factor: float = 0.3
    modifier: str = "sqrt"
    missing: float = 1.05
    source: str = "clicks"

    def __post_init__(self):
        object.__setattr__(self, "components", parse_components(self.components))
        for name, value, allowed in (("combine", self.combine, COMBINES),
                                     ("normalize", self.normalize, NORMALIZES),
                                     ("modifier", self.modifier, tuple(MODIFIERS)),
                                     ("source", self.source, SOURCES)):
            if value not in allowed:
                raise ValueError(f"utility {name} must be one of {', '.join(allowed)}, "
                                 f"got {value!r}")
        if not np.isfinite(self.factor):
            raise ValueError(f"utility factor must be finite, got {self.factor!r}")
        if self.missing is not None and not np.isfinite(self.missing):
            raise ValueError(f"utility missing must be finite or None, got {self.missing!r}")


def click_counts(clicks: pd.DataFrame, sticker_ids: Sequence[str]) -> pd.DataFrame:
    """Per sticker (rows in ``sticker_ids`` order): clicks, distinct users, distinct queries;
    NaN for stickers without clicks."""
    index = pd.Index([str(s) for s in sticker_ids], dtype=object)
    cols = ["popularity", "users", "queries"]
    if clicks is None or len(clicks) == 0:
        return pd.DataFrame(np.nan, index=index, columns=cols)
    c = clicks[["user_id", "query", "sticker_id"]].astype(str)
    g = c.groupby("sticker_id", sort=False)
    stats = pd.DataFrame({"popularity": g.size(), "users": g["user_id"].nunique(),
                          "queries": g["query"].nunique()})
    return stats.reindex(index).astype(np.float64)


def _normalize(v: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return v
    if how == "log1p":
        return np.log1p(v)
    have = ~np.isnan(v)
    if not have.any():
        return v
    lo, hi = np.nanmin(v), np.nanmax(v)
    return np.where(have, (v - lo) / (hi - lo) if hi > lo else 1.0, np.nan)


def utility_values(clicks: pd.DataFrame | None, sticker_ids: Sequence[str],
                   cfg: UtilityConfig = UtilityConfig(),
                   stickers: pd.DataFrame | None = None) -> np.ndarray:
    """u(d) per sticker (float64, ``sticker_ids`` order), NaN where the sticker has no value.

    Components missing for a sticker are skipped when combining (only possible with
    ``source="columns"``); a sticker missing all of them is NaN. ``stickers`` (with
    ``sticker_id`` and the columns) is needed for ``source="columns"``."""
    ids = [str(s) for s in sticker_ids]
    if cfg.source == "clicks":
        table = click_counts(clicks, ids)
        parts = [table[c].to_numpy(np.float64) for c in cfg.components]
    else:
        if stickers is None:
            raise ValueError("utility source 'columns' needs the stickers frame")
        missing = [COMPONENTS[c][1] for c in cfg.components
                   if COMPONENTS[c][1] not in stickers.columns]
        if missing:
            raise ValueError(f"utility source 'columns': the stickers have no column(s) "
                             f"{', '.join(missing)}; use source='clicks'")
        frame = stickers.set_index(stickers["sticker_id"].astype(str))
        parts = [pd.to_numeric(frame[COMPONENTS[c][1]], errors="coerce")
                 .reindex(pd.Index(ids, dtype=object)).to_numpy(np.float64)
                 for c in cfg.components]
    stack = np.stack([_normalize(p, cfg.normalize) for p in parts]) if parts \
        else np.full((1, len(ids)), np.nan)
    have = ~np.isnan(stack)
    none = ~have.any(axis=0)
    with np.errstate(invalid="ignore"):
        if cfg.combine == "sum":
            out = np.nansum(stack, axis=0)
        elif cfg.combine == "mean":
            out = np.nansum(stack, axis=0) / np.maximum(have.sum(axis=0), 1)
        elif cfg.combine == "product":
            out = np.nanprod(stack, axis=0)
        else:
            out = np.max(np.where(have, stack, -np.inf), axis=0)
    out = out.astype(np.float64)
    out[none] = np.nan
    return out


def utility_boost(values: np.ndarray, cfg: UtilityConfig = UtilityConfig()) -> np.ndarray:
    """Elasticsearch ``field_value_factor``: ``modifier(factor * value)``, ``missing`` standing
    in for NaN values (float64). Raises, as Elasticsearch does, when a result is negative (or
    NaN/infinite), or a value is missing and ``missing`` is None."""
    v = np.asarray(values, dtype=np.float64)
    absent = np.isnan(v)
    if absent.any():
        if cfg.missing is None:
            raise ValueError(f"{int(absent.sum())} sticker(s) have no utility value and "
                             "missing is None; set missing (Elasticsearch's default here: 1.05)")
        v = np.where(absent, cfg.missing, v)
    with np.errstate(all="ignore"):
        out = MODIFIERS[cfg.modifier](cfg.factor * v)
    bad = ~np.isfinite(out) | (out < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        hint = {"ln": "; consider ln1p or ln2p", "log": "; consider log1p or log2p"}.get(
            cfg.modifier, "")
        raise ValueError(f"field value function must not produce negative or non-finite scores, "
                         f"but got {out[i]} for value {v[i]} (modifier {cfg.modifier!r}, factor "
                         f"{cfg.factor}){hint}")
    return out
