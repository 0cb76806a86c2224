"""``persrv-bench train-clip``: contrastive training of a sticker image tower against a frozen
text model (locked-text, LiT) or fine-tuning of an open_clip model, on (clicked sticker, query)
pairs from the train side of the split. Reads a ``train-clip`` config
(:class:`bench.clip.config.ClipConfig`); torch and lightning are imported when it runs.
"""

from __future__ import annotations

import json

import click


@click.command("train-clip")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--dataset", "dataset", type=click.Path(file_okay=False), default=None,
              help="Canonical dataset directory (overrides the config's `dataset`).")
@click.option("--benchmark-config", "benchmark_config", type=click.Path(dir_okay=False),
              default=None, help="Experiment YAML whose split: (and dataset, if none is set) is "
                                 "used, so the checkpoint never sees the clicks it is scored on.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. -o trainer.lr=1e-4 -o seed=1.")
@click.option("--seed", type=int, default=None, help="Seed (overrides the config's).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--output-dir", default=None, help="Checkpoint folder (the checkpoint is its clip/).")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def train_clip(config: str, dataset: str | None, benchmark_config: str | None,
               overrides: tuple[str, ...], seed: int | None, max_steps: int | None,
               output_dir: str | None, tracking_uri: str | None, as_json: bool) -> None:
    """Train the dual encoder of CONFIG (early stopping on each user's last train click-group;
    validation and test clicks are never used); the checkpoint is logged to MLflow and loads in
    `dense-clip` (params.checkpoint: its folder or run id)."""
    from bench.clip.config import load_clip_config
    from bench.clip.train import train_clip as run_training
    cfg = load_clip_config(config, list(overrides), dataset=dataset,
                           benchmark_config=benchmark_config)
    if seed is not None:
        cfg.seed = seed
    if max_steps is not None:
        cfg.trainer.max_steps = max_steps
    if output_dir:
        cfg.output_dir = output_dir
    if tracking_uri:
        cfg.tracking_uri = tracking_uri
    result = run_training(cfg)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    d = result["data"]
    click.echo(f"checkpoint: {result['checkpoint_dir']}")
    click.echo(f"MLflow run: {result['run_id']} ({result['tracking_uri']}, experiment "
               f"{result['experiment']})")
    if result.get("best_val_loss") is not None:
        click.echo(f"best val_loss: {result['best_val_loss']:.4f}")
    click.echo(f"steps: {result['global_step']} ({result['epochs']} epochs) in "
               f"{result['seconds']:.0f} s ({result['cpu_seconds']:.0f} CPU s); pairs: "
               f"{d.get('train_pairs')} train, {d.get('val_pairs')} early stopping; skipped "
               f"stickers: {d.get('skipped_stickers')}")
