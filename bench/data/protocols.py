"""Evaluation protocols (DESIGN §3): how a dataset becomes train / validation / test clicks.

- ``simulated-users`` (default): the dataset's clicks, split by the ``split:`` section
  (:func:`bench.data.splits.split_interactions`); the simulator's held-out queries (recovered by
  :func:`bench.data.simulate.heldout_queries_of`) never enter a history.
- ``leave-one-query-out``: for datasets whose stickers carry several human queries (the
  sticker-queries builder's ``gt_queries``, persrv-csv's ``gt_raw_queries``). Per sticker with at
  least ``min_queries`` queries, one seeded query is the test request of a pseudo-user
  ``loqo-<sticker_id>`` whose only relevant sticker is that one; every other query is a fitting
  click of the single user ``loqo-field`` (the historical-query field). One pseudo-user per
  sticker makes the macro metrics the mean over held-out queries (one per sticker), two stickers
  sharing a held-out string stay two requests, and no test user has a personal history.
  ``validation: true`` holds out a second query (pseudo-user ``loqo-val-<sticker_id>``) on
  stickers with at least ``max(min_queries, 3)`` queries; it joins the field for the test run.
  The dataset's own (simulated) clicks are not used.
- ``user-split``: the PerSRV authors' real-user protocol (U-Sticker, arXiv:2502.19108), for
  datasets of real users: users are split 70 / 15 / 15 into train / validation / test (seeded by
  ``seed``). An example is a user's sticker history before a search plus its query; the target
  is the sticker sent; an example whose target is already in that history is removed. Each
  validation or test user contributes one example, the *last* remaining one (a user has one
  history in a :class:`Splits`): the user's uses before it are history (``train``), the uses
  after it are dropped. Train users' uses are all history. Evaluation users without any example
  are dropped; every count is in the report.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pandas as pd

from bench.data.splits import (
    SplitConfig,
    Splits,
    split_interactions,
    unseen_query_report,
)
from bench.errors import ConfigError, DatasetError

PROTOCOLS = ("simulated-users", "leave-one-query-out", "user-split")
#: user-split: shares of users in train / validation / test
USER_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
QUERY_COLUMNS = ("gt_queries", "gt_raw_queries")
FIELD_USER = "loqo-field"
TEST_USER_PREFIX = "loqo-"
VALIDATION_USER_PREFIX = "loqo-val-"
_SEPARATORS = re.compile("[,，]")


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def split_config(split_cfg: Any = None) -> SplitConfig:
    """A :class:`SplitConfig` from a config ``SplitSpec``, a mapping, a SplitConfig or None."""
    if split_cfg is None or isinstance(split_cfg, SplitConfig):
        return split_cfg or SplitConfig()
    raw = split_cfg if isinstance(split_cfg, dict) else split_cfg.model_dump()
    return SplitConfig(**raw)


def protocol_splits(ds, protocol_cfg: Any = None, split_cfg: Any = None) -> Splits:
    """Train / validation / test of ``ds`` (a :class:`bench.data.format.Dataset`) under the
    protocol ``protocol_cfg`` (config ``ProtocolSpec``, mapping or None = simulated-users).
    ``Splits.split_report()`` says what was dropped, moved or held out."""
    from bench.data.simulate import heldout_queries_of
    name = _get(protocol_cfg, "name", "simulated-users")
    if name == "simulated-users":
        held = heldout_queries_of(ds.interactions, ds.meta.get("simulator"))
        splits = split_interactions(ds.interactions, split_config(split_cfg), held)
        splits.report = {"protocol": name, **splits.report}
        return splits
    if name == "leave-one-query-out":
        return leave_one_query_out(ds, seed=int(_get(protocol_cfg, "seed", 0)),
                                   min_queries=int(_get(protocol_cfg, "min_queries", 2)),
                                   validation=bool(_get(protocol_cfg, "validation", False)),
                                   queries_column=_get(protocol_cfg, "queries_column", None))
    if name == "user-split":
        return user_split(ds.interactions, seed=int(_get(protocol_cfg, "seed", 0)))
    raise ConfigError(f"protocol.name = {name!r}: expected one of {', '.join(PROTOCOLS)}")


def _parse_queries(value: Any, file: str, row: int, column: str) -> list[str]:
    """A sticker's human queries: a list, JSON list text, or comma-separated text; stripped,
    empties dropped, case-insensitive duplicates removed (first kept)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        items: list[Any] = []
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif isinstance(value, str) and value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not a JSON list of queries ({exc.msg})", file=file, row=row,
                               column=column) from None
        if not isinstance(items, list):
            raise DatasetError("expected a JSON list of queries", file=file, row=row,
                               column=column)
    else:
        items = _SEPARATORS.split(str(value))
    seen: set[str] = set()
    out = []
    for q in items:
        q = str(q).strip()
        if q and q.casefold() not in seen:
            seen.add(q.casefold())
            out.append(q)
    return out


def sticker_queries(ds, queries_column: str | None = None) -> tuple[str, list[list[str]]]:
    """(column used, queries per sticker in ``ds.stickers`` order)."""
    stickers = ds.stickers
    file = str(ds.root / "stickers.parquet") if ds.root is not None else "stickers"
    column = queries_column or next((c for c in QUERY_COLUMNS if c in stickers.columns), None)
    if column is None or column not in stickers.columns:
        raise DatasetError(f"leave-one-query-out needs a sticker column of human queries "
                           f"(looked for {queries_column or ', '.join(QUERY_COLUMNS)}; columns: "
                           f"{', '.join(map(str, stickers.columns))}); set protocol."
                           "queries_column", file=file)
    return column, [_parse_queries(v, file, i, column) for i, v in enumerate(stickers[column])]


def _clicks(users, queries, stickers, ts0: int) -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(users, dtype=object),
                         "query": pd.Series(queries, dtype=object),
                         "sticker_id": pd.Series(stickers, dtype=object),
                         "ts": np.arange(ts0, ts0 + len(queries), dtype=np.int64)})


def leave_one_query_out(ds, *, seed: int = 0, min_queries: int = 2, validation: bool = False,
                        queries_column: str | None = None) -> Splits:
    """The leave-one-query-out protocol (module docstring); deterministic for a seed."""
    if min_queries < 2:
        raise ConfigError(f"protocol.min_queries = {min_queries}: expected >= 2 (a sticker "
                          "needs a query left in the field)")
    column, per_sticker = sticker_queries(ds, queries_column)
    ids = ds.stickers["sticker_id"].astype(str).tolist()
    n = np.array([len(qs) for qs in per_sticker], dtype=np.int64)
    rng = np.random.default_rng([seed, 15])
    test_pick = np.minimum((rng.random(len(n)) * n).astype(np.int64), np.maximum(n - 1, 0))
    val_pick = np.minimum((rng.random(len(n)) * (n - 1)).astype(np.int64), np.maximum(n - 2, 0))
    val_pick = val_pick + (val_pick >= test_pick)  # any query but the test one
    tested = n >= min_queries
    with_val = tested & (n >= max(min_queries, 3)) if validation else np.zeros(len(n), bool)
    field, val, test = ([], [], []), ([], [], []), ([], [], [])
    for i, (sid, qs) in enumerate(zip(ids, per_sticker)):
        for j, q in enumerate(qs):
            if tested[i] and j == test_pick[i]:
                target, user = test, TEST_USER_PREFIX + sid
            elif with_val[i] and j == val_pick[i]:
                target, user = val, VALIDATION_USER_PREFIX + sid
            else:
                target, user = field, FIELD_USER
            target[0].append(user)
            target[1].append(q)
            target[2].append(sid)
    train = _clicks(*field, 0)
    validation_clicks = _clicks(*val, len(train))
    test_clicks = _clicks(*test, len(train) + len(validation_clicks))
    report: dict[str, Any] = {
        "protocol": "leave-one-query-out", "queries_column": column, "seed": int(seed),
        "min_queries": int(min_queries), "stickers": int(len(ids)),
        "stickers_tested": int(tested.sum()), "stickers_below_min_queries": int((~tested).sum()),
        "stickers_without_queries": int((n == 0).sum()), "field_clicks": int(len(train)),
        "dataset_clicks_not_used": int(len(ds.interactions))}
    splits = Splits(train, validation_clicks, test_clicks, SplitConfig(val_groups=int(validation)),
                    frozenset(), report)
    report.update(unseen_query_report(splits))
    return splits


def user_split(interactions: pd.DataFrame, *, seed: int = 0,
               fractions: tuple[float, float, float] = USER_SPLIT_FRACTIONS) -> Splits:
    """The user-split protocol (module docstring); deterministic for a seed."""
    df = interactions.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    users = np.sort(df["user_id"].astype(str).unique())
    order = np.random.default_rng([seed, 16]).permutation(len(users))
    n_val = int(round(fractions[1] * len(users)))
    n_test = int(round(fractions[2] * len(users)))
    role = pd.Series("train", index=users[order], dtype=object)
    role.iloc[len(users) - n_val - n_test:len(users) - n_test] = "validation"
    role.iloc[len(users) - n_test:] = "test"
    user = df["user_id"].astype(str)
    part = user.map(role).to_numpy(dtype=object)
    # target already in the user's history: an earlier use of the same sticker by the user
    repeat = df.duplicated(["user_id", "sticker_id"]).to_numpy()
    pos = np.arange(len(df))
    evaluated = part != "train"
    candidate = pd.Series(np.where(evaluated & ~repeat, pos, -1)).groupby(user.to_numpy()).max()
    example_pos = user.map(candidate).to_numpy()
    is_example = evaluated & (pos == example_pos)
    before = evaluated & (example_pos >= 0) & (pos < example_pos)
    train_mask = (part == "train") | before
    report: dict[str, Any] = {
        "protocol": "user-split", "seed": int(seed), "fractions": list(fractions),
        "users": int(len(users)), "train_users": int(len(users) - n_val - n_test),
        "validation_users": int(n_val), "test_users": int(n_test),
        "evaluation_uses_target_in_history": int((evaluated & repeat).sum()),
        "evaluation_users_without_example": int(
            len(set(user[evaluated])) - int(is_example.sum())),
        "evaluation_uses_after_example_dropped": int((evaluated & (pos > example_pos)).sum()),
        "evaluation_uses_of_users_without_example_dropped": int(
            (evaluated & (example_pos < 0)).sum())}
    splits = Splits(train=df.loc[train_mask].reset_index(drop=True),
                    validation=df.loc[is_example & (part == "validation")].reset_index(drop=True),
                    test=df.loc[is_example & (part == "test")].reset_index(drop=True),
                    config=SplitConfig(), heldout_queries=frozenset(), report=report)
    report.update(unseen_query_report(splits))
    return splits
