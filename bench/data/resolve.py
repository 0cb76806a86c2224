"""Turn a config's dataset section into a loaded :class:`Dataset` (load, or build once and reuse)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from bench.config import DatasetSpec
from bench.data.format import META_FILE, Dataset, load_dataset, read_meta
from bench.errors import ConfigError

log = logging.getLogger(__name__)


def built_dataset_dir(spec: DatasetSpec) -> Path:
    """Where a dataset built from ``spec`` lives: ``spec.out`` or a cache folder keyed by the
    builder, source and parameters. Whether a build there is reused is decided by
    :func:`_params_key`, which also covers the source's content (:func:`source_digest`)."""
    if spec.out:
        return Path(spec.out)
    from bench.features.cache import datasets_cache_dir
    blob = json.dumps({"builder": spec.builder, "source": spec.source, "params": spec.params},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return datasets_cache_dir() / f"{spec.builder}-{digest}"


def resolve_dataset(spec: DatasetSpec) -> Dataset:
    """Load ``spec.path``, or build with ``spec.builder`` (reusing an identical earlier build)."""
    if spec.path and spec.builder:
        raise ConfigError("dataset: give either `path` (an existing dataset) or `builder`, not both")
    if spec.path:
        return load_dataset(spec.path, on_invalid=spec.on_invalid)
    if not spec.builder:
        raise ConfigError("dataset: give `path` (an existing dataset directory) or `builder` "
                          "(synthetic, emoji-styles, sticker-queries, persrv-csv)")
    out = built_dataset_dir(spec)
    if (out / META_FILE).exists():
        meta = read_meta(out / META_FILE)
        if meta.get("builder_params_key") == _params_key(spec):
            ds = load_dataset(out, on_invalid=spec.on_invalid)
            if not ds.meta.get("stale_fingerprint"):
                log.info("reusing dataset built earlier at %s", out)
                return ds
            log.warning("dataset at %s changed after it was built; building it again from %s",
                        out, spec.source)
        else:
            log.info("dataset at %s was built from other source content, parameters or builder "
                     "code; building it again", out)
    from bench.data.builders import build_dataset
    log.info("building dataset %s into %s", spec.builder, out)
    ds = build_dataset(spec.builder, spec.source, out, dict(spec.params))
    _stamp(out, spec)
    return load_dataset(out, on_invalid=spec.on_invalid) if spec.on_invalid != "error" else ds


def builder_code_version() -> str:
    """A digest of the dataset-building code (``bench/data/*.py``): a cached build made by other
    builder or simulator code is not reused (same parameters can give other clicks)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _params_key(spec: DatasetSpec) -> str:
    blob = json.dumps({"builder": spec.builder, "source": spec.source, "params": spec.params,
                       "code": builder_code_version(), "content": source_digest(spec)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def source_digest(spec: DatasetSpec) -> str | None:
    """A digest of the CONTENT the build reads: ``spec.source`` and every string parameter that
    names an existing file or folder (a folder: every file under it, by relative path and
    bytes). An edited source CSV gives another digest, so the build is made again."""
    paths = [spec.source] + [v for v in (spec.params or {}).values() if isinstance(v, str)]
    h = hashlib.sha256()
    found = False
    for raw in paths:
        if not raw:
            continue
        try:
            path = Path(raw).expanduser()
            is_dir, is_file = path.is_dir(), path.is_file()
        except (OSError, ValueError):
            continue
        if not (is_dir or is_file):
            continue
        found = True
        files = sorted(p for p in path.rglob("*") if p.is_file()) if is_dir else [path]
        h.update(f"{raw}\0{len(files)}\0".encode("utf-8", "surrogateescape"))
        for file in files:
            rel = file.relative_to(path).as_posix() if is_dir else file.name
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()[:16] if found else None


def _stamp(out: Path, spec: DatasetSpec) -> None:
    from bench.data.format import write_json_atomic
    meta_path = out / META_FILE
    meta = read_meta(meta_path)
    meta["builder_params_key"] = _params_key(spec)
    write_json_atomic(meta_path, meta)
