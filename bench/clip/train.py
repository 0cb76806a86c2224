"""``train-clip``: contrastive training of the dual encoder with Lightning, logged to MLflow.

:func:`train_clip` wires :class:`~bench.clip.module.ClipDualModule` and
:class:`~bench.clip.data.ClipPairsDataModule` into a ``Trainer`` with an ``MLFlowLogger``
(tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``),
``ModelCheckpoint`` (the best by ``val_loss``) and ``EarlyStopping`` on ``val_loss`` (the
early-stopping pairs come from the train side of the split only). The best weights are exported
(:mod:`bench.clip.checkpoint`) to ``<output_dir>/clip`` and logged as the run's ``clip``
artifact, with the dataset fingerprint and split as tags/params, so ``dense-clip`` (and the
``clip-checkpoint`` image encoder) can load it by path or run id and refuse another split.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from bench.clip.config import ClipConfig
from bench.vlm.config import config_hash
from bench.errors import BenchError, ConfigError

log = logging.getLogger(__name__)


def module_settings(cfg: ClipConfig, text_dim: int) -> dict[str, Any]:
    """The :class:`ClipDualModule` keyword arguments a config describes (stored with the
    checkpoint so it can be rebuilt)."""
    im, oc, t = cfg.image, cfg.open_clip, cfg.trainer
    return {"mode": cfg.mode, "text_dim": int(text_dim), "image_arch": im.arch,
            "image_size": im.size, "image_width": im.width, "open_clip_model": oc.model,
            "open_clip_pretrained": oc.pretrained, "open_clip_config": oc.config,
            "lora": oc.lora, "lora_r": oc.lora_r, "lora_alpha": oc.lora_alpha,
            "lora_dropout": oc.lora_dropout, "target_modules": list(oc.target_modules),
            "lr": t.lr, "schedule": t.schedule, "weight_decay": t.weight_decay,
            "temperature": t.temperature,
            "augment": t.augment}


def _text_side(cfg: ClipConfig) -> tuple[int, Any, dict[str, Any]]:
    """locked-text: ``(dim, texts -> frozen embeddings, meta)``; finetune: the dim is the
    model's, the encoder is set once the module (and its tokenizer) exists."""
    import torch
    if cfg.mode != "locked-text":
        return 0, None, {"model": None, "model_id": None}
    from bench.clip.data import encode_queries, text_model
    st, model_id = text_model(cfg.text.model)
    dim_of = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim = int(dim_of())
    return dim, (lambda texts: torch.from_numpy(encode_queries(st, texts))), \
        {"model": cfg.text.model, "model_id": model_id}


def train_clip(cfg: ClipConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns ``{checkpoint_dir, run_id, tracking_uri, experiment,
    best_val_loss, global_step, seconds, data: {...}}``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger
    from bench.clip.checkpoint import ARTIFACT, export_checkpoint
    from bench.clip.data import ClipPairsDataModule
    from bench.clip.module import ClipDualModule
    from bench.tracking import flatten_params, git_commit, mask_credentials, resolve_tracking_uri
    from bench.tracking.schema import clip_train_tags

    if not cfg.dataset:
        raise ConfigError("no dataset: set `dataset:` in the config or pass --dataset DIR")
    t0, cpu0 = time.perf_counter(), time.process_time()
    t = cfg.trainer
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    text_dim, encode, text_meta = _text_side(cfg)
    settings = module_settings(cfg, text_dim)
    module = ClipDualModule(**settings)
    if cfg.mode == "finetune":
        tok = module.tokenizer
        encode = lambda texts: tok(list(texts))  # noqa: E731
    dm = ClipPairsDataModule(cfg.dataset, image_size=module.image_size, encode_texts=encode,
                             batch_size=t.batch_size, seed=cfg.seed, split=cfg.split,
                             protocol=cfg.protocol)
    dm.setup("fit")
    if dm.train_pairs is None or len(dm.train_pairs) < 2:
        raise BenchError(f"{cfg.dataset}: fewer than 2 training pairs (train clicks on stickers "
                         f"with a loadable image; {dm.stats})")
    has_val = not dm.val_pairs.empty
    out = Path(cfg.output_dir).resolve()
    uri = resolve_tracking_uri(cfg.tracking_uri)
    tags = clip_train_tags(dataset=dm.stats["dataset"],
                           fingerprint=dm.stats["dataset_fingerprint"],
                           config_hash=config_hash(cfg), mode=cfg.mode, git_commit=git_commit())
    logger = MLFlowLogger(experiment_name=cfg.experiment, tracking_uri=uri, tags=tags,
                          run_name="train-clip")
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="{epoch}-{step}-{val_loss:.4f}"
                           if has_val else "{epoch}-{step}",
                           monitor="val_loss" if has_val else None, mode="min", save_top_k=1,
                           save_last=False)
    callbacks: list[Any] = [ckpt]
    if has_val and t.early_stopping_patience:
        callbacks.append(EarlyStopping("val_loss", patience=t.early_stopping_patience, mode="min"))
    max_time = {"minutes": t.max_minutes} if t.max_minutes else None
    trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, precision=t.precision,
                        max_epochs=t.max_epochs, max_steps=t.max_steps, max_time=max_time,
                        log_every_n_steps=t.log_every_n_steps,
                        limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0,
                        logger=logger, callbacks=callbacks, default_root_dir=str(out),
                        enable_progress_bar=os.environ.get("PERSRV_BENCH_QUIET") != "1",
                        enable_model_summary=False, deterministic="warn")
    run_id = logger.run_id
    client = logger.experiment
    params = flatten_params({"config": cfg.model_dump(), "threads": torch.get_num_threads(),
                             "data": {k: v for k, v in dm.stats.items()
                                      if k != "skipped_reasons"}})
    from mlflow.entities import Param
    items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    log.info("MLflow run %s at %s", run_id, mask_credentials(uri))

    trainer.fit(module, datamodule=dm)
    best = ckpt.best_model_path or None
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    dim = text_dim or int(module.encode_images(dm.images[:1]).shape[1])
    meta = {"mode": cfg.mode, "module": settings, "dim": dim, "text": text_meta,
            "dataset": dm.stats["dataset"], "dataset_fingerprint": dm.stats["dataset_fingerprint"],
            "split": dm.stats["split"], "run_id": run_id, "best_checkpoint": best,
            "global_step": int(trainer.global_step), "train_seconds": round(seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1), "epochs": int(trainer.current_epoch),
            "data": {k: v for k, v in dm.stats.items() if k != "split"}}
    ckpt_dir = export_checkpoint(out / ARTIFACT, module.export_state(), meta, dm.train_clicks)
    client.log_artifacts(run_id, str(ckpt_dir), ARTIFACT)
    best_score = ckpt.best_model_score
    final = {"global_step": float(trainer.global_step), "train_seconds": seconds,
             "train_cpu_seconds": cpu_seconds, "epochs": float(trainer.current_epoch)}
    if best_score is not None:
        final["best_val_loss"] = float(best_score)
    for k, v in final.items():
        client.log_metric(run_id, k, v, step=int(trainer.global_step))
    client.set_terminated(run_id, "FINISHED")
    return {"checkpoint_dir": str(ckpt_dir), "run_id": run_id,
            "tracking_uri": mask_credentials(uri), "experiment": cfg.experiment,
            "best_val_loss": float(best_score) if best_score is not None else None,
            "global_step": int(trainer.global_step), "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "epochs": int(trainer.current_epoch),
            "data": dict(dm.stats)}
