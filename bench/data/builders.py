"""The dataset builder registry: name -> (description, function), with typed parameters.

Every builder is ``fn(source, out, **params) -> Dataset`` writing the canonical format
(DESIGN §2). ``build_dataset`` takes parameters as given on the command line (``k=v`` strings)
or as Python values, coerces them to the type of the builder's default, and rejects unknown
ones. Builders that simulate users also accept every :class:`SimulatorConfig` field
(``n_users=5000``, ``style_concentration=0.1``, ...); their ``seed`` also seeds the simulator.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Callable

from bench.data.emoji_styles import build_emoji_styles
from bench.data.format import Dataset
from bench.data.persrv_csv import build_persrv_csv
from bench.data.simulate import SimulatorConfig
from bench.data.sticker_queries import build_sticker_queries
from bench.data.synthetic import build_synthetic
from bench.data.u_sticker import build_u_sticker
from bench.errors import ConfigError

BUILDERS: dict[str, tuple[str, Callable[..., Dataset]]] = {
    "synthetic": ("seeded synthetic stickers (drawn characters, styles, captions) with "
                  "simulated users; no source needed", build_synthetic),
    "emoji-styles": ("1,607 emoji x 4 openly licensed styles, label + CLDR tags as content, "
                     "held-out emojilib words as queries, simulated users; source = the "
                     "emoji-styles folder (labels=CSV: another language)", build_emoji_styles),
    "sticker-queries": ("StickerQueries human-written queries (text only unless images=DIR), "
                        "simulated users; source = the release CSV", build_sticker_queries),
    "persrv-csv": ("PerSRV reference format with real users; source = interactions CSV "
                   "(uid,query,docid), stickers=PATH.jsonl", build_persrv_csv),
    "u-sticker": ("U-Sticker real users' sticker uses in conversations (query = replied-to or "
                  "preceding text); source = the folder of 1.json..67.json", build_u_sticker),
}
NEEDS_SOURCE = {"emoji-styles", "sticker-queries", "persrv-csv", "u-sticker"}
#: simulator defaults a builder changes (synthetic: n_users 0 = scaled with the corpus)
SIM_DEFAULTS = {"synthetic": {"n_users": 0}}
_TRUE, _FALSE = {"1", "true", "yes", "on", "y"}, {"0", "false", "no", "off", "n"}


def list_builders() -> dict[str, str]:
    """Registered builder names -> one-line descriptions, in registration order."""
    return {name: description for name, (description, _) in BUILDERS.items()}


def _builder(name: str) -> tuple[str, Callable[..., Dataset]]:
    if name not in BUILDERS:
        raise ConfigError(f"unknown dataset builder {name!r}; available: "
                          f"{', '.join(BUILDERS)}")
    return BUILDERS[name]


def builder_params(name: str) -> dict[str, Any]:
    """Parameter name -> default of builder ``name`` (simulator knobs included where users are
    simulated; a default of None means "text, optional")."""
    fn = _builder(name)[1]
    params = {p.name: p.default for p in inspect.signature(fn).parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.name != "simulator"}
    if "simulator" in inspect.signature(fn).parameters:
        for f in dataclasses.fields(SimulatorConfig):
            params.setdefault(f.name, SIM_DEFAULTS.get(name, {}).get(f.name, f.default))
    return params


def _coerce(builder: str, key: str, value: Any, default: Any) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"dataset builder {builder!r}: parameter {key!r} = {value!r} is not "
                           f"{expected}")
    if key == "topic_col" and (value is None or str(value).strip().lower() in ("", "none")):
        return None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise fail("a boolean (true/false)")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value) if isinstance(value, (int, str)) else int("x")
        except ValueError:
            raise fail("an integer") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise fail("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise fail("a number") from None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a YAML number for a text-or-number knob (heldout_request_share: 0.0)
    raise fail("a string")


def build_dataset(name: str, source: str | Path | None, out: str | Path,
                  params: dict[str, str | int | float | bool] | None = None) -> Dataset:
    """Build dataset ``name`` from ``source`` into directory ``out`` and return it loaded.

    ``params`` may be CLI strings; unknown names raise :class:`ConfigError` listing the valid
    ones. The resolved parameters are recorded in ``dataset.json`` (``builder_params``, and
    ``simulator`` where users are simulated).
    """
    _, fn = _builder(name)
    if name in NEEDS_SOURCE and source is None:
        raise ConfigError(f"dataset builder {name!r} needs a source ({BUILDERS[name][0]})")
    valid = builder_params(name)
    sig = inspect.signature(fn).parameters
    own, sim = {}, {}
    for key, value in (params or {}).items():
        if key not in valid:
            raise ConfigError(f"unknown parameter {key!r} for dataset builder {name!r}; valid: "
                              f"{', '.join(sorted(valid))}")
        coerced = _coerce(name, key, value, valid[key])
        (own if key in sig else sim)[key] = coerced
    if "simulator" in sig:
        own["simulator"] = sim
    return fn(Path(source) if source is not None else None, Path(out), **own)
