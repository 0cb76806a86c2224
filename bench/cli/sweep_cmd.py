"""``persrv-bench sweep``: tune a retriever with Optuna on the validation split (bench.sweep)."""

from __future__ import annotations

import json

import click


@click.command("sweep")
@click.argument("space", type=click.Path(dir_okay=False))
@click.option("--experiment", "-e", "experiment", required=True,
              type=click.Path(dir_okay=False),
              help="Experiment config (YAML): dataset, split, features and the tuned "
                   "retriever's base parameters.")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Total trials of the study over ALL workers (not per process): a worker "
                   "stops when the study has N finished or running trials; re-running with a "
                   "larger N resumes up to N. Default: the space's n_trials.")
@click.option("--storage", default=None,
              help="Optuna storage: an RDB URL (postgresql://user@host/db, sqlite:///f.db) or a "
                   "journal file path. Default: optuna-journal.log beside the MLflow store "
                   "(safe for several local workers).")
@click.option("--study-name", default=None,
              help="Study name; the same name resumes the study (default: "
                   "<config name>-<space file name>).")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default=None,
              help="Sampler (default: the space's sampler, else tpe). grid tries every point "
                   "of the space once (float ranges need grid: [...]).")
@click.option("--seed", type=int, default=None, help="Sampler seed (default: the config's seed).")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override an experiment config value, e.g. -o dataset.params.n_users=50.")
@click.option("--output-dir", default=None,
              help="Local folder for plots, trials.csv and best.json (default: the config's "
                   "output_dir, persrv-runs/): <dir>/sweep-<study name>/.")
@click.option("--no-final-test", is_flag=True,
              help="Do not evaluate the best parameters on the test split at the end.")
@click.option("--no-tracking", is_flag=True, help="Record trials in Optuna only, no MLflow.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object last.")
def sweep(space: str, experiment: str, n_trials: int | None, storage: str | None,
          study_name: str | None, sampler: str | None, seed: int | None,
          tracking_uri: str | None, overrides: tuple[str, ...], output_dir: str | None,
          no_final_test: bool, no_tracking: bool, as_json: bool) -> None:
    """Tune a retriever over the search space SPACE (YAML, see sweeps/) on the validation split
    of the --experiment config; the best parameters are then evaluated once on test.

    Several workers can run the same command (same --study-name and --storage) at once; they
    share the study, its N-trial budget and one MLflow study run with a child run per trial.
    """
    from bench.cli.main import safe_echo
    from bench.config import load_config
    from bench.sweep import load_space, run_sweep
    cfg = load_config(experiment, list(overrides))
    if no_tracking:
        cfg.tracking.enabled = False
    result = run_sweep(load_space(space), cfg, n_trials=n_trials, storage=storage,
                       study_name=study_name, sampler=sampler, seed=seed,
                       tracking_uri=tracking_uri, final_test=not no_final_test,
                       output_dir=output_dir, echo=safe_echo)
    if as_json:
        payload = {k: (str(v) if k == "folder" and v is not None else v)
                   for k, v in result.__dict__.items() if k != "plots"}
        payload["plots"] = [str(p) for p in result.plots]
        click.echo(json.dumps(payload, default=str))
