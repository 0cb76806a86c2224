"""VLM descriptions of every sticker, cached: base model or a fine-tuned LoRA adapter.

:func:`describe_stickers` runs batched greedy generation (left padding) through Lightning's predict
loop, so ``devices=N`` spreads the stickers over N GPUs (DDP; each rank generates its share and the
results are gathered). Results go into the :class:`~bench.features.cache.FeatureCache` under the
extractor ``vlm-descriptions`` keyed by the dataset fingerprint and
``{"adapter": <adapter id> | "base", "model": <model name>}`` (:func:`description_cache_key`);
the work is done in chunks (``FeatureCache.compute``), each chunk one small ``trainer.predict``,
so an interrupted run resumes with the missing stickers only and a complete entry does no work
(the model is not even loaded).

The *adapter id* is content-derived: ``sha256:<16 hex>`` over ``adapter_config.json`` and the
adapter weights, whether the adapter came from a directory or an MLflow run id (which resolves to
the run's ``adapter`` artifact) — the same weights always hit the same cache entry. The prompt and
``max_new_tokens`` are not part of the key (they are recorded in the entry's ``meta.json``).

Columns: ``sticker_id``, ``description`` (the generated text, ``""`` for a sticker without a
loadable image — counted and logged) and ``keywords``: the description split at commas, semicolons
and line breaks into phrases, each stripped of surrounding whitespace/punctuation and lower-cased,
empty and repeated phrases dropped, joined again with ``", "`` (:func:`keywords_of`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError, ConfigError
from bench.features.cache import FeatureCache
from bench.vlm.dist import env_rank

log = logging.getLogger(__name__)

EXTRACTOR = "vlm-descriptions"
ADAPTER_ARTIFACT = "adapter"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_SPLIT = re.compile(r"[,;\n\r，；、]+")
_STRIP = " \t\"'`.!?:()[]{}<>*-–—。！？：“”‘’"


def keywords_of(description: str) -> list[str]:
    """Keyword phrases of a description: split at , ; newlines (and CJK commas), stripped,
    lower-cased, de-duplicated in order."""
    out: list[str] = []
    for part in _SPLIT.split(description or ""):
        phrase = " ".join(part.strip(_STRIP).lower().split())
        if phrase and phrase not in out:
            out.append(phrase)
    return out


def description_cache_key(cache: FeatureCache, dataset_fingerprint: str, model_name: str,
                          adapter_id: str = "base") -> str:
    """The cache key of the descriptions of one dataset by one model (+ adapter)."""
    return cache.key(dataset_fingerprint=dataset_fingerprint, extractor=EXTRACTOR,
                     params={"adapter": adapter_id, "model": model_name})


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """``sha256:<16 hex>`` of an adapter directory's config and weight files."""
    d = Path(adapter_dir)
    h = hashlib.sha256()
    files = sorted(p for p in d.iterdir()
                   if p.name == "adapter_config.json" or p.name.startswith("adapter_model"))
    for p in files:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return f"sha256:{h.hexdigest()[:16]}"


def _find_adapter_dir(root: Path) -> Path | None:
    if (root / "adapter_config.json").is_file():
        return root
    found = sorted(root.rglob("adapter_config.json"))
    return found[0].parent if found else None


def resolve_adapter(adapter: str | Path | None, tracking_uri: str | None = None
                    ) -> tuple[Path | None, str, str]:
    """``(local adapter dir | None, adapter id, source)`` for a path, an MLflow run id, an MLflow
    artifact/model URI (``runs:/...``, ``models:/...``), or None / ``"base"`` (the base model)."""
    if adapter is None or str(adapter) in ("", "base"):
        return None, "base", "base"
    text = str(adapter)
    p = Path(text).expanduser()
    if p.exists():
        local = _find_adapter_dir(p)
        if local is None:
            raise ConfigError(f"adapter {text!r}: no adapter_config.json in that directory "
                              "(expected the adapter_dir written by `persrv-bench train-vlm`)")
        return local, adapter_fingerprint(local), str(p.resolve())
    if _RUN_ID.match(text) or "://" in text or text.startswith(("runs:/", "models:/")):
        import mlflow.artifacts
        from bench.tracking import mask_credentials, resolve_tracking_uri
        uri = resolve_tracking_uri(tracking_uri)
        try:
            if _RUN_ID.match(text):
                downloaded = mlflow.artifacts.download_artifacts(
                    run_id=text, artifact_path=ADAPTER_ARTIFACT, tracking_uri=uri)
            else:
                downloaded = mlflow.artifacts.download_artifacts(artifact_uri=text,
                                                                 tracking_uri=uri)
        except Exception as exc:
            raise BenchError(f"adapter {text!r}: could not download it from MLflow at "
                             f"{mask_credentials(uri)} ({type(exc).__name__}: {exc}). Check the "
                             "run id and --tracking-uri / MLFLOW_TRACKING_URI.") from None
        local = _find_adapter_dir(Path(downloaded))
        if local is None:
            raise BenchError(f"adapter {text!r}: the MLflow artifact has no adapter_config.json")
        return local, adapter_fingerprint(local), text
    raise ConfigError(f"adapter {text!r} is neither an existing directory nor an MLflow run id "
                      "(32 hex characters) nor a runs:/ or models:/ URI")


def check_adapter_split(adapter_dir: Path | None, dataset_fingerprint: str,
                        split: Any = None, protocol: Any = None) -> None:
    """Refuse an adapter trained on this very dataset under another split than ``split`` (the
    experiment's): its training may have seen the clicks that this experiment's sweeps or final
    test score. Adapters from another dataset, or without a recorded split, pass."""
    import json
    from bench.vlm.data import split_dict
    from bench.vlm.module import ADAPTER_META_FILE
    if adapter_dir is None or split is None or not (adapter_dir / ADAPTER_META_FILE).is_file():
        return
    meta = json.loads((adapter_dir / ADAPTER_META_FILE).read_text(encoding="utf-8"))
    trained_on = meta.get("split")
    wanted = split_dict(split, protocol)
    if meta.get("dataset_fingerprint") == dataset_fingerprint and trained_on not in (None, wanted):
        raise ConfigError(f"adapter {adapter_dir}: trained on this dataset with split {trained_on}, "
                          f"but the experiment uses split {wanted}; its training may have seen "
                          "validation or test clicks. Retrain it with the experiment's split "
                          "(train-vlm --benchmark-config EXPERIMENT.yaml).")


class _Predictor:
    """A module + Trainer, built on first use and reused for every chunk."""

    def __init__(self, module_kwargs: dict[str, Any], *, devices: Any, accelerator: str,
                 strategy: str | None, precision: str, batch_size: int, num_workers: int):
        import lightning as L
        from bench.vlm.module import LlavaLoraModule
        self.module = LlavaLoraModule(**module_kwargs)
        if strategy is None:
            n = devices if isinstance(devices, int) else (len(devices) if isinstance(
                devices, (list, tuple)) else 1)
            strategy = "ddp" if n > 1 else "auto"
        self.trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy,
                                 precision=precision, logger=False, enable_checkpointing=False,
                                 enable_model_summary=False,
                                 enable_progress_bar=os.environ.get("PERSRV_BENCH_QUIET") != "1")
        self.batch_size = batch_size
        self.num_workers = num_workers

    def __call__(self, sticker_ids: list[str], paths: list[Path | None]) -> list[dict[str, Any]]:
        from torch.utils.data import DataLoader
        from bench.vlm.data import StickerItems, VlmCollator
        from bench.vlm.dist import gather_rows
        m = self.module
        world = max(1, int(self.trainer.world_size))
        if 0 < len(sticker_ids) < world:  # Lightning's predict sampler needs >= 1 item per rank
            pad = world - len(sticker_ids)
            sticker_ids = sticker_ids + [sticker_ids[-1]] * pad
            paths = paths + [paths[-1]] * pad
        loader = DataLoader(StickerItems(sticker_ids, paths), batch_size=self.batch_size,
                            shuffle=False, num_workers=self.num_workers,
                            collate_fn=VlmCollator(m.processor, m.question, train=False))
        batches = self.trainer.predict(m, dataloaders=loader, return_predictions=True) or []
        return gather_rows([row for batch in batches for row in batch])


def _build_predictor(**kwargs: Any) -> _Predictor:
    return _Predictor(**kwargs)


def _multi_process(devices: Any, strategy: Any) -> bool:
    """Whether Trainer settings ask for several processes (DDP, FSDP, ...): more than one
    device, all of them (-1), or a multi-process strategy."""
    if isinstance(devices, (list, tuple)):
        many = len(devices) > 1
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):  # "auto": known once the Trainer is built
            n = 1
        many = n > 1 or n == -1
    name = strategy if isinstance(strategy, str) else type(strategy).__name__ if strategy else ""
    return many or any(k in name.lower() for k in ("ddp", "fsdp", "deepspeed"))


def describe_stickers(dataset_dir: str | Path, model: Any = None,
                      adapter: str | Path | None = None, *, batch_size: int = 8,
                      max_new_tokens: int = 32, cache: FeatureCache | None = None,
                      devices: Any = 1, accelerator: str = "auto", strategy: str | None = None,
                      precision: str = "auto", limit: int | None = None, chunk_size: int = 256,
                      num_workers: int = 0, tracking_uri: str | None = None,
                      stats: dict[str, Any] | None = None, split: Any = None,
                      protocol: Any = None, shard: tuple[int, int] | None = None
                      ) -> pd.DataFrame:
    """Descriptions of the stickers of ``dataset_dir`` (``limit``: the first N only), cached.

    Args:
        model: a :class:`bench.vlm.config.ModelSection` (or its dict): ``name_or_path`` / ``tiny``,
            ``revision``, ``question``. None: LLaVA-1.5-7B.
        adapter: adapter directory, MLflow run id (its ``adapter`` artifact), ``runs:/`` or
            ``models:/`` URI, or None for the base model.
        devices / accelerator / strategy / precision: Trainer settings (``devices > 1`` -> DDP).
        cache: the feature cache (default location if None).
        stats: if given, filled with ``generated``, ``cached``, ``no_image`` counts (of the
            ``stickers`` described: all, or the shard's), the key and ``shard`` (``"I/N"``).
        split, protocol: the experiment's; an adapter trained on this dataset under another
            split is refused (:func:`check_adapter_split`). ``split`` None: no check.
        shard: ``(I, N)``: only shard I of N of the stickers (after ``limit``;
            :func:`~bench.features.image_pipeline.shard_ids`, contiguous blocks, 0-based), into
            the same cache entry as an unsharded run: shards may run at once on machines sharing
            the cache folder, and a later unsharded run reads their union and generates nothing.
            Shards spread the work over machines, ``devices > 1`` (DDP) over the GPUs of one:
            both at once is refused.

    Returns a frame ``[sticker_id, description, keywords]`` in the dataset's sticker order (the
    shard's stickers only, with ``shard``). Under DDP every rank returns the full frame; only
    rank 0 writes the cache.
    """
    from bench.data.format import load_dataset
    from bench.vlm.config import ModelSection
    from bench.vlm.module import resolve_precision
    from bench.vlm.tiny import TINY_MODEL_NAME

    if shard is not None and _multi_process(devices, strategy):
        raise ConfigError(f"--shard {shard[0]}/{shard[1]} with devices={devices!r}"
                          f"{f', strategy={strategy!r}' if strategy else ''}: shards spread "
                          "describe over machines, DDP over the GPUs of one; use one of them "
                          "(--devices 1 with --shard)")
    spec = model if isinstance(model, ModelSection) else ModelSection.model_validate(model or {})
    model_name = TINY_MODEL_NAME if spec.tiny else spec.name_or_path
    cache = cache or FeatureCache()
    ds = load_dataset(dataset_dir, on_invalid="skip")
    adapter_dir, adapter_id, source = resolve_adapter(adapter, tracking_uri)
    check_adapter_split(adapter_dir, ds.fingerprint, split, protocol)
    key = description_cache_key(cache, ds.fingerprint, model_name, adapter_id)
    stickers = ds.stickers if limit is None else ds.stickers.head(limit)
    ids = stickers["sticker_id"].tolist()
    if shard is not None:
        from bench.features.image_pipeline import shard_ids
        ids = shard_ids(ids, shard)
    paths = {sid: ds.image_path(rel) for sid, rel in zip(stickers["sticker_id"], stickers["image"])}
    trainer_precision, dtype = resolve_precision(precision, accelerator)
    module_kwargs = dict(model_name_or_path=spec.name_or_path, tiny=spec.tiny,
                         revision=spec.revision, lora=False, adapter=adapter_dir,
                         adapter_trainable=False, dtype=dtype, question=spec.question,
                         max_new_tokens=max_new_tokens, seed=spec.seed)
    meta = {"extractor": EXTRACTOR, "model": model_name, "adapter": adapter_id,
            "adapter_source": source, "question": spec.question, "max_new_tokens": max_new_tokens,
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint}
    counts = {"generated": 0, "no_image": 0}
    predictor: list[_Predictor] = []

    def generate(chunk: list[str]) -> pd.DataFrame:
        if not predictor:
            predictor.append(_build_predictor(
                module_kwargs=module_kwargs, devices=devices, accelerator=accelerator,
                strategy=strategy, precision=trainer_precision, batch_size=batch_size,
                num_workers=num_workers))
            world = getattr(getattr(predictor[0], "trainer", None), "world_size", 1)
            if shard is not None and isinstance(world, int) and world > 1:  # devices="auto"
                raise ConfigError(f"--shard {shard[0]}/{shard[1]}: devices={devices!r} gave "
                                  f"{world} processes (DDP); use --devices 1 with --shard")
        rows = {r["sticker_id"]: r for r in predictor[0](chunk, [paths[s] for s in chunk])}
        missing = [s for s in chunk if s not in rows]
        if missing:
            raise RuntimeError(f"generation returned no row for {len(missing)} stickers "
                               f"(e.g. {missing[:3]})")
        descriptions = [rows[s]["description"] for s in chunk]
        counts["generated"] += sum(1 for s in chunk if rows[s]["image_ok"])
        counts["no_image"] += sum(1 for s in chunk if not rows[s]["image_ok"])
        return pd.DataFrame({"sticker_id": chunk, "description": descriptions,
                             "keywords": [", ".join(keywords_of(d)) for d in descriptions]})

    if env_rank() == 0:
        out = cache.compute(key, ids, generate, chunk_size=chunk_size, meta=meta,
                            progress=f"describing ({model_name}, {adapter_id})")
    else:  # follow rank 0 chunk by chunk (the predict loop is collective); never write
        have = cache.load(key)
        done = set(have["sticker_id"]) if have is not None else set()
        todo = [s for s in dict.fromkeys(ids) if s not in done]
        frames = [have] if have is not None else []
        frames += [generate(todo[i:i + chunk_size]) for i in range(0, len(todo), chunk_size)]
        allrows = pd.concat(frames, ignore_index=True).drop_duplicates("sticker_id", keep="last")
        out = allrows.set_index("sticker_id").reindex(ids).reset_index()
    if counts["no_image"] and env_rank() == 0:
        log.warning("%s: %d stickers without a loadable image got an empty description",
                    ds.name, counts["no_image"])
    if stats is not None:
        stats.update(counts, cached=len(ids) - counts["generated"] - counts["no_image"], key=key,
                     adapter_id=adapter_id, model=model_name, stickers=len(ids),
                     shard=f"{shard[0]}/{shard[1]}" if shard else None)
    out = out.reindex(columns=["sticker_id", "description", "keywords"])  # an empty shard too
    out["description"] = out["description"].fillna("").astype(str)
    out["keywords"] = out["keywords"].fillna("").astype(str)
    return out
