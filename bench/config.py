"""Experiment configs: YAML -> validated pydantic models, with ``-o key=value`` overrides.

An unknown key or a wrong type is a :class:`ConfigError` that names the key (``retrievers.1.parms``).
:func:`load_config` checks the whole config before any dataset, feature or index work: the YAML
itself (duplicate keys and nesting deeper than :data:`MAX_YAML_DEPTH` are refused), names and
labels (:func:`check_name`), seeds, ``baseline``, and every retriever's parameters against its
declaration (:func:`check_retrievers`, :mod:`bench.params`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator)

from bench.errors import ConfigError, closest
from bench.features.config import FeaturesConfig, is_union_tag
from bench.yaml_load import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, load_yaml, safe_yaml_load  # noqa: F401


#: Longest run name, retriever label or experiment name (each becomes a folder / MLflow name).
MAX_NAME_LENGTH = 100
#: Characters a name may hold besides letters and digits (any script): safe in a file name and
#: on a terminal (no separators, spaces, quotes, control or bidi characters).
NAME_PUNCTUATION = "._-+=@"


def check_name(text: str, what: str) -> str:
    """``text`` if it is usable as one folder name and prints as itself on a terminal; else a
    ValueError saying what is allowed."""
    if not text or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise ValueError(f"{what} {text!r} cannot be used as a folder name (no '/', '\\', "
                         "'..' or empty names)")
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} {text[:40]!r}... is {len(text)} characters long "
                         f"(at most {MAX_NAME_LENGTH})")
    bad = next((c for c in text if not (c.isalnum() or c in NAME_PUNCTUATION)), None)
    if bad is not None or text[0] in ".-":
        shown = repr(bad) if bad is not None else repr(text[0]) + " first"
        if bad is not None and not bad.isprintable():
            shown += " (control characters are refused: they move the cursor or forge lines)"
        raise ValueError(f"{what} {text!r} cannot be used as a folder name: character {shown} "
                         f"(use letters, digits and {' '.join(NAME_PUNCTUATION)}; not starting "
                         "with '.' or '-')")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """Where the data comes from: an existing dataset directory, or a builder run on the fly."""

    path: str | None = None
    builder: str | None = None
    source: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    out: str | None = Field(None, description="where a built dataset is written (default: cache)")
    on_invalid: Literal["error", "skip"] = "error"


class SplitSpec(_Strict):
    mode: Literal["per_user", "global_time"] = "per_user"
    val_groups: int = Field(1, ge=0)
    test_groups: int = Field(1, ge=1)
    min_train_groups: int = Field(1, ge=0)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="global_time: share of sessions")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="global_time: share of sessions")


class ProtocolSpec(_Strict):
    """How requests are made (DESIGN §3): ``simulated-users`` (the dataset's clicks, split by
    ``split:``), ``leave-one-query-out`` (one seeded human query per sticker is the test) or
    ``user-split`` (real users split 70/15/15; an example is a history plus a query whose
    target is not in it: :func:`bench.data.protocols.user_split`)."""

    name: Literal["simulated-users", "leave-one-query-out", "user-split"] = "simulated-users"
    seed: int = Field(0, ge=0)
    min_queries: int = Field(2, ge=2)
    validation: bool = Field(False, description="leave-one-query-out: hold out a second query")
    queries_column: str | None = Field(None, description="default: gt_queries, gt_raw_queries")


class RetrieverSpec(_Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("label")
    @classmethod
    def _label(cls, label: str | None) -> str | None:
        return None if label is None else check_name(label, "label")

    @property
    def display(self) -> str:
        return self.label or self.name


class EvaluationSpec(_Strict):
    """How every retriever's list is judged (:mod:`bench.listing`): ``fill: popularity`` appends
    the fitting clicks' popularity order to every list up to the largest k (the same for every
    retriever); ``none`` scores lists as returned. Coverage, tie-aware and as-returned values are
    reported either way."""

    fill: Literal["popularity", "none"] = "popularity"


class TrackingSpec(_Strict):
    uri: str | None = None
    experiment: str | None = Field(None, description="default: the dataset's name")
    enabled: bool = True


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 0
    dataset: DatasetSpec
    split: SplitSpec = Field(default_factory=SplitSpec)
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    retrievers: list[RetrieverSpec]
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    plugins: list[str] = Field(default_factory=list, description="folders of one-file retriever "
                               "plugins (relative to this config), as $PERSRV_BENCH_PLUGINS")
    eval_split: Literal["test", "validation"] = "test"
    batch_size: int = Field(2048, ge=1)
    output_dir: str = "persrv-runs"
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    report: bool = True
    baseline: str | None = Field(None, description="retriever label significance is tested against")
    seeds: list[int] | None = Field(None, description="repeat the run (dataset simulation, "
                                    "protocol and retriever seeds) once per seed; report mean ± sd")

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name, "name")

    @field_validator("seed")
    @classmethod
    def _seed(cls, seed: int) -> int:
        if seed < 0:
            raise ValueError("a seed is an integer >= 0")
        return seed

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or any(s < 0 for s in seeds)):
            raise ValueError("seeds is a non-empty list of integers >= 0")
        return seeds

    @field_validator("baseline")
    @classmethod
    def _baseline_is_a_label(cls, baseline: str | None, info: ValidationInfo) -> str | None:
        if baseline is None or "retrievers" not in info.data:
            return baseline  # (a bad retrievers list is reported on its own)
        labels = [spec.display for spec in info.data["retrievers"]]
        if baseline not in labels:
            close = closest(baseline, labels)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ValueError(f"not a retriever label{hint}; labels: {', '.join(labels)}")
        return baseline

    @field_validator("retrievers")
    @classmethod
    def _unique_labels(cls, specs: list[RetrieverSpec]) -> list[RetrieverSpec]:
        if not specs:
            raise ValueError("name at least one retriever (persrv-bench retrievers lists them)")
        seen: set[str] = set()
        for spec in specs:
            if spec.display in seen:
                raise ValueError(f"two retrievers are labelled {spec.display!r}; give one a "
                                 "different `label`")
            seen.add(spec.display)
        return specs

    @property
    def depth(self) -> int:
        return max(self.ks)

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True)
                              .encode()).hexdigest()[:12]


def known_keys(loc: tuple) -> list[str]:
    """The keys allowed where ``loc`` (a pydantic error location) points, e.g. ``("split",
    "val_grups")`` -> SplitSpec's fields."""
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if is_union_tag(part) or isinstance(part, int) or str(part).isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(getattr(model, "model_fields", {}))


def did_you_mean(loc: tuple) -> str:
    """`` (did you mean 'val_groups'?)`` for a misspelt key, else ''."""
    close = closest(loc[-1], known_keys(tuple(loc)))
    return f" (did you mean {close!r}?)" if close else ""


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not is_union_tag(p)) or "(top level)"


def validate_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; the error names the first offending key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    if isinstance(raw.get("features"), dict):  # its own messages (union branches folded)
        from bench.features.config import validate_features
        try:
            validate_features(raw["features"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        # an unknown key first, the deepest location first (a union's branches fail alike)
        for err in sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden",
                                                      -len(e["loc"])))[:3]:
            loc = _format_loc(err["loc"])
            loc = loc if len(loc) <= 80 else loc[:77] + "..."  # a key is input too: keep it short
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key {loc!r}{did_you_mean(err['loc'])}")
            elif err["type"] == "missing":
                lines.append(f"missing key {loc!r}")
            else:
                got = repr(err.get("input"))
                got = got if len(got) <= 80 else got[:77] + "..."
                msg = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"{loc!r}: {msg} (got {got})")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a","b","0","c"], yaml-parsed value)."""
    import yaml
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = load_yaml(value, f"override {key.strip()!r}") if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def split_bare_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra-style arguments after the config path: ``key=value`` items are overrides, the
    rest is returned unchanged (e.g. extra seeds after ``--seeds 0``)."""
    overrides = [a for a in args if "=" in a]
    return overrides, [a for a in args if "=" not in a]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``-o`` overrides to a raw config mapping (lists indexed by number)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(f"override {text!r}: no list item {part!r} at "
                                      f"{'.'.join(path[:i + 1])}") from None
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is not a "
                                      "mapping")
        last = path[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError):
                raise ConfigError(f"override {text!r}: no list item {last!r}") from None
        else:
            node[last] = value
    return raw


def read_yaml_config(path: str | Path, overrides: list[str] | None = None) -> Any:
    """A YAML config file as raw data, with ``-o key=value`` overrides applied to a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // 1000} kB; is this a "
                              "config file?")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    raw = safe_yaml_load(text, str(p)) or {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides or []))
    return raw


def check_retrievers(cfg: ExperimentConfig, source: str = "config") -> None:
    """Every retriever's name and parameters against its declaration (:mod:`bench.params`):
    one-line :class:`ConfigError` naming ``retrievers.<i>``, the key, the value and what is
    allowed. Construction is cheap (DESIGN §5): nothing is fitted or loaded."""
    from bench.errors import BenchError
    from bench.registry import get_retriever_class, make_retriever
    for i, spec in enumerate(cfg.retrievers):
        try:
            # a retriever that composes others (fusion) may name them by their labels in this
            # experiment: its optional ``resolve_params`` turns those into full specs
            resolve = getattr(get_retriever_class(spec.name), "resolve_params", None)
            if callable(resolve):
                spec.params = resolve(dict(spec.params), cfg.retrievers)
            make_retriever(spec.name, spec.params)
        except BenchError as exc:
            raise type(exc)(f"{source}: retrievers.{i} ({spec.display}): {exc}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply overrides, validate all of it (retriever
    parameters included) before any work."""
    p = Path(path)
    cfg = validate_config(read_yaml_config(p, overrides), source=str(p))
    cfg_dir = p.resolve().parent
    if cfg.plugins:  # plugin folders (relative: to the config's folder) before names are checked
        from bench.registry import load_plugins
        cfg.plugins = [str((cfg_dir / d).resolve()) if not Path(d).is_absolute() else d
                       for d in cfg.plugins]
        load_plugins(cfg.plugins)
    check_retrievers(cfg, source=str(p))
    ds = cfg.dataset
    for attr in ("path", "source"):
        value = getattr(ds, attr)
        if value:
            setattr(ds, attr, str(resolve_data_path(value, cfg_dir)))
    return cfg


def resolve_data_path(value: str, cfg_dir: Path) -> Path:
    """A relative data path is tried against the working directory, then the config's folder and
    its parent (so ``../shared/...`` works from the repository root and from ``experiments/``)."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in (cfg_dir, cfg_dir.parent):
        if (base / p).exists():
            return (base / p).resolve()
    return p
