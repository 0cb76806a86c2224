"""``persrv-bench train-vlm`` and ``persrv-bench describe``: LoRA fine-tuning of LLaVA on
sticker -> query pairs, and (base or fine-tuned) descriptions of every sticker into the feature
cache. Both read a VLM config (``experiments/vlm_*.yaml``, :class:`bench.vlm.config.VlmConfig`).

torch, transformers and lightning are imported inside the commands only.
"""

from __future__ import annotations

import json

import click

from bench.cli.options import parse_shard


def _devices(value: str | None):
    """``--devices`` as Lightning takes it: ``auto``, a count (``2``), ``-1`` or ids ``0,1``."""
    if value is None:
        return None
    v = value.strip()
    if "," in v:
        return [int(x) for x in v.split(",") if x.strip()]
    try:
        return int(v)
    except ValueError:
        return v


_common = [
    click.argument("config", type=click.Path(dir_okay=False)),
    click.option("--dataset", "dataset", type=click.Path(file_okay=False), default=None,
                 help="Canonical dataset directory (overrides the config's `dataset`)."),
    click.option("--benchmark-config", "benchmark_config", type=click.Path(dir_okay=False),
                 default=None,
                 help="Experiment YAML whose split: (and dataset, if none is set) the VLM uses, so "
                      "the adapter never sees the clicks its sweeps or final test score."),
    click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override a config value, e.g. -o trainer.lr=1e-4."),
    click.option("--devices", default=None, help="Trainer devices: auto, N, -1 or ids 0,1."),
    click.option("--tracking-uri", default=None,
                 help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."),
]


def _with_common(fn):
    for deco in reversed(_common):
        fn = deco(fn)
    return fn


@click.command("train-vlm")
@_with_common
@click.option("--strategy", default=None,
              help="Trainer strategy: auto, ddp, fsdp, ddp_spawn, ... (overrides the config).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimiser steps.")
@click.option("--output-dir", default=None, help="Checkpoints and adapter folder.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if last.ckpt exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def train_vlm(config: str, dataset: str | None, benchmark_config: str | None,
              overrides: tuple[str, ...], devices: str | None, tracking_uri: str | None, strategy: str | None, max_steps: int | None,
              output_dir: str | None, no_resume: bool, as_json: bool) -> None:
    """Fine-tune a LoRA adapter of the LLaVA model in CONFIG on sticker -> query pairs from the
    train side of the split (early stopping on each user's last train click-group; validation and
    test clicks are never used); adapter logged to MLflow."""
    from bench.vlm.config import load_vlm_config
    from bench.vlm.train import train_vlm as run_training
    cfg = load_vlm_config(config, list(overrides), dataset=dataset,
                          benchmark_config=benchmark_config)
    if tracking_uri:
        cfg.tracking_uri = tracking_uri
    if max_steps is not None:
        cfg.trainer.max_steps = max_steps
    if output_dir:
        cfg.output_dir = output_dir
    result = run_training(cfg, devices=_devices(devices), strategy=strategy,
                          resume=not no_resume)
    if result.get("adapter_dir") is None:  # a DDP rank other than 0
        return
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    click.echo(f"adapter: {result['adapter_dir']}")
    click.echo(f"MLflow run: {result['run_id']} ({result['tracking_uri']}, experiment "
               f"{result['experiment']})")
    if result.get("best_val_loss") is not None:
        click.echo(f"best val_loss: {result['best_val_loss']:.4f} ({result['best_checkpoint']})")
    click.echo(f"steps: {result['global_step']}; pairs: {result['data'].get('train_pairs')} "
               f"train, {result['data'].get('val_pairs')} validation; skipped stickers: "
               f"{result['data'].get('skipped_stickers')}")
    if result.get("registered_version"):
        click.echo(f"registered: {cfg.registered_model} version {result['registered_version']}")


@click.command("describe")
@_with_common
@click.option("--adapter", default=None,
              help="Adapter directory, MLflow run id, runs:/ or models:/ URI (default: the "
                   "config's describe.adapter; none = the base model). 'base' forces the base.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Describe only the first N stickers (a quick look; they are cached too).")
@click.option("--cache-dir", default=None, help="Feature cache folder (default: the user cache).")
@click.option("--show", type=click.IntRange(min=0), default=10, help="Print the first N rows.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the descriptions to this parquet/csv file.")
@click.option("--shard", default=None, callback=parse_shard, metavar="I/N",
              help="Describe only shard I of N (0-based contiguous blocks of the stickers, after "
                   "--limit) into the shared feature cache, e.g. --shard $SLURM_ARRAY_TASK_ID/4; "
                   "shards may run at once on machines sharing the cache folder (--cache-dir / "
                   "describe.cache_dir), and a later describe or run reads their union. One "
                   "device per shard (not with --devices N > 1).")
def describe(config: str, dataset: str | None, benchmark_config: str | None,
             overrides: tuple[str, ...], devices: str | None,
             tracking_uri: str | None, adapter: str | None, batch_size: int | None,
             max_new_tokens: int | None, limit: int | None, cache_dir: str | None, show: int,
             out_path: str | None, shard: tuple[int, int] | None) -> None:
    """Describe every sticker of CONFIG's dataset (or one shard of them) with the base VLM or a
    fine-tuned adapter (cached: a second run does no work; an interrupted one resumes)."""
    from bench.errors import ConfigError
    from bench.features.cache import FeatureCache
    from bench.vlm.describe import describe_stickers
    from bench.vlm.config import load_vlm_config
    cfg = load_vlm_config(config, list(overrides), dataset=dataset,
                          benchmark_config=benchmark_config)
    if not cfg.dataset:
        raise ConfigError("no dataset: set `dataset:` in the config or pass --dataset DIR")
    d = cfg.describe
    stats: dict = {}
    n_devices = _devices(devices)
    frame = describe_stickers(
        cfg.dataset, cfg.model, adapter if adapter is not None else d.adapter,
        batch_size=batch_size or d.batch_size, max_new_tokens=max_new_tokens or d.max_new_tokens,
        cache=FeatureCache(cache_dir or d.cache_dir),
        devices=d.devices if n_devices is None else n_devices,
        accelerator=d.accelerator, precision=d.precision, limit=limit, chunk_size=d.chunk_size,
        tracking_uri=tracking_uri or cfg.tracking_uri, stats=stats, split=cfg.split,
        protocol=cfg.protocol, shard=shard)
    from bench.vlm.dist import env_rank
    if env_rank() != 0:
        return
    if out_path:
        if out_path.endswith(".csv"):
            frame.to_csv(out_path, index=False)
        else:
            frame.to_parquet(out_path, index=False)
    where = f"shard {shard[0]}/{shard[1]}, " if shard is not None else ""
    click.echo(f"{where}{len(frame)} stickers: {stats.get('generated', 0)} generated, "
               f"{stats.get('cached', 0)} from cache, {stats.get('no_image', 0)} without image "
               f"(model {stats.get('model')}, adapter {stats.get('adapter_id')}, "
               f"cache key {stats.get('key')})")
    for row in frame.head(show).itertuples(index=False):
        click.echo(f"  {row.sticker_id}\t{row.description!r}")
