"""``persrv-bench vlm-bench``: LoRA training and describe throughput of a LLaVA-1.5 shape built
from its config (random weights, no download). torch/lightning load inside the command only."""

from __future__ import annotations

import click


@click.command("vlm-bench")
@click.option("--shape", type=click.Choice(["llava-1.5-7b", "tiny"]), default="llava-1.5-7b",
              show_default=True, help="Model shape (tiny: the random CPU test model).")
@click.option("--batch-size", "batch_sizes", type=click.IntRange(min=1), multiple=True,
              help="Training batch size; repeat for several (default 1). One that does not fit "
                   "is recorded as out of memory.")
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed optimiser steps per batch size.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16-mixed", "32-true"]),
              default="auto", show_default=True,
              help="auto: bf16-mixed (bf16 base weights) on a bf16 GPU, else 32-true.")
@click.option("--gradient-checkpointing", is_flag=True, help="Non-reentrant activation "
              "checkpointing, as trainer.gradient_checkpointing in train-vlm.")
@click.option("--accelerator", default="auto", show_default=True, help="auto, gpu or cpu.")
@click.option("--prompt-tokens", type=click.IntRange(min=5), default=40, show_default=True,
              help="Chat-template + question tokens around the image tokens.")
@click.option("--answer-tokens", type=click.IntRange(min=1), default=8, show_default=True,
              help="Query tokens per target (EOS added).")
@click.option("--describe-batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size of the describe measurement (default: the first --batch-size).")
@click.option("--describe-batches", type=click.IntRange(min=2), default=3, show_default=True,
              help="Predict batches (the first one is a warm-up).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--config", "vlm_config", type=click.Path(dir_okay=False), default=None,
              help="VLM config whose lora: section and trainer.lr to use (default: train-vlm's "
                   "defaults, r 16 on the language model's q/v projections).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="outputs/vlm-bench",
              show_default=True, help="Folder for vlm_bench.json and vlm_bench.md.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--no-tracking", is_flag=True, help="Write the local files only, no MLflow.")
@click.option("--seed", type=int, default=0, show_default=True)
def vlm_bench(shape: str, batch_sizes: tuple[int, ...], steps: int, warmup_steps: int,
              precision: str, gradient_checkpointing: bool, accelerator: str, prompt_tokens: int,
              answer_tokens: int, describe_batch_size: int | None, describe_batches: int,
              max_new_tokens: int, vlm_config: str | None, out_dir: str,
              tracking_uri: str | None, no_tracking: bool, seed: int) -> None:
    """Measure LoRA training (samples/s, tokens/s, MFU, peak memory per batch size) and describe
    throughput (images/s) of a LLaVA-1.5 shape on this machine; JSON + markdown, MLflow."""
    from bench.vlm.bench import BenchSettings, run_vlm_bench
    from bench.vlm.bench_report import log_to_mlflow, render_markdown, write_results
    lora, lr = {}, 2e-4
    if vlm_config:
        from bench.vlm.config import load_vlm_config
        cfg = load_vlm_config(vlm_config)
        lora, lr = cfg.lora.model_dump(), cfg.trainer.lr
    settings = BenchSettings(
        shape=shape, batch_sizes=list(batch_sizes) or [1], steps=steps,
        warmup_steps=warmup_steps, precision=precision,
        gradient_checkpointing=gradient_checkpointing, accelerator=accelerator,
        prompt_tokens=prompt_tokens, answer_tokens=answer_tokens,
        describe_batch_size=describe_batch_size, describe_batches=describe_batches,
        max_new_tokens=max_new_tokens, seed=seed, lora=lora, lr=lr)
    result = run_vlm_bench(settings)
    files = write_results(result, out_dir)
    click.echo(render_markdown(result))
    click.echo(f"wrote {files[0]} and {files[1]}")
    if not no_tracking:
        run_id = log_to_mlflow(result, files, tracking_uri, echo=click.echo)
        if run_id:
            click.echo(f"MLflow run: {run_id}")
