"""The ``persrv-bench`` command line (also ``python -m bench``).

Only click is imported at start-up; every command imports what it needs when it runs, so
``persrv-bench --help`` stays fast. Errors meant for people (:class:`BenchError`) print as one line
and exit with status 2, without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from bench import __version__
from bench.cli.options import parse_shard


class LazyGroup(click.Group):
    """A click group whose subcommands live in other modules and load on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib
            module, attr = self.lazy[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a missing dependency is a real error
                    raise
                return None
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             lazy={
                 "evaluate": "bench.cli.evaluate_cmd:evaluate",
                 "train-vlm": "bench.cli.vlm_cmds:train_vlm",
                 "train-clip": "bench.cli.clip_cmd:train_clip",
                 "describe": "bench.cli.vlm_cmds:describe",
                 "vlm-bench": "bench.cli.vlm_bench_cmd:vlm_bench",
                 "sweep": "bench.cli.sweep_cmd:sweep",
                 "perf": "bench.cli.perf_cmd:perf",
                 "report": "bench.cli.report_cmd:report",
                 "calibrate": "bench.cli.calibrate_cmd:calibrate",
             })
@click.version_option(__version__, prog_name="persrv-bench")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option("--debug", is_flag=True, help="On an error, print the full traceback too.")
def cli(verbose: int, quiet: bool, debug: bool) -> None:
    """persrv-bench: benchmark harness for personalized sticker retrieval (PerSRV)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "jieba", "numba", "matplotlib", "PIL",
                  "sentence_transformers", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    if verbose < 2:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if quiet:
        os.environ["PERSRV_BENCH_QUIET"] = "1"


# ------------------------------------------------------------------------------------- datasets

@cli.group()
def datasets() -> None:
    """Build, list and describe canonical sticker datasets."""


@datasets.command("list")
def datasets_list() -> None:
    """List the dataset builders."""
    from bench.data.builders import list_builders
    for name, description in list_builders().items():
        click.echo(f"{name:<18} {description}")


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    from bench.errors import ConfigError
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--param {pair!r} is not of the form key=value")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


@datasets.command("build")
@click.argument("name")
@click.option("--source", type=click.Path(), default=None, help="Input file or folder.")
@click.option("--out", "out", type=click.Path(), required=True, help="Dataset directory to write.")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Builder parameter.")
def datasets_build(name: str, source: str | None, out: str, params: tuple[str, ...]) -> None:
    """Build dataset NAME (see `datasets list`) into OUT."""
    import time

    from bench.data.builders import build_dataset
    from bench.data.format import describe
    t0 = time.perf_counter()
    ds = build_dataset(name, source, out, _parse_params(params))
    stats = describe(ds)
    click.echo(f"built {ds.name} in {time.perf_counter() - t0:.1f}s -> {out}")
    click.echo(f"  {stats['stickers']} stickers, {stats['users']} users, {stats['clicks']} clicks, "
               f"fingerprint {stats['fingerprint']}")


@datasets.command("describe")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--skip-invalid", is_flag=True, help="Drop (and count) invalid clicks.")
def datasets_describe(path: str, as_json: bool, skip_invalid: bool) -> None:
    """Print statistics of the dataset directory PATH."""
    from bench.data.format import describe, load_dataset
    stats = describe(load_dataset(path, on_invalid="skip" if skip_invalid else "error"))
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False))
        return
    for key, value in stats.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k2, v2 in value.items():
                click.echo(f"  {k2}: {v2}")
        else:
            click.echo(f"{key}: {value}")


# ------------------------------------------------------------------------------------ retrievers

@cli.command("retrievers")
def retrievers_cmd() -> None:
    """List registered retrievers with their parameters and defaults."""
    import inspect

    from bench.registry import describe_retriever, param_specs, registry
    for name, cls in registry().items():
        click.echo(f"{name}: {describe_retriever(cls)}")
        for pname, p in param_specs(cls).items():
            default = "" if p.default is inspect.Parameter.empty else f" = {p.default!r}"
            click.echo(f"    {pname}{default}")


# ----------------------------------------------------------------------------------------- run

def safe_echo(text: str = "") -> None:
    """``click.echo`` of a line made from user-supplied names: credentials masked, control
    characters escaped (:func:`bench.secrets.safe_output`)."""
    from bench.secrets import safe_output
    click.echo(safe_output(text))


@cli.command("run")
@click.argument("config", type=click.Path())
@click.argument("extra", nargs=-1, metavar="[KEY=VALUE ...]")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. -o dataset.params.n_stickers=500 (or bare "
                   "KEY=VALUE after CONFIG, as in Hydra).")
@click.option("--seeds", default=None, metavar="N [N ...]",
              help="Repeat the run once per seed (dataset simulation, protocol and retriever "
                   "seeds) and report mean ± sd: --seeds 0 1 2 (or the config's `seeds:`).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db).")
@click.option("--output-dir", default=None, help="Local results folder (default: persrv-runs/).")
@click.option("--no-report", is_flag=True, help="Skip the automatic report.")
@click.option("--no-tracking", is_flag=True, help="Write local results only, no MLflow.")
def run_cmd(config: str, extra: tuple[str, ...], overrides: tuple[str, ...], seeds: str | None,
            tracking_uri: str | None, output_dir: str | None, no_report: bool,
            no_tracking: bool) -> None:
    """Run the benchmark described by CONFIG (YAML)."""
    from bench.config import load_config, split_bare_overrides
    from bench.errors import ConfigError
    from bench.experiment import run_experiment
    bare, rest = split_bare_overrides(list(extra))
    if rest and seeds is None:
        raise ConfigError(f"unexpected argument {rest[0]!r} (overrides are KEY=VALUE)")
    cfg = load_config(config, list(overrides) + bare)
    if no_report:
        cfg.report = False
    if no_tracking:
        cfg.tracking.enabled = False
    seed_list = cfg.seeds
    if seeds is not None:
        try:
            seed_list = [int(s) for s in [*seeds.replace(",", " ").split(), *rest]]
        except ValueError:
            raise ConfigError(f"--seeds takes integers, got {' '.join([seeds, *rest])!r}") from None
    if seed_list:
        from bench.experiment_seeds import run_seeds
        group = run_seeds(cfg, seed_list, tracking_uri=tracking_uri, output_dir=output_dir,
                          config_path=config, echo=safe_echo)
        failed = [r for outcome in group.outcomes for r in outcome.failed]
    else:
        outcome = run_experiment(cfg, tracking_uri=tracking_uri, output_dir=output_dir,
                                 config_path=config, echo=safe_echo)
        failed = outcome.failed
    if failed:
        from bench.secrets import safe_output
        for r in failed:
            click.echo(safe_output(f"error: retriever {r.label} failed: {r.error} (see "
                                   f"{r.folder}/error.txt)"), err=True)
        sys.exit(1)


@cli.command("features")
@click.argument("config", type=click.Path())
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. -o features.ocr=false or "
                   "-o dataset.params.n_stickers=500 (repeatable).")
@click.option("--shard", default=None, callback=parse_shard, metavar="I/N",
              help="Compute only shard I of N (0-based contiguous blocks of the stickers) into "
                   "the shared feature cache, e.g. --shard $SLURM_ARRAY_TASK_ID/4; shards may "
                   "run at once on machines sharing features.cache_dir, and a later run reads "
                   "their union.")
def features_cmd(config: str, overrides: tuple[str, ...], shard: tuple[int, int] | None) -> None:
    """Compute (or reuse) the offline features of CONFIG's dataset: OCR, image embeddings."""
    from bench.config import load_config
    from bench.data.resolve import resolve_dataset
    cfg = load_config(config, list(overrides))
    ds = resolve_dataset(cfg.dataset)
    if shard is not None:
        from bench.features.cache import FeatureCache
        from bench.features.config import validate_features
        from bench.features.extract import fill_features
        fcfg = validate_features(cfg.features)
        report = fill_features(ds, fcfg, FeatureCache(fcfg.cache_dir), shard=shard)
        click.echo(f"features for {ds.name} ({ds.fingerprint}), shard {shard[0]}/{shard[1]}:")
        for k, v in report.items():
            click.echo(f"  {k}: {v}")
        return
    from bench.runner import attach_configured_features
    _, embeddings, report = attach_configured_features(ds, cfg.features)
    click.echo(f"features for {ds.name} ({ds.fingerprint}):")
    for k, v in (report or {}).items():
        click.echo(f"  {k}: {v}")
    if embeddings is not None:
        click.echo(f"  embeddings: {embeddings.shape[0]} x {embeddings.shape[1]}")
    fcfg = cfg.features  # validated with the config
    if "gt_caption" in ds.stickers.columns and fcfg.ocr and ds.stickers["image"].notna().any():
        from bench.features.cache import FeatureCache
        from bench.features.ocr import ocr_report_lines, ocr_stickers
        ocr_cfg = fcfg.ocr_config(ds.meta.get("languages"))
        ocr = ocr_stickers(ds, ocr_cfg, FeatureCache(fcfg.cache_dir), progress=False)  # cached
        for line in ocr_report_lines(ds, ocr_cfg, ocr):  # CER against the rendered captions
            click.echo(f"  {line}")


def main(argv: list[str] | None = None) -> None:
    """Entry point and the one error boundary (:mod:`bench.cli.boundary`): any exception is one
    masked line on stderr (BenchError and input/environment errors exit 2, others 1), its
    traceback saved to a log file (printed with ``--debug``)."""
    from bench.cli import boundary
    from bench.secrets import install_log_masking
    args = list(sys.argv[1:] if argv is None else argv)
    boundary.prepare_streams()
    boundary.register_argument_secrets(args)
    install_log_masking()
    try:
        cli.main(args=args, prog_name="persrv-bench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # a bad option value: one line, not click's usage block
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 (the boundary: every exception is one line)
        sys.exit(boundary.report(exc, args, debug="--debug" in args))


if __name__ == "__main__":  # pragma: no cover
    main()
