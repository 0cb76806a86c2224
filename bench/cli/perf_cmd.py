"""``persrv-bench perf``: stage timings, peak memory and reference comparisons (bench.perf)."""

from __future__ import annotations

import click


def _sizes(ctx, param, value: str) -> tuple[int, ...]:
    if value is None or value.strip().lower() in ("", "none", "off", "0"):
        return ()
    try:
        sizes = tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated sticker counts, got {value!r}")
    if any(s < 100 for s in sizes):
        raise click.BadParameter("every size must be at least 100 stickers")
    return sizes


def _names(ctx, param, value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    from bench.registry import get_retriever_class
    for name in names:
        get_retriever_class(name)  # ConfigError naming the registered ones
    return names


@click.command("perf")
@click.option("--stage", type=click.Choice(["retrieval", "features"]), default="retrieval",
              show_default=True,
              help="retrieval: the stages below on a text-only workload; features: OCR + image "
                   "embeddings of --images rendered stickers (images/s per stage, CER, peak "
                   "memory, time for 543,098 images).")
@click.option("--images", type=click.IntRange(min=10), default=400, show_default=True,
              help="--stage features: stickers rendered (120-512 px, English and Chinese, a "
                   "fifth without text).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="--stage features: OCR/embedding workers.")
@click.option("--parallel", type=click.Choice(["auto", "processes", "threads"]), default="auto",
              show_default=True, help="--stage features: worker processes or threads.")
@click.option("--encoder", default="style-stats", show_default=True,
              help="--stage features: the image encoder.")
@click.option("--ocr-graph", type=click.Choice(["folded", "rapidocr"]), default="folded",
              show_default=True,
              help="--stage features: PP-OCRv4's graphs folded for onnxruntime's CPU kernels, or "
                   "as rapidocr ships them (features.ocr.graph).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="--stage features: runs on the same stickers; the report is the median "
                   "run's, with every run's steady rate (a shared host drifts between runs).")
@click.option("--workload", type=click.Choice(["zipf", "concepts"]), default="zipf",
              show_default=True,
              help="zipf: Zipfian 50,000-word vocabulary, 1-3 word queries, thousands of "
                   "distinct test queries (the targets are judged on it); concepts: the "
                   "46-concept synthetic vocabulary.")
@click.option("--size", type=click.IntRange(min=100), default=543_098, show_default=True,
              help="Stickers in the workload's text-only dataset (built once, then cached).")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=12_568,
              show_default=True, help="Most test requests (the first ones).")
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Ranking depth.")
@click.option("--pool", type=click.IntRange(min=1), default=5000, show_default=True,
              help="PerSRV recall depth re-ranked.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Dataset seed (and the sampling of the references).")
@click.option("--retrievers", default=None, callback=_names,
              help="Comma-separated retriever names (default: bm25 + the 7 PerSRV variants "
                   "of the pipeline target; persrv-reference only when named).")
@click.option("--rank-bm25-sample", type=click.IntRange(min=0), default=200, show_default=True,
              help="Requests run on rank-bm25 (extrapolated); 0 skips.")
@click.option("--naive-sample", type=click.IntRange(min=0), default=50, show_default=True,
              help="Requests run through the naive Python loop (extrapolated); 0 skips.")
@click.option("--scaling", default="10000,100000,543098,1000000", show_default=True,
              callback=_sizes, help="Corpus sizes of the scaling curve (bm25 + persrv, one "
                                    "process each); 'none' skips.")
@click.option("--no-peers", is_flag=True,
              help="Skip the fast references (bm25s numba, tantivy) on every request.")
@click.option("--no-sweep", is_flag=True, help="Skip the sweep-trial measurement.")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False),
              default=None, help="Measure an existing dataset directory instead (--size is "
                                 "then only used by --scaling).")
@click.option("--batch-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Requests per search call (the runner's default).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: persrv-runs/perf-<timestamp>).")
@click.option("--compare", "compare", type=click.Path(exists=True, dir_okay=False),
              default=None, help="An earlier perf.json: the report adds before/after per stage.")
@click.option("--profile", is_flag=True,
              help="cProfile the retrievers and write profile.txt into --out.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--no-tracking", is_flag=True, help="Write local results only, no MLflow.")
def perf(stage: str, images: int, workers: int, parallel: str, encoder: str, ocr_graph: str,
         repeat: int, workload: str, size: int, n_requests: int, k: int, pool: int, seed: int,
         retrievers: tuple[str, ...] | None, rank_bm25_sample: int, naive_sample: int,
         scaling: tuple[int, ...], no_peers: bool, no_sweep: bool, dataset_dir: str | None,
         batch_size: int, out: str | None, compare: str | None, profile: bool,
         tracking_uri: str | None, no_tracking: bool) -> None:
    """Time every stage of BM25, PerSRV and its ablations at paper scale; peak memory;
    rank-bm25, bm25s (numba), tantivy and a naive loop as references; one sweep trial;
    --help; a scaling curve.

    Writes perf.json, perf.md (and scaling.png) into --out and logs them to MLflow
    (experiment "perf"). Each target is marked met or missed.
    """
    import time
    from pathlib import Path

    if stage == "features":
        from bench.perf.features_bench import run_features_repeats
        folder = Path(out) if out else \
            Path("persrv-runs") / f"perf-features-{time.strftime('%Y%m%d-%H%M%S')}"
        run_features_repeats(images, repeat, workers=workers, parallel=parallel,
                             encoder=encoder, seed=seed, out=folder, echo=click.echo,
                             ocr_graph=ocr_graph)
        click.echo(f"results: {folder / 'features.json'}")
        return
    from bench.perf import PerfConfig, log_to_mlflow, run_perf
    from bench.tracking import check_reachable, resolve_tracking_uri
    uri = None if no_tracking else resolve_tracking_uri(tracking_uri)
    if uri:
        check_reachable(uri)  # before any expensive work
    cfg = PerfConfig(size=size, requests=n_requests, k=k, pool=pool, seed=seed,
                     workload=workload, retrievers=retrievers,
                     rank_bm25_sample=rank_bm25_sample, naive_sample=naive_sample,
                     peers=not no_peers, scaling=scaling, sweep_trial=not no_sweep,
                     dataset_dir=dataset_dir, batch_size=batch_size)
    folder = Path(out) if out else Path("persrv-runs") / f"perf-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_perf(cfg, folder, echo=click.echo, profile=profile, compare=compare)
    click.echo("")
    click.echo((folder / "perf.md").read_text(encoding="utf-8"))
    if uri:
        run_id = log_to_mlflow(result, folder, uri, echo=click.echo)
        if run_id:
            click.echo(f"MLflow: experiment 'perf', run {run_id}")
    click.echo(f"results: {folder}")
