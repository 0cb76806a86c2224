"""Seeded simulated users on real items (DESIGN §4).

Each user has a concentrated style preference (Dirichlet over ``group_col``, e.g. ``gt_style`` or
``gt_pack``) and a few topic interests (over ``topic_col``). A user's timeline is a sequence of
click-groups (search sessions): each picks a topic, then an item of that topic with probability
proportional to the user's preference for the item's style times the item's Zipfian popularity,
then a query drawn from that item's real human-written queries. Some groups hold 2-3 clicks on
different items of the same topic (relevant sets > 1); some repeat an earlier (query, sticker) of
the same user. A fraction of the distinct query strings is *held out*: used only in a user's last
``heldout_tail_groups`` groups (validation/test), never in the history, so test queries are partly
unseen. At each tail position exactly ``ceil(heldout_request_share x users)`` groups (default share:
``heldout_query_fraction``) are drawn on an item that has a held-out query and use one (never a
repeat), the other tail groups use open queries, so validation and test get the same unseen
share. :func:`heldout_queries_of` recovers the held-out strings from a built dataset's clicks, so
splits can keep them out of every history. Everything is numpy over whole user chunks; the only
Python loops are over distinct query lists and a few fix-up rounds. The knobs are
:class:`~bench.data.simulate_config.SimulatorConfig` (re-exported here).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from bench.data.simulate_config import SimulatorConfig, simulator_config
from bench.errors import DatasetError

__all__ = ["SimulatorConfig", "heldout_queries_of", "simulate_clicks", "simulator_config"]

#: dense (users x styles) / (users x topics) matrices are built for this many cells at a time
_CHUNK_CELLS = 4_000_000
#: (topic, item) redraws of a held-out tail group before it takes any item with a held-out query
_HELD_ROUNDS = 16


# ----------------------------------------------------------------------------------------- helpers

def _pick(cum: np.ndarray, lo_idx: np.ndarray, hi_idx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Index in [lo_idx, hi_idx) drawn proportionally to the increments of ``cum`` (inclusive
    cumulative weights), one draw per row; vectorised over ragged segments."""
    before = np.where(lo_idx > 0, cum[np.maximum(lo_idx - 1, 0)], 0.0)
    target = before + r * (cum[hi_idx - 1] - before)
    idx = np.searchsorted(cum, target, side="right")
    return np.clip(idx, lo_idx, hi_idx - 1)


def _ragged(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each expanded element, flat index starts[row] + offset) for ragged segments."""
    rows = np.repeat(np.arange(len(counts)), counts)
    offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, starts[rows] + offs


def _flatten_queries(ids: Sequence[str], queries_per_item: Mapping[str, Sequence[str]],
                     fraction: float, seed: int):
    """Flat query table, items' (start, n_all, n_open) and the held-out strings.

    Items sharing one list object share its slice, so a corpus of 500k items over 50 concept
    lists costs 50 list walks. Each slice puts the item's open (not held-out) queries first.
    """
    lists: dict[int, Sequence[str]] = {}
    alive: list[Any] = []  # keeps every keyed object alive, so no later one reuses its id()
    item_list = np.empty(len(ids), dtype=np.int64)
    keys: list[int] = []
    for i, sid in enumerate(ids):
        lst = queries_per_item.get(sid)
        key = id(lst) if lst is not None and len(lst) else 0
        if key not in lists:
            lists[key] = [q.strip() for q in lst if isinstance(q, str) and q.strip()] if key else []
            keys.append(key)
            alive.append(lst)
        item_list[i] = key
    distinct = sorted({q for lst in lists.values() for q in lst})
    rng = np.random.default_rng([seed, 1])
    n_hold = int(round(fraction * len(distinct)))
    held = {distinct[j] for j in rng.permutation(len(distinct))[:n_hold]}
    flat: list[str] = []
    slot: dict[int, tuple[int, int, int]] = {}
    for key in keys:
        lst = list(dict.fromkeys(lists[key]))
        open_ = [q for q in lst if q not in held]
        slot[key] = (len(flat), len(lst), len(open_))
        flat.extend(open_ + [q for q in lst if q in held])
    table = np.array([slot[k] for k in keys], dtype=np.int64).reshape(-1, 3)
    pos = pd.Index(keys).get_indexer(item_list)
    return np.array(flat, dtype=object), table[pos, 0], table[pos, 1], table[pos, 2], held


class _Corpus:
    """Items arranged for sampling: cells = (topic, style) with within-cell popularity."""

    def __init__(self, items: pd.DataFrame, queries_per_item, cfg: SimulatorConfig):
        for col in ("sticker_id", cfg.group_col) + ((cfg.topic_col,) if cfg.topic_col else ()):
            if col not in items.columns:
                raise DatasetError("column needed by the simulator is missing (columns: "
                                   f"{', '.join(map(str, items.columns))})", column=col)
        self.ids = items["sticker_id"].astype(str).to_numpy(dtype=object)
        (self.queries, self.q_start, self.q_all, self.q_open,
         self.heldout) = _flatten_queries(self.ids, queries_per_item, cfg.heldout_query_fraction,
                                          cfg.seed)
        self.q_code = pd.factorize(self.queries)[0] if len(self.queries) else np.zeros(0, int)
        styles, self.style_names = pd.factorize(items[cfg.group_col].astype(str), sort=True)
        if cfg.topic_col:
            topics, self.topic_names = pd.factorize(items[cfg.topic_col].astype(str), sort=True)
        else:
            topics, self.topic_names = np.zeros(len(items), np.int64), pd.Index(["all"])
        self.n_styles, self.n_topics = len(self.style_names), len(self.topic_names)
        self.topic_of = topics.astype(np.int64)
        self.q_held = self.q_all - self.q_open
        rng = np.random.default_rng([cfg.seed, 0])
        rank = rng.permutation(len(items))
        pop = (rank + 1.0) ** -cfg.popularity_zipf
        eligible = self.q_all > 0
        self.n_without_queries = int((~eligible).sum())
        if not eligible.any():
            raise DatasetError("no sticker has any query; cannot simulate users")
        item = np.flatnonzero(eligible)
        cell_key = topics[item].astype(np.int64) * self.n_styles + styles[item]
        order = np.lexsort((item, cell_key))
        self.item = item[order]
        cell_of_item = cell_key[order]
        starts = np.flatnonzero(np.r_[True, cell_of_item[1:] != cell_of_item[:-1]])
        self.cell_lo = starts
        self.cell_hi = np.r_[starts[1:], len(order)]
        keys = cell_of_item[starts]
        self.cell_topic, self.cell_style = keys // self.n_styles, keys % self.n_styles
        p = pop[self.item]
        cell_sum = np.add.reduceat(p, starts)
        self.item_cum = np.cumsum(p / np.repeat(cell_sum, self.cell_hi - starts))
        self.cell_pop = cell_sum
        # cells of each topic are contiguous (sorted by topic then style)
        self.topic_lo = np.searchsorted(self.cell_topic, np.arange(self.n_topics), "left")
        self.topic_hi = np.searchsorted(self.cell_topic, np.arange(self.n_topics), "right")
        self.topic_pop = np.bincount(self.cell_topic, weights=cell_sum, minlength=self.n_topics)
        self.live_topics = np.flatnonzero(self.topic_pop > 0)
        self.topic_cum = np.cumsum(self.topic_pop[self.live_topics] / self.topic_pop.sum())
        # items with a held-out query, by popularity: the last resort of a held-out tail group
        self.held_item = np.flatnonzero(self.q_held > 0)
        self.held_cum = np.cumsum(pop[self.held_item]) / pop[self.held_item].sum() \
            if len(self.held_item) else np.zeros(0)


# ---------------------------------------------------------------------------------------- sampling

class _Chunk:
    """Preferences of a block of users and the draws that depend on them."""

    def __init__(self, c: _Corpus, cfg: SimulatorConfig, n: int, rng: np.random.Generator):
        self.c, self.cfg, self.rng = c, cfg, rng
        g = rng.standard_gamma(cfg.style_concentration, size=(n, c.n_styles))
        total = g.sum(axis=1, keepdims=True)
        empty = total[:, 0] <= 0  # underflow with tiny alpha: one style takes all
        if empty.any():
            g[empty, rng.integers(c.n_styles, size=int(empty.sum()))] = 1.0
            total = g.sum(axis=1, keepdims=True)
        self.style = (1 - cfg.style_noise) * g / total + cfg.style_noise / c.n_styles
        live = c.live_topics
        k = np.minimum(1 + rng.poisson(cfg.topics_per_user - 1, size=n), len(live))
        keys = np.log(c.topic_pop[live])[None, :] + rng.gumbel(size=(n, len(live)))
        kmax = int(k.max())
        self.topics = live[np.argsort(-keys, axis=1)[:, :kmax]]
        w = rng.standard_gamma(cfg.topic_concentration, size=(n, kmax)) + 1e-12
        w[np.arange(kmax)[None, :] >= k[:, None]] = 0.0
        self.topic_cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)

    def topics_for(self, users: np.ndarray) -> np.ndarray:
        c, rng = self.c, self.rng
        r = rng.random(len(users))
        j = (self.topic_cum[users] < r[:, None]).sum(axis=1)
        topic = self.topics[users, np.minimum(j, self.topics.shape[1] - 1)]
        explore = rng.random(len(users)) < self.cfg.topic_exploration
        if explore.any():
            t = np.searchsorted(c.topic_cum, rng.random(int(explore.sum())), side="right")
            topic[explore] = c.live_topics[np.minimum(t, len(c.live_topics) - 1)]
        return topic

    def items_for(self, users: np.ndarray, topics: np.ndarray) -> np.ndarray:
        """Corpus row of an item of each topic: style by preference x cell popularity."""
        c, rng = self.c, self.rng
        rows, cells = _ragged(c.topic_lo[topics], c.topic_hi[topics] - c.topic_lo[topics])
        w = self.style[users[rows], c.cell_style[cells]] * c.cell_pop[cells]
        lo = np.searchsorted(rows, np.arange(len(users)), "left")
        hi = np.searchsorted(rows, np.arange(len(users)), "right")
        cell = cells[_pick(np.cumsum(w / np.add.reduceat(w, lo)[rows]), lo, hi,
                           rng.random(len(users)))]
        pos = _pick(c.item_cum, c.cell_lo[cell], c.cell_hi[cell], rng.random(len(users)))
        return c.item[pos]

    def queries_for(self, items: np.ndarray, tail: np.ndarray, want_held: np.ndarray
                    ) -> np.ndarray:
        """Flat query index per click-group. A tail group with ``want_held`` draws among its
        item's held-out queries, every other group among the open ones (all if it has none)."""
        c = self.c
        held = tail & want_held & (c.q_held[items] > 0)
        use_open = ~held & (c.q_open[items] > 0)
        lo = np.where(held, c.q_open[items], 0)
        n = np.where(held, c.q_held[items], np.where(use_open, c.q_open[items], c.q_all[items]))
        r = self.rng.random(len(items))
        return c.q_start[items] + lo + np.minimum(r * n, n - 1).astype(np.int64)

    def draw(self, users: np.ndarray, tail: np.ndarray, want_held: np.ndarray,
             stats: dict[str, int], avoid: np.ndarray | None = None):
        """(topics, items, query indices, history groups on a held-out query) of one group per
        row. A group whose item has no held-out query though it wants one, or whose query code
        equals ``avoid`` (the previous group's), redraws (topic, item, query), at most
        ``_HELD_ROUNDS`` times; a group still without a held-out query (or clashing) then takes
        items with one by popularity (counted in ``stats``)."""
        c = self.c
        topics = self.topics_for(users)
        items = self.items_for(users, topics)
        q = self.queries_for(items, tail, want_held)

        def bad(rows: np.ndarray) -> np.ndarray:
            out = want_held[rows] & (c.q_held[items[rows]] == 0)
            return out if avoid is None else out | (c.q_code[q[rows]] == avoid[rows])

        need = bad(np.arange(len(users)))
        stats["heldout_item_redraws"] += int((want_held & (c.q_held[items] == 0)).sum())
        for _ in range(_HELD_ROUNDS):
            idx = np.flatnonzero(need)
            if not len(idx):
                break
            topics[idx] = self.topics_for(users[idx])
            items[idx] = self.items_for(users[idx], topics[idx])
            q[idx] = self.queries_for(items[idx], tail[idx], want_held[idx])
            need[idx] = bad(idx)
        stats["heldout_popularity_fallbacks"] += int((need & want_held).sum())
        for _ in range(_HELD_ROUNDS):
            left = np.flatnonzero(need & want_held)
            if not len(left):
                break
            pick = np.searchsorted(c.held_cum, self.rng.random(len(left)), side="right")
            items[left] = c.held_item[np.minimum(pick, len(c.held_item) - 1)]
            topics[left] = c.topic_of[items[left]]
            q[left] = self.queries_for(items[left], tail[left], want_held[left])
            need[left] = bad(left)
        return topics, items, q, int((~tail & (c.q_open[items] == 0)).sum())


def _held_groups(from_end: np.ndarray, cfg: SimulatorConfig, c: _Corpus,
                 rng: np.random.Generator) -> np.ndarray:
    """Tail groups that use a held-out query: exactly ``ceil(share x m)`` of the m groups at each
    tail position (random ones), so validation and test get the same share."""
    want = np.zeros(len(from_end), bool)
    if cfg.request_share <= 0 or not len(c.held_item):
        return want
    for s in range(cfg.heldout_tail_groups):
        rows = np.flatnonzero(from_end == s)
        k = int(np.ceil(cfg.request_share * len(rows) - 1e-9))
        want[rows[rng.permutation(len(rows))[:k]]] = True
    return want


def simulate_clicks(items: pd.DataFrame, queries_per_item: Mapping[str, Sequence[str]],
                    config: SimulatorConfig | None = None) -> pd.DataFrame:
    """Simulated clicks ``[user_id, query, sticker_id, ts]``, sorted by user then time.

    ``items`` needs ``sticker_id``, ``config.group_col`` and ``config.topic_col``;
    ``queries_per_item`` maps sticker ids to their real queries (items without any are never
    clicked). Same inputs and seed give the same frame. Counters (held-out queries, fallbacks,
    repeats, ...) are in ``frame.attrs["simulator_stats"]``, the held-out query strings in
    ``frame.attrs["heldout_queries"]``.
    """
    cfg = (config or SimulatorConfig()).validate()
    c = _Corpus(items, queries_per_item, cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    extra = rng.geometric(1.0 / (cfg.groups_per_user - cfg.min_groups_per_user + 1),
                          size=cfg.n_users) - 1
    n_groups = np.minimum(cfg.min_groups_per_user + extra, cfg.max_groups_per_user)
    block = max(1, _CHUNK_CELLS // max(c.n_styles, c.n_topics, 1))
    parts, stats = [], {"history_fallback_groups": 0, "merged_groups": 0, "repeat_groups": 0,
                        "multi_click_groups": 0, "heldout_tail_groups_drawn": 0,
                        "heldout_item_redraws": 0, "heldout_popularity_fallbacks": 0}
    for b, lo in enumerate(range(0, cfg.n_users, block)):
        hi = min(cfg.n_users, lo + block)
        parts.append(_simulate_block(c, cfg, n_groups[lo:hi], lo,
                                     np.random.default_rng([cfg.seed, 3, b]), stats))
    clicks = pd.concat(parts, ignore_index=True)
    width = max(5, len(str(cfg.n_users - 1)))
    uid = np.array([f"{cfg.user_prefix}{i:0{width}d}" for i in range(cfg.n_users)], dtype=object)
    out = pd.DataFrame({
        "user_id": uid[clicks["user"].to_numpy()],
        "query": c.queries[clicks["q"].to_numpy()],
        "sticker_id": c.ids[clicks["item"].to_numpy()],
        "ts": clicks["ts"].to_numpy(np.int64),
    })
    stats.update(users=int(cfg.n_users), clicks=int(len(out)),
                 groups=int(n_groups.sum()), heldout_queries=len(c.heldout),
                 distinct_queries=int(len(set(c.queries.tolist()))),
                 items_without_queries=c.n_without_queries,
                 styles=int(c.n_styles), topics=int(c.n_topics))
    out.attrs["simulator_stats"] = stats
    out.attrs["heldout_queries"] = sorted(c.heldout)
    return out


def _simulate_block(c: _Corpus, cfg: SimulatorConfig, n_groups: np.ndarray, first_user: int,
                    rng: np.random.Generator, stats: dict[str, int]) -> pd.DataFrame:
    n = len(n_groups)
    ch = _Chunk(c, cfg, n, rng)
    user = np.repeat(np.arange(n), n_groups)
    user_first = np.repeat(np.cumsum(n_groups) - n_groups, n_groups)
    pos = np.arange(len(user)) - user_first
    from_end = np.repeat(n_groups, n_groups) - 1 - pos
    tail = from_end < cfg.heldout_tail_groups
    want_held = _held_groups(from_end, cfg, c, rng)
    topic, item, q, fallback = ch.draw(user, tail, want_held, stats)
    # repeats: copy (topic, item, query) of a uniformly chosen earlier group of the same user,
    # not the one just before (the two would merge into one click-group); held-out tail groups
    # never repeat (an earlier query is a seen one)
    rep = (pos > 1) & ~want_held & (rng.random(len(user)) < cfg.repeat_query_prob)
    src = np.where(rep, user_first + (rng.random(len(user)) * (pos - 1)).astype(np.int64),
                   np.arange(len(user)))
    while rep[src].any():  # follow chains back to an original group (indices strictly drop)
        src = np.where(rep[src], src[src], src)
    fallback -= int((rep & ~tail & (c.q_open[item] == 0)).sum())
    topic, item, q = topic[src], item[src], q[src]
    # a group with the same query as the one before would merge with it: redraw it
    for _ in range(8):
        clash = np.flatnonzero((pos > 0) & (c.q_code[q] == np.r_[-1, c.q_code[q][:-1]]))
        if not len(clash):
            break
        t2, i2, q2, fb = ch.draw(user[clash], tail[clash], want_held[clash], stats,
                                 avoid=c.q_code[q[clash - 1]])
        topic[clash], item[clash], q[clash] = t2, i2, q2
        fallback += fb
        rep[clash] = False
    stats["merged_groups"] += int(((pos > 0) & (c.q_code[q] == np.r_[-1, c.q_code[q][:-1]])).sum())
    stats["history_fallback_groups"] += fallback
    stats["repeat_groups"] += int(rep.sum())
    stats["heldout_tail_groups_drawn"] += int((tail & (q - c.q_start[item] >= c.q_open[item])).sum())
    # extra clicks on other items of the same topic, by the same preference
    n_extra = np.where(rng.random(len(user)) < cfg.multi_click_prob,
                       rng.integers(1, max(cfg.max_clicks_per_group, 2), size=len(user)), 0)
    if cfg.max_clicks_per_group < 2:
        n_extra[:] = 0
    g_extra = np.repeat(np.arange(len(user)), n_extra)
    x_item = ch.items_for(user[g_extra], topic[g_extra])
    group = np.r_[np.arange(len(user)), g_extra]
    click_item = np.r_[item, x_item]
    order = np.lexsort((np.r_[np.zeros(len(user)), np.arange(1, len(g_extra) + 1)], group))
    group, click_item = group[order], click_item[order]
    keep = ~pd.DataFrame({"g": group, "i": click_item}).duplicated().to_numpy()
    group, click_item = group[keep], click_item[keep]
    stats["multi_click_groups"] += int((np.bincount(group) > 1).sum())
    # timestamps: per-user start, exponential gaps between groups, click_gap_s within a group
    within = np.arange(len(group)) - np.searchsorted(group, group, "left")
    gap = (cfg.max_clicks_per_group * cfg.click_gap_s + 1
           + rng.exponential(cfg.session_gap_s, size=len(user))).astype(np.int64)
    gap[pos == 0] = 0
    cum = np.cumsum(gap)
    group_ts = (cfg.start_ts + rng.integers(0, cfg.span_s, size=n)[user]
                + cum - cum[user_first])
    return pd.DataFrame({
        "user": user[group] + first_user,
        "item": click_item,
        "q": q[group],
        "ts": group_ts[group] + within * cfg.click_gap_s,
    })


def heldout_queries_of(interactions: pd.DataFrame, simulator: Mapping[str, Any] | None
                       ) -> frozenset[str]:
    """The held-out query strings a simulated dataset used, recovered from its clicks.

    ``simulator``: the ``"simulator"`` entry of ``dataset.json`` (None or empty: not simulated,
    no held-out queries). The simulator uses a held-out string only in a user's last
    ``heldout_tail_groups`` click-groups, so the held-out strings are the queries that occur
    *only* there. (A history group that had to fall back to a held-out query, counted in
    ``stats.history_fallback_groups``, makes its string an open one.)
    """
    if not simulator or not float(simulator.get("heldout_query_fraction", 0) or 0) \
            or len(interactions) == 0:
        return frozenset()
    from bench.data.splits import click_groups
    tail = int(simulator.get("heldout_tail_groups", 0))
    df = interactions.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    group = click_groups(df)
    n_groups = pd.Series(group).groupby(df["user_id"].to_numpy()).transform("max").to_numpy() + 1
    in_tail = group >= n_groups - tail
    open_queries = set(df.loc[~in_tail, "query"])
    return frozenset(set(df.loc[in_tail, "query"]) - open_queries)
