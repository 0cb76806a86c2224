"""Every knob of the user simulator (:mod:`bench.data.simulate`), validated; stored in
``dataset.json`` under ``"simulator"``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from bench.errors import ConfigError


@dataclass
class SimulatorConfig:
    """Every knob of the simulator; stored in ``dataset.json`` under ``"simulator"``."""

    n_users: int = 1000
    groups_per_user: float = 8.0          # mean click-groups (search sessions) per user
    min_groups_per_user: int = 3          # splits need >= 3 (train, validation, test)
    max_groups_per_user: int = 100        # tail cap of the shifted-geometric distribution
    multi_click_prob: float = 0.25        # a group clicks 2..max_clicks_per_group stickers
    max_clicks_per_group: int = 3
    group_col: str = "gt_style"           # what a user's style preference is over
    topic_col: str | None = "gt_topic"    # None: one topic for all items
    style_concentration: float = 0.3      # Dirichlet alpha; small = concentrated preference
    style_noise: float = 0.05             # mixed-in uniform style preference
    topics_per_user: float = 3.0          # mean number of topic interests (>= 1)
    topic_concentration: float = 1.0      # Dirichlet alpha over the user's topics
    topic_exploration: float = 0.1        # a group ignores the interests (topic by popularity)
    popularity_zipf: float = 1.0          # item weight 1 / rank**s, ranks a seeded permutation
    heldout_query_fraction: float = 0.2   # of distinct query strings, kept out of the history
    heldout_tail_groups: int = 2          # groups at a timeline's end that may use them
    heldout_request_share: float | None = None  # of groups at each tail position that use one
    #                                             (None: heldout_query_fraction)
    repeat_query_prob: float = 0.15       # a group repeats an earlier (query, sticker)
    session_gap_s: float = 86_400.0       # mean seconds between a user's groups
    click_gap_s: int = 10                 # seconds between clicks of one group
    start_ts: int = 1_700_000_000
    span_s: int = 30 * 86_400             # users start uniformly in [start_ts, start_ts + span)
    user_prefix: str = "u"
    seed: int = 0

    def __post_init__(self) -> None:
        share = self.heldout_request_share  # CLI / builder params give text
        if isinstance(share, str):
            try:
                self.heldout_request_share = None if share.strip().lower() in ("", "none") \
                    else float(share)
            except ValueError:
                raise ConfigError(f"simulator.heldout_request_share = {share!r}: expected a "
                                  "number in [0, 1] or none") from None

    def validate(self) -> "SimulatorConfig":
        """Raise :class:`ConfigError` naming the first invalid knob."""
        def bad(key: str, why: str) -> None:
            raise ConfigError(f"simulator.{key} = {getattr(self, key)!r}: {why}")
        if self.n_users < 1:
            bad("n_users", "must be >= 1")
        if self.min_groups_per_user < 1:
            bad("min_groups_per_user", "must be >= 1")
        if not self.min_groups_per_user <= self.groups_per_user <= self.max_groups_per_user:
            bad("groups_per_user", "must lie in [min_groups_per_user, max_groups_per_user]")
        if self.max_clicks_per_group < 1:
            bad("max_clicks_per_group", "must be >= 1")
        for key in ("multi_click_prob", "style_noise", "topic_exploration",
                    "heldout_query_fraction", "repeat_query_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, "must be a probability in [0, 1]")
        for key in ("style_concentration", "topic_concentration"):
            if getattr(self, key) <= 0:
                bad(key, "must be > 0")
        if self.topics_per_user < 1:
            bad("topics_per_user", "must be >= 1")
        if self.popularity_zipf < 0:
            bad("popularity_zipf", "must be >= 0")
        if self.heldout_tail_groups < 0:
            bad("heldout_tail_groups", "must be >= 0")
        if self.heldout_request_share is not None and not 0.0 <= self.heldout_request_share <= 1.0:
            bad("heldout_request_share", "must be None or a probability in [0, 1]")
        if self.session_gap_s < 0 or self.click_gap_s < 1 or self.span_s < 1:
            bad("click_gap_s", "gaps must be >= 0 (session) / >= 1 (click, span)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def request_share(self) -> float:
        """Share of the groups at each tail position that use a held-out query."""
        return (self.heldout_query_fraction if self.heldout_request_share is None
                else self.heldout_request_share)


def simulator_config(overrides: Mapping[str, Any] | SimulatorConfig | None = None,
                     **defaults: Any) -> SimulatorConfig:
    """A validated config: ``SimulatorConfig`` defaults < ``defaults`` < ``overrides``."""
    if isinstance(overrides, SimulatorConfig):
        return overrides.validate()
    fields = {f.name for f in dataclasses.fields(SimulatorConfig)}
    merged = {**defaults, **(overrides or {})}
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise ConfigError(f"unknown simulator parameter(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(fields))}")
    return SimulatorConfig(**merged).validate()
