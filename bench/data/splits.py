"""Splits of the clicks into train / validation / test, and requests (DESIGN §3).

A user's clicks, ordered by ``ts``, form *click-groups*: maximal runs of consecutive clicks with the
same query (one search session). Two modes:

- ``per_user`` (default): the user's last ``test_groups`` groups go to ``test``, the ``val_groups``
  before them to ``validation``, the rest to ``train``; a user with fewer than
  ``min_train_groups + val_groups + test_groups`` groups stays train-only (counted and warned).
- ``global_time``: one cutoff time for everyone (RecBole's "TO" order). The cutoffs are click-group
  start times at the ``1 - test_fraction`` (and ``1 - test_fraction - val_fraction``) quantile;
  a click goes to the split of its own ``ts`` (``ts < cutoff``: earlier split), so no fitting click
  is later than any test click. A session crossing a cutoff is cut (counted); users whose first
  click is after a cutoff are cold (counted).

Held-out queries (``heldout_queries``: the simulator's, see
:func:`bench.data.simulate.heldout_queries_of`) never reach a history: their clicks are dropped from
``train`` and kept out of the final test run's history (``history_for("test")``), both counted.
A request is a (user_id, query) pair within one split; its relevant set is every sticker the user
clicked for that query in that split. ``Splits.report`` holds every count (logged with the run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError, ConfigError
from bench.retrieval import Request

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_MODES = ("per_user", "global_time")


class SplitLeakError(BenchError):
    """An evaluation split's requests can be answered from what its history must not hold."""


@dataclass(frozen=True)
class SplitConfig:
    """``val_groups`` / ``test_groups`` / ``min_train_groups``: ``per_user`` mode;
    ``val_fraction`` / ``test_fraction`` (of click-groups, by start time): ``global_time`` mode."""

    val_groups: int = 1
    test_groups: int = 1
    min_train_groups: int = 1
    mode: str = "per_user"
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in SPLIT_MODES:
            raise ConfigError(f"split.mode = {self.mode!r}: expected one of "
                              f"{', '.join(SPLIT_MODES)}")
        if not (0 < self.test_fraction < 1 and 0 <= self.val_fraction
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigError(f"split.test_fraction = {self.test_fraction}, split.val_fraction = "
                              f"{self.val_fraction}: need 0 < test_fraction, 0 <= val_fraction, "
                              "sum < 1")


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
    """The three interaction frames of a dataset (each with the canonical columns), the held-out
    query strings and the split report (what was dropped, moved, cut; unseen-query shares)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    config: SplitConfig
    heldout_queries: frozenset[str] = frozenset()
    report: dict[str, Any] = field(default_factory=dict)

    def history_for(self, target: str) -> pd.DataFrame:
        """Clicks a retriever may learn from when evaluated on ``target``.

        ``validation`` -> train only; ``test`` -> train + validation (the final run), without
        validation clicks on held-out queries.
        """
        if target == "validation":
            return self.train
        if target == "test":
            val = self.validation
            if self.heldout_queries and len(val):
                val = val.loc[~val["query"].isin(self.heldout_queries)]
            return pd.concat([self.train, val], ignore_index=True)
        raise ValueError(f"unknown evaluation split {target!r} (expected validation or test)")

    def requests(self, target: str) -> Requests:
        return make_requests(getattr(self, target))

    def future_pairs(self, target: str) -> int:
        """Requests of ``target`` whose (query, relevant sticker) pair occurs in the fitting
        clicks, but only in clicks made after the request (a request's time: its earliest
        click). Non-zero only when the split lets later clicks of other users into the history
        (``per_user``); harmless for stationary simulated users, a leak of the future on real
        logs."""
        ev, hist = getattr(self, target), self.history_for(target)
        if not len(ev) or not len(hist) or "ts" not in ev or "ts" not in hist:
            return 0
        keys = ["user_id", "query"]
        asked = ev.groupby(keys)["ts"].min().rename("asked")
        first = hist.groupby(["query", "sticker_id"])["ts"].min().rename("first")
        pairs = (ev[[*keys, "sticker_id"]].drop_duplicates().join(asked, on=keys)
                 .join(first, on=["query", "sticker_id"]))
        pairs["late"] = pairs["first"].notna() & (pairs["first"] > pairs["asked"])
        pairs["before"] = pairs["first"].notna() & (pairs["first"] <= pairs["asked"])
        per = pairs.groupby(keys).agg(late=("late", "any"), before=("before", "any"))
        return int((per["late"] & ~per["before"]).sum())

    def counts(self) -> dict[str, int]:
        return {name: int(len(getattr(self, name))) for name in SPLITS}

    def split_report(self) -> dict[str, Any]:
        """Flat dict for logging: click counts per split, then :attr:`report`."""
        return {**{f"{k}_clicks": v for k, v in self.counts().items()}, **self.report}


def click_groups(interactions: pd.DataFrame) -> np.ndarray:
    """Per-row click-group number within its user (0 = oldest), after a stable sort by user, ts."""
    df = interactions
    new_group = (df["user_id"].ne(df["user_id"].shift()) | df["query"].ne(df["query"].shift()))
    gid = new_group.cumsum().to_numpy()
    user_start = df["user_id"].ne(df["user_id"].shift()).cumsum().to_numpy()
    # group number relative to the user's first group
    first_gid = pd.Series(gid).groupby(user_start).transform("min").to_numpy()
    return gid - first_gid


def _per_user(df: pd.DataFrame, group: np.ndarray, cfg: SplitConfig, report: dict):
    """(is_val, is_test) masks of the per-user mode; counts the train-only users."""
    n_groups = pd.Series(group).groupby(df["user_id"].to_numpy()).transform("max").to_numpy() + 1
    from_end = n_groups - 1 - group  # 0 = the user's last group
    need = cfg.min_train_groups + cfg.val_groups + cfg.test_groups
    eligible = n_groups >= need
    is_test = eligible & (from_end < cfg.test_groups)
    is_val = eligible & ~is_test & (from_end < cfg.test_groups + cfg.val_groups)
    short_users = df.loc[~eligible, "user_id"].nunique()
    report.update(min_groups_needed=int(need), users_too_few_groups=int(short_users),
                  clicks_of_users_too_few_groups=int((~eligible).sum()))
    if short_users:
        log.warning("split: %d users have fewer than %d click-groups and are train-only (their "
                    "%d clicks are history, none is evaluated)", short_users, need,
                    int((~eligible).sum()))
    return is_val, is_test


def _global_time(df: pd.DataFrame, group: np.ndarray, cfg: SplitConfig, report: dict):
    """(is_val, is_test) masks of the global-time mode; counts cut sessions and cold users."""
    ts = df["ts"].to_numpy()
    key = df["user_id"].to_numpy(dtype=object)
    starts = np.sort(pd.Series(ts).groupby([key, group]).min().to_numpy())
    n = len(starts)
    t_test = int(starts[min(n - 1, int(np.floor(n * (1 - cfg.test_fraction))))])
    t_val = int(starts[min(n - 1, int(np.floor(n * (1 - cfg.test_fraction - cfg.val_fraction))))])
    is_test = ts >= t_test
    is_val = ~is_test & (ts >= t_val) if cfg.val_fraction > 0 else np.zeros(len(df), bool)
    part = np.where(is_test, 2, np.where(is_val, 1, 0))
    cut = pd.Series(part).groupby([key, group]).nunique()
    first = pd.Series(part).groupby(key).min()
    report.update(cutoff_validation_ts=t_val if cfg.val_fraction > 0 else None,
                  cutoff_test_ts=t_test, sessions_cut_by_cutoff=int((cut > 1).sum()),
                  cold_validation_users=int((first == 1).sum()),
                  cold_test_users=int((first == 2).sum()))
    return is_val, is_test


def split_interactions(interactions: pd.DataFrame, config: SplitConfig | None = None,
                       heldout_queries: frozenset[str] | set[str] | None = None) -> Splits:
    """Split clicks into train / validation / test (``config.mode``); clicks on
    ``heldout_queries`` never enter a history (see the module docstring)."""
    config = config or SplitConfig()
    held = frozenset(heldout_queries or ())
    df = interactions.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    report: dict[str, Any] = {"mode": config.mode, "users": int(df["user_id"].nunique()),
                              "heldout_queries": len(held)}
    if df.empty:
        empty = df.iloc[0:0]
        return Splits(empty, empty.copy(), empty.copy(), config, held, report)
    group = click_groups(df)
    mode = _per_user if config.mode == "per_user" else _global_time
    is_val, is_test = mode(df, group, config, report)
    is_train = ~is_test & ~is_val
    on_held = df["query"].isin(held).to_numpy() if held else np.zeros(len(df), bool)
    dropped = is_train & on_held
    report.update(
        heldout_clicks_dropped_from_train=int(dropped.sum()),
        users_with_heldout_clicks_dropped=int(df.loc[dropped, "user_id"].nunique()),
        heldout_validation_clicks_kept_out_of_test_history=int((is_val & on_held).sum()))
    splits = Splits(train=df.loc[is_train & ~dropped].reset_index(drop=True),
                    validation=df.loc[is_val].reset_index(drop=True),
                    test=df.loc[is_test].reset_index(drop=True), config=config,
                    heldout_queries=held, report=report)
    report.update(unseen_query_report(splits))
    return splits


def unseen_query_report(splits: Splits) -> dict[str, Any]:
    """Per evaluation split: its request count and the share of requests whose query string
    never occurs in that split's history."""
    out: dict[str, Any] = {}
    for target in ("validation", "test"):
        frame = getattr(splits, target)
        pairs = frame[["user_id", "query"]].drop_duplicates()
        seen = set(splits.history_for(target)["query"])
        out[f"{target}_requests"] = int(len(pairs))
        out[f"{target}_unseen_query_share"] = (
            round(float((~pairs["query"].isin(seen)).mean()), 4) if len(pairs) else None)
    return out


def check_no_leak(splits: Splits, target: str = "test", *, strict: bool = False) -> pd.DataFrame:
    """Requests of ``target`` its history could leak: columns user_id, query, reason.

    Reasons: ``heldout_query_in_history`` (a held-out query string occurs in the history),
    ``same_click_in_history`` (an identical user/query/sticker/ts click is in both),
    ``history_after_request`` (global_time: a history click at or after the request's first
    click; per_user: one of the user's own). ``strict`` raises :class:`SplitLeakError` instead.
    """
    history, frame = splits.history_for(target), getattr(splits, target)
    cols = ["user_id", "query", "sticker_id", "ts"]
    first = frame.groupby(["user_id", "query"], sort=False)["ts"].min().rename("first_ts")
    rows = first.reset_index()
    bad = {}
    if splits.heldout_queries:
        leaked = set(history["query"]) & splits.heldout_queries
        bad["heldout_query_in_history"] = rows["query"].isin(leaked)
    same = frame[cols].merge(history[cols].drop_duplicates(), on=cols)[["user_id", "query"]]
    bad["same_click_in_history"] = rows.set_index(["user_id", "query"]).index.isin(
        pd.MultiIndex.from_frame(same)) if len(same) else np.zeros(len(rows), bool)
    if splits.config.mode == "global_time":
        latest = history["ts"].max() if len(history) else None
        bad["history_after_request"] = rows["first_ts"] <= latest if latest is not None else \
            np.zeros(len(rows), bool)
    else:
        last_own = rows["user_id"].map(history.groupby("user_id")["ts"].max())
        bad["history_after_request"] = (last_own >= rows["first_ts"]).fillna(False)
    found = [rows.loc[np.asarray(mask, bool), ["user_id", "query"]].assign(reason=reason)
             for reason, mask in bad.items()]
    out = pd.concat(found, ignore_index=True)
    if strict and len(out):
        head = out.iloc[0]
        raise SplitLeakError(f"{len(out)} {target} request(s) leak into their history (first: "
                             f"user {head['user_id']!r}, query {head['query']!r}: {head['reason']})")
    return out


def make_requests(clicks: pd.DataFrame) -> Requests:
    """Group clicks into (user, query) requests with their relevant sticker sets.

    Requests are ordered by user then by first click time, so qids are deterministic.
    """
    if clicks.empty:
        return Requests([], {})
    # One pass over plain arrays (a pandas groupby iteration copies the frame's ``attrs``, e.g.
    # the simulator's held-out query list, into every group: 32 s on 116,659 clicks). Same
    # result: groups in order of first appearance, rows with a missing key dropped.
    df = clicks.sort_values(["user_id", "ts"], kind="stable")
    users = df["user_id"].to_numpy(dtype=object)
    queries = df["query"].to_numpy(dtype=object)
    sids = df["sticker_id"].astype(str).to_numpy(dtype=object)
    keep = ~(pd.isna(users) | pd.isna(queries))
    by_pair: dict[tuple[Any, Any], set[str]] = {}
    for user, query, sid in zip(users[keep].tolist(), queries[keep].tolist(),
                                sids[keep].tolist()):
        ids = by_pair.get((user, query))
        if ids is None:
            by_pair[(user, query)] = ids = set()
        ids.add(sid)
    relevant = {Request(str(u), str(q)): ids for (u, q), ids in by_pair.items()}
    return Requests(list(relevant), relevant)
