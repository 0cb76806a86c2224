"""``persrv-bench report``: paper tables, significance tests and plots for one or more runs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("sources", nargs=-1, required=True, metavar="RUN_ID|EXPERIMENT|FOLDER...")
@click.option("--baseline", default=None, help="Retriever label or name to test against "
              "(default: the config's baseline, else bm25, else the first).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: <run folder>/report; with several sources, "
                   "<out>/<n>-<run folder name> per source and <out>/compare).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: "
              "$MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--test", type=click.Choice(["permutation", "t-test"]), default="permutation",
              show_default=True, help="Paired test over users (Holm-corrected).")
@click.option("--metric", default=None, help="Metric of the cross-experiment table "
              "(default: M-MRR at the largest k).")
@click.option("--fetch-dir", type=click.Path(file_okay=False), default="persrv-runs/fetched",
              show_default=True, help="Where runs fetched from MLflow are written.")
@click.option("--log/--no-log", default=True, show_default=True,
              help="Log the report files to the parent MLflow run under report/.")
def report(sources: tuple[str, ...], baseline: str | None, out: str | None,
           tracking_uri: str | None, test: str, metric: str | None, fetch_dir: str,
           log: bool) -> None:
    """Report on each SOURCE: a local run folder, an MLflow run id or an experiment name (its
    latest benchmark run). Several sources also get one cross-experiment comparison table."""
    import time

    from bench.report.build import compare_folders, report_folder
    from bench.report.fetch import fetch_run, read_parent_run
    from bench.report.names import RunNotFoundError

    folders: list[tuple[Path, str | None, str | None]] = []  # (folder, parent run id, uri)
    for source in sources:
        if Path(source).is_dir():
            run_id, uri = read_parent_run(source)
            folders.append((Path(source), run_id, tracking_uri or uri))
        else:
            try:
                folder = fetch_run(source, tracking_uri, root=fetch_dir)
            except RunNotFoundError as exc:
                raise RunNotFoundError(f"{source!r} is not a local run folder; {exc}") from None
            click.echo(f"fetched {source} -> {folder}")
            folders.append((folder, read_parent_run(folder)[0], tracking_uri))
    for i, (folder, run_id, uri) in enumerate(folders):
        dest = (Path(out) if len(folders) == 1 else Path(out) / f"{i + 1}-{folder.name}") \
            if out else folder / "report"
        written = report_folder(folder, baseline=baseline, out=dest, test=test)
        click.echo(f"\n{folder}:\n")
        click.echo(written["summary.md"].read_text(encoding="utf-8"))
        click.echo(f"report: {dest}")
        if log and run_id:
            _log(dest, run_id, uri)
    if len(folders) > 1:
        dest = Path(out) / "compare" if out else \
            Path("persrv-reports") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        written = compare_folders([f for f, _, _ in folders], dest, metric, baseline=baseline,
                                  test=test)
        click.echo("\n" + written["compare.md"].read_text(encoding="utf-8"))
        click.echo(f"comparison: {dest}")


def _log(dest: Path, run_id: str, uri: str | None) -> None:
    """Log the report under ``report/`` to the parent run; a failure is a warning, not an error."""
    from bench.tracking import Tracker, mask_credentials, resolve_tracking_uri
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        click.echo(f"warning: report not logged: no MLflow store at {uri} (pass --tracking-uri, "
                   "or --no-log)", err=True)
        return
    try:
        Tracker(uri).log_artifacts(run_id, dest, "report")
        click.echo(f"logged to MLflow run {run_id} under report/ ({mask_credentials(uri)})")
    except Exception as exc:
        click.echo(f"warning: report not logged to MLflow run {run_id} at {mask_credentials(uri)} "
                   f"({type(exc).__name__}: {mask_credentials(str(exc))[:300]}); pass "
                   "--tracking-uri, or --no-log", err=True)
