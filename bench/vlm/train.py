"""LoRA fine-tuning of LLaVA on sticker -> query pairs: config and the ``train-vlm`` driver.

:func:`train_vlm` wires :class:`~bench.vlm.module.LlavaLoraModule` and
:class:`~bench.vlm.data.StickerQueryDataModule` into a Lightning ``Trainer`` with an
``MLFlowLogger`` (tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<cwd>/mlflow.db`` — never Lightning's ``file:`` default, which MLflow >= 3.13
rejects),
``ModelCheckpoint`` (adapter-only checkpoints, ``last.ckpt`` + the best by ``val_loss``) and
``EarlyStopping`` on ``val_loss``. Devices and strategy (``ddp``, ``fsdp``, ...) are Trainer
arguments. A re-run with the same ``output_dir`` resumes from ``checkpoints/last.ckpt`` and
continues the same MLflow run. After fitting, rank 0 exports the best adapter (peft
``save_pretrained`` + processor) to ``<output_dir>/adapter``, logs it as the run's ``adapter``
artifact and, when a model registry is available, registers an ``mlflow.pyfunc`` model
(:class:`~bench.vlm.pyfunc.VlmDescriberModel`) with the adapter as its artifact (a failure there
is a warning, not an error).

Output layout (``output_dir``)::

    checkpoints/last.ckpt, checkpoints/<epoch>-<step>-<val_loss>.ckpt   (adapter weights only)
    adapter/   adapter_config.json, adapter_model.safetensors, processor files, persrv_vlm.json
    mlflow_run.json   the MLflow run this output belongs to (for resuming)
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from bench.errors import BenchError, ConfigError
from bench.vlm.config import (DescribeSection, LoraSection, ModelSection,  # noqa: F401 (re-export)
                              TrainerSection, VlmConfig, config_hash, load_vlm_config,
                              validate_vlm_config)
from bench.vlm.dist import env_rank

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


def build_module(cfg: VlmConfig, dtype: str = "float32") -> Any:
    """The LightningModule a config describes (the base model loads later, per rank)."""
    from bench.vlm.module import LlavaLoraModule
    m, lo, t = cfg.model, cfg.lora, cfg.trainer
    return LlavaLoraModule(m.name_or_path, tiny=m.tiny, revision=m.revision, lora=True,
                           lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                           target_modules=lo.target_modules, lr=t.lr,
                           weight_decay=t.weight_decay,
                           gradient_checkpointing=t.gradient_checkpointing, dtype=dtype,
                           question=m.question, max_answer_tokens=m.max_answer_tokens,
                           max_new_tokens=cfg.describe.max_new_tokens, seed=m.seed)


def make_strategy(name: str) -> Any:
    """A Trainer strategy: ``fsdp`` becomes an ``FSDPStrategy`` wrapping each Llama decoder and CLIP
    encoder layer with ``use_orig_params=True`` (frozen base + trainable LoRA in one unit) and
    full state dicts; any other name is passed to the Trainer as is (``auto``, ``ddp``, ...)."""
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    return FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer, CLIPEncoderLayer},
                        use_orig_params=True, state_dict_type="full")


def _previous_run(out: Path, uri: str) -> str | None:
    """The MLflow run of an earlier (interrupted) training into ``out``, if it still exists."""
    f = out / RUN_FILE
    if not f.is_file():
        return None
    try:
        saved = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("tracking_uri") != uri or not saved.get("run_id"):
        return None
    from mlflow.tracking import MlflowClient
    try:
        MlflowClient(uri).get_run(saved["run_id"])
    except Exception:
        return None
    return str(saved["run_id"])


def _log_params_once(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params, skipping keys the run already has (a resumed run) and warning on changes."""
    from mlflow.entities import Param
    from bench.tracking import flatten_params
    existing = client.get_run(run_id).data.params
    flat = flatten_params(params)
    changed = [k for k, v in flat.items() if k in existing and existing[k] != v]
    if changed:
        log.warning("resumed MLflow run %s: params changed since it started (kept the old values): "
                    "%s", run_id, ", ".join(changed[:10]))
    items = [Param(k[:250], v) for k, v in flat.items() if k not in existing]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def register_adapter_model(tracking_uri: str, run_id: str, adapter_dir: str | Path,
                           name: str) -> str | None:
    """Log an ``mlflow.pyfunc`` model (artifact: the adapter dir) into ``run_id`` and register it
    as a version of ``name``; returns the version, or None (with a warning) if that fails."""
    import mlflow
    from bench.vlm.pyfunc import VlmDescriberModel
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(tracking_uri)
        from importlib.metadata import version
        reqs = [f"{pkg}=={version(pkg)}" for pkg in
                ("torch", "transformers", "peft", "lightning", "pillow", "pandas")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="vlm-describer", python_model=VlmDescriberModel(),
                    artifacts={"adapter": str(adapter_dir)}, registered_model_name=name,
                    pip_requirements=reqs + ["persrv-bench"])
        mv = getattr(info, "registered_model_version", None)
        return str(mv) if mv is not None else None
    except Exception as exc:  # no registry (e.g. a file store), server refusal, ...
        warnings.warn(f"could not register the adapter as MLflow model {name!r} "
                      f"({type(exc).__name__}: {exc}); the adapter artifact is still logged",
                      stacklevel=2)
        return None
    finally:
        mlflow.set_tracking_uri(previous)


def train_vlm(cfg: VlmConfig, devices: Any = None, strategy: str | None = None,
              resume: bool = True) -> dict[str, Any]:
    """Fine-tune a LoRA adapter as ``cfg`` says; ``devices``/``strategy`` override the config.

    Returns (on rank 0; other ranks get the same keys with ``adapter_dir``/``run_id`` None)::

        {adapter_dir, run_id, tracking_uri, experiment, best_checkpoint, last_checkpoint,
         best_val_loss, global_step, resumed_from, registered_version, precision, data: {...}}

    Resuming continues from ``checkpoints/last.ckpt``, written at every validation check and at
    the end of fitting (an interrupted run resumes from its last validation check).
    ``resume=False`` starts afresh even if ``last.ckpt`` exists (old files stay in the folder).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger
    from bench.tracking import git_commit, mask_credentials, resolve_tracking_uri
    from bench.vlm.data import StickerQueryDataModule
    from bench.vlm.module import resolve_precision

    if not cfg.dataset:
        raise ConfigError("no dataset: set `dataset:` in the config or pass --dataset DIR")
    t = cfg.trainer
    devices = t.devices if devices is None else devices
    strategy = strategy or t.strategy
    precision, dtype = resolve_precision(t.precision, t.accelerator)
    if strategy == "fsdp" and dtype != "float32":
        dtype = "float32"  # FSDP flattens base and LoRA weights together: one dtype, mixed compute
    rank = env_rank()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    module = build_module(cfg, dtype)
    dm = StickerQueryDataModule(cfg.dataset, module.processor, cfg.model.question,
                                batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
                                num_workers=t.num_workers, seed=cfg.seed,
                                max_answer_tokens=cfg.model.max_answer_tokens, split=cfg.split,
                                protocol=cfg.protocol)
    dm.setup("fit")
    if dm.train_pairs is None or dm.train_pairs.empty:
        raise BenchError(f"{cfg.dataset}: no training pairs (no train clicks on stickers with a "
                         f"loadable image; {dm.stats})")
    has_val = not dm.val_pairs.empty
    if not has_val:
        log.warning("%s: no validation pairs; no early stopping, the final adapter is exported",
                    cfg.dataset)

    out = Path(cfg.output_dir).resolve()
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resumed_from = str(last) if resume and last.is_file() else None
    if resumed_from:
        check_checkpoint(last)
    uri = resolve_tracking_uri(cfg.tracking_uri)
    run_id = os.environ.get("MLFLOW_RUN_ID") or (_previous_run(out, uri) if resumed_from else None)
    from bench.tracking.schema import vlm_train_tags
    tags = vlm_train_tags(dataset=dm.stats.get("dataset", ""),
                          fingerprint=dm.stats.get("dataset_fingerprint", ""),
                          config_hash=config_hash(cfg), model=module.model_name,
                          git_commit=git_commit())
    logger = MLFlowLogger(experiment_name=cfg.experiment, tracking_uri=uri, run_id=run_id,
                          tags=tags if run_id is None else None, run_name="train-vlm")
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}-{step}-{val_loss:.4f}"
                                 if has_val else "{epoch}-{step}",
                                 monitor="val_loss" if has_val else None, mode="min",
                                 save_top_k=1, save_last=True)
    callbacks: list[Any] = [checkpoint]
    if has_val and t.early_stopping_patience:
        callbacks.append(EarlyStopping("val_loss", patience=t.early_stopping_patience, mode="min",
                                       check_on_train_epoch_end=False))
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=devices, strategy=make_strategy(strategy),
        precision=precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate, log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval,
        limit_val_batches=t.limit_val_batches if has_val else 0,
        num_sanity_val_steps=0, logger=logger, callbacks=callbacks, default_root_dir=str(out),
        enable_progress_bar=os.environ.get("PERSRV_BENCH_QUIET") != "1",
        enable_model_summary=rank == 0)
    if rank == 0:  # create the DB/run now, before DDP starts the other ranks (SQLite init race)
        run_id = logger.run_id
        out.mkdir(parents=True, exist_ok=True)
        if resumed_from and (out / RUN_FILE).is_file():
            before = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
            if before.get("dataset_fingerprint") not in (None, tags["dataset_fingerprint"]):
                log.warning("resuming %s, which was trained on another dataset (fingerprint %s, "
                            "now %s); pass --no-resume to start afresh", last,
                            before.get("dataset_fingerprint"), tags["dataset_fingerprint"])
        (out / RUN_FILE).write_text(json.dumps(
            {"run_id": run_id, "tracking_uri": uri,
             "dataset_fingerprint": tags["dataset_fingerprint"]}) + "\n", encoding="utf-8")
        params = {"config": cfg.model_dump(), "precision_resolved": precision,
                  "dtype": dtype, "devices": str(devices), "strategy": strategy,
                  "data": {k: v for k, v in dm.stats.items() if k != "skipped_reasons"}}
        _log_params_once(logger.experiment, run_id, params)
        log.info("MLflow run %s at %s", run_id, mask_credentials(uri))

    trainer.fit(module, datamodule=dm, ckpt_path=resumed_from)
    # ModelCheckpoint writes last.ckpt at validation checks only; make it the final state so that
    # resuming a finished run does no further steps (collective call: every rank, rank 0 writes)
    trainer.save_checkpoint(str(last))

    best = checkpoint.best_model_path or None
    best_score = checkpoint.best_model_score
    result: dict[str, Any] = {
        "adapter_dir": None, "run_id": None, "tracking_uri": mask_credentials(uri),
        "experiment": cfg.experiment, "best_checkpoint": best,
        "last_checkpoint": str(last),
        "best_val_loss": float(best_score) if best_score is not None else None,
        "global_step": int(trainer.global_step), "resumed_from": resumed_from,
        "registered_version": None, "precision": precision, "data": dict(dm.stats)}
    if not trainer.is_global_zero:
        return result

    source = best or (str(last) if last.is_file() else None)
    adapter_dir = module.export_adapter(
        out / "adapter", checkpoint_path=source,
        extra_meta={"checkpoint": source, "run_id": run_id, "dataset": dm.stats.get("dataset"),
                    "dataset_fingerprint": dm.stats.get("dataset_fingerprint"),
                    "split": dm.stats.get("split")})
    client = logger.experiment
    client.log_artifacts(run_id, str(adapter_dir), "adapter")
    final = {"global_step": float(trainer.global_step)}
    if best_score is not None:
        final["best_val_loss"] = float(best_score)
    for k, v in final.items():
        client.log_metric(run_id, k, v, step=int(trainer.global_step))
    result.update(adapter_dir=str(adapter_dir), run_id=run_id)
    if cfg.registered_model:
        result["registered_version"] = register_adapter_model(uri, run_id, adapter_dir,
                                                              cfg.registered_model)
    return result


def check_checkpoint(path: Path) -> None:
    """Refuse, in one line, a checkpoint that is not plain tensors and containers (a pickle that
    would run code, a damaged file): it is loaded with ``weights_only=True`` first."""
    import torch
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (damaged zip), EOFError ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"{path}: refusing to resume from this checkpoint ({type(exc).__name__}:"
                         f" {first[:160]}); delete it or pass --no-resume") from None
