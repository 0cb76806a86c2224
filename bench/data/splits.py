"""Chronological per-user splits and requests (DESIGN §3).

A user's clicks, ordered by ``ts``, form *click-groups*: maximal runs of consecutive clicks with the
same query (one search session). The user's last ``test_groups`` groups go to ``test``, the
``val_groups`` before them to ``validation``, the rest to ``train``; a user with fewer than
``min_train_groups + val_groups + test_groups`` groups stays train-only. A request is a
(user_id, query) pair within one split; its relevant set is every sticker the user clicked for
that query in that split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from bench.retrieval import Request

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    val_groups: int = 1
    test_groups: int = 1
    min_train_groups: int = 1


@dataclass
class Requests:
    """Requests of one split with their relevant sets, TREC qids and users."""

    requests: list[Request]
    relevant: dict[Request, set[str]]

    @cached_property
    def qids(self) -> dict[Request, str]:
        return {r: f"q{i}" for i, r in enumerate(self.requests)}

    @property
    def users(self) -> dict[Request, str]:
        return {r: r.user_id for r in self.requests}

    def __len__(self) -> int:
        return len(self.requests)


@dataclass
class Splits:
    """The three interaction frames of a dataset (each with the canonical columns)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    config: SplitConfig

    def history_for(self, target: str) -> pd.DataFrame:
        """Clicks a retriever may learn from when evaluated on ``target``.

        ``validation`` -> train only; ``test`` -> train + validation (the final run).
        """
        if target == "validation":
            return self.train
        if target == "test":
            return pd.concat([self.train, self.validation], ignore_index=True)
        raise ValueError(f"unknown evaluation split {target!r} (expected validation or test)")

    def requests(self, target: str) -> Requests:
        return make_requests(getattr(self, target))

    def counts(self) -> dict[str, int]:
        return {name: int(len(getattr(self, name))) for name in SPLITS}


def click_groups(interactions: pd.DataFrame) -> np.ndarray:
    """Per-row click-group number within its user (0 = oldest), after a stable sort by user, ts."""
    df = interactions
    new_group = (df["user_id"].ne(df["user_id"].shift()) | df["query"].ne(df["query"].shift()))
    gid = new_group.cumsum().to_numpy()
    user_start = df["user_id"].ne(df["user_id"].shift()).cumsum().to_numpy()
    # group number relative to the user's first group
    first_gid = pd.Series(gid).groupby(user_start).transform("min").to_numpy()
    return gid - first_gid


def split_interactions(interactions: pd.DataFrame, config: SplitConfig | None = None) -> Splits:
    """Split clicks chronologically per user into train / validation / test."""
    config = config or SplitConfig()
    df = interactions.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    if df.empty:
        empty = df.iloc[0:0]
        return Splits(empty, empty.copy(), empty.copy(), config)
    group = click_groups(df)
    n_groups = pd.Series(group).groupby(df["user_id"].to_numpy()).transform("max").to_numpy() + 1
    from_end = n_groups - 1 - group  # 0 = the user's last group
    eligible = n_groups >= config.min_train_groups + config.val_groups + config.test_groups
    is_test = eligible & (from_end < config.test_groups)
    is_val = eligible & ~is_test & (from_end < config.test_groups + config.val_groups)
    is_train = ~is_test & ~is_val
    return Splits(
        train=df.loc[is_train].reset_index(drop=True),
        validation=df.loc[is_val].reset_index(drop=True),
        test=df.loc[is_test].reset_index(drop=True),
        config=config,
    )


def make_requests(clicks: pd.DataFrame) -> Requests:
    """Group clicks into (user, query) requests with their relevant sticker sets.

    Requests are ordered by user then by first click time, so qids are deterministic.
    """
    if clicks.empty:
        return Requests([], {})
    df = clicks.sort_values(["user_id", "ts"], kind="stable")
    grouped = df.groupby(["user_id", "query"], sort=False)["sticker_id"]
    relevant: dict[Request, set[str]] = {}
    for (user, query), ids in grouped:
        relevant[Request(str(user), str(query))] = set(ids.astype(str))
    return Requests(list(relevant), relevant)
