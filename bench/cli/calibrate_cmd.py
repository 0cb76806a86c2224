"""``persrv-bench calibrate CONFIG``: the bed self-test (:mod:`bench.calibrate`)."""

from __future__ import annotations

import click


@click.command("calibrate")
@click.argument("config", type=click.Path())
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. -o dataset.params.n_stickers=500.")
@click.option("--effects", default=None, metavar="E1,E2",
              help="Effects to sweep (default: all the builder supports): style, repeat, "
                   "popularity, content.")
@click.option("--levels", "levels", multiple=True, metavar="EFFECT=V1,V2,...",
              help="Levels of one effect, null first (e.g. --levels style=1,0.5,0).")
@click.option("--seeds", default="0", metavar="N,N", help="Beds per level (users pooled).")
@click.option("--n-users", type=int, default=None, help="Simulated users per bed.")
@click.option("--k", type=int, default=20, show_default=True, help="M-MRR cut-off.")
@click.option("--output-dir", default=None, help="Folder (default: <output_dir>/calibrate-<name>).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db).")
@click.option("--no-tracking", is_flag=True, help="Write local files only, no MLflow.")
def calibrate(config: str, overrides: tuple[str, ...], effects: str | None,
              levels: tuple[str, ...], seeds: str, n_users: int | None, k: int,
              output_dir: str | None, tracking_uri: str | None, no_tracking: bool) -> None:
    """Sweep each planted effect of CONFIG's simulated bed from null to strong and print the
    dose-response table of paired per-user deltas (validation split) with the minimum
    detectable effect."""
    from pathlib import Path

    from bench.calibrate.effects import EFFECTS, parse_levels
    from bench.calibrate.output import format_table, log_mlflow, write
    from bench.calibrate.sweep import calibrate as run_calibration
    from bench.config import load_config
    from bench.errors import ConfigError
    cfg = load_config(config, list(overrides))
    try:
        seed_list = [int(s) for s in seeds.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--seeds takes integers, got {seeds!r}") from None
    names = [e.strip() for e in effects.split(",") if e.strip()] if effects else None
    if names is None:
        from bench.data.builders import builder_params
        known = builder_params(cfg.dataset.builder) if cfg.dataset.builder else {}
        names = [n for n, e in EFFECTS.items() if e.knob in known] or list(EFFECTS)
    folder = Path(output_dir or Path(cfg.output_dir) / f"calibrate-{cfg.name}")
    cal = run_calibration(cfg, names, parse_levels(levels), seed_list, n_users, k,
                          folder / "points", echo=click.echo)
    files = write(cal, folder)
    click.echo(format_table(cal))
    click.echo(f"written: {', '.join(str(p) for p in files.values())}")
    if cfg.tracking.enabled and not no_tracking:
        run_id = log_mlflow(cal, files, cfg.tracking.experiment or f"calibrate-{cfg.name}",
                            tracking_uri or cfg.tracking.uri, cfg.name)
        click.echo(f"mlflow run {run_id}")
