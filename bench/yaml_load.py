"""Reading YAML configs safely: bounded size, aliases and nesting depth, duplicate keys refused.

Every config of the project (experiments, sweeps, perf) is read through :func:`safe_yaml_load`,
so a malformed file is one :class:`~bench.errors.ConfigError` line naming the file (and line),
before any work.
"""

from __future__ import annotations

from typing import Any

from bench.errors import ConfigError

#: Bounds on a config file: its size, how many YAML aliases (``*name``) it may use — a
#: 480-byte "billion laughs" file expands to gigabytes when validated — and how deeply mappings
#: and lists may nest (PyYAML's composer recurses: 5,000 levels end in RecursionError).
MAX_CONFIG_BYTES = 1_000_000
MAX_YAML_ALIASES = 200
MAX_YAML_DEPTH = 64


def _unique_key_loader():
    """A SafeLoader that refuses a mapping holding the same key twice (PyYAML keeps the last
    silently: a second ``retrievers:`` would drop the first)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise ConfigError(f"line {line}: duplicate key {str(key)[:60]!r} (first at "
                                      f"line {first}); a YAML mapping holds each key once")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML after checking its events (aliases, depth), with duplicate keys refused."""
    import yaml
    aliases = depth = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.AliasEvent):
            aliases += 1
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{source}: line {ev.start_mark.line + 1}: nested deeper than "
                                  f"{MAX_YAML_DEPTH} levels; is this a config file?")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    if aliases > MAX_YAML_ALIASES:
        raise ConfigError(f"{source}: {aliases} YAML aliases (more than {MAX_YAML_ALIASES}); "
                          "refusing a config that could expand without bound")
    loader = _unique_key_loader()(text)  # a SafeLoader subclass: what yaml.load(Loader=) does
    try:
        return loader.get_single_data()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    finally:
        loader.dispose()


def safe_yaml_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` with the bounds above and duplicate keys refused (a
    :class:`ConfigError` names the file)."""
    import yaml
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES // 1000} kB; is this a "
                          "config file?")
    try:
        return load_yaml(text, source)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML ({first[:200]})") from None
