"""What ``calibrate`` sweeps (planted effects, their builder knob and levels, null first) and
what it measures (retriever pairs on a request segment).

Arms (retrievers evaluated at each level): ``persrv`` and its ablations, the positive control
``persrv-style`` (:mod:`baselines.persrv_style`: re-ranks every candidate toward the user's
style), and two *placebo* arms: ``persrv-style`` fitted on the history with every user's clicks
relabelled to another user (a seeded cyclic shift of the users, two different shifts), so each
request is personalised toward someone else's history. The **null control** is the A/A
difference of the two placebos: the same mechanism with no information about the user, whose
paired CI must include 0 at every level (otherwise the paired statistics, not the bed, are
wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import ConfigError


@dataclass(frozen=True)
class Arm:
    """A retriever evaluated at each level; ``shift``: placebo user relabelling (0: none)."""

    name: str
    retriever: str
    shift: int = 0


ARMS = {a.name: a for a in (
    Arm("persrv", "persrv"),
    Arm("no-personalization", "persrv-no-personalization"),
    Arm("no-utility", "persrv-no-utility"),
    Arm("no-description", "persrv-no-description"),
    Arm("style", "persrv-style"),
    Arm("placebo-a", "persrv-style", shift=1),
    Arm("placebo-b", "persrv-style", shift=2),
)}


@dataclass(frozen=True)
class Measure:
    """``treatment - control`` (per-user means of the metric over ``segment``'s requests; None:
    every request), ``role``: retriever | positive control | null control."""

    key: str
    label: str
    treatment: str
    control: str
    segment: str | None
    role: str = "retriever"


MEASURES = {m.key: m for m in (
    Measure("personalisation_discover", "persrv - no-personalization (discover)", "persrv",
            "no-personalization", "discover"),
    Measure("personalisation_all", "persrv - no-personalization (all requests)", "persrv",
            "no-personalization", None),
    Measure("positive_control", "persrv-style - no-personalization (discover)", "style",
            "no-personalization", "discover", "positive control"),
    Measure("null_control", "placebo A/A: style toward two other users (discover)",
            "placebo-a", "placebo-b", "discover", "null control"),
    Measure("description_unseen", "persrv - no-description (unseen_query)", "persrv",
            "no-description", "unseen_query"),
    Measure("utility_all", "persrv - no-utility (all requests)", "persrv", "no-utility", None),
)}


@dataclass(frozen=True)
class Effect:
    """A planted effect: the dataset builder parameter ``knob`` swept over ``levels`` (null
    first) and the measures that should respond to it (the null control is always added)."""

    name: str
    knob: str
    levels: tuple
    measures: tuple[str, ...]
    description: str


EFFECTS = {e.name: e for e in (
    Effect("style", "style_noise", (1.0, 0.5, 0.0),
           ("personalisation_discover", "positive_control"),
           "style preference: style_noise 1 = uniform (none planted), 0 = Dirichlet only"),
    Effect("repeat", "repeat_query_prob", (0.0, 0.15, 0.5), ("personalisation_all",),
           "query repetition: share of click-groups repeating an earlier (query, sticker)"),
    Effect("popularity", "popularity_zipf", (0.0, 0.5, 1.0), ("utility_all",),
           "popularity skew: Zipf exponent of item popularity"),
    Effect("content", "content_overlap", (0.0, 0.44, 0.9), ("description_unseen",),
           "query-content overlap: share of (sticker, query) pairs sharing a word"),
)}


def measures_of(effect: Effect) -> list[Measure]:
    """The effect's measures, then the null control."""
    return [MEASURES[k] for k in effect.measures] + [MEASURES["null_control"]]


def arms_of(effect: Effect) -> list[Arm]:
    """Arms the effect's measures need, in :data:`ARMS` order."""
    need = {a for m in measures_of(effect) for a in (m.treatment, m.control)}
    return [a for name, a in ARMS.items() if name in need]


def parse_levels(specs: tuple[str, ...] | list[str]) -> dict[str, tuple]:
    """``["style=1,0.5,0", "content=adversarial,0.44"]`` -> levels per effect (numbers where
    they parse). Unknown effect names raise ConfigError."""
    out: dict[str, tuple] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or name not in EFFECTS:
            raise ConfigError(f"--levels {spec!r}: expected EFFECT=V1,V2,... with EFFECT one of "
                              f"{', '.join(EFFECTS)}")
        items = []
        for v in values.split(","):
            v = v.strip()
            try:
                items.append(float(v))
            except ValueError:
                items.append(v)
        if not items or items == [""]:
            raise ConfigError(f"--levels {spec!r}: no levels given")
        out[name] = tuple(items)
    return out
