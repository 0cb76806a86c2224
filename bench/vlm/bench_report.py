"""``vlm-bench`` results: the markdown table, the files in ``--out`` and the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

JSON_FILE = "vlm_bench.json"
MD_FILE = "vlm_bench.md"
EXPERIMENT = "persrv-vlm-bench"


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def render_markdown(result: dict[str, Any]) -> str:
    """The result as a markdown page: setup, one row per batch size, describe, the formulas."""
    p, seq = result["params"], result["sequence"]
    gc = "on" if result["settings"]["gradient_checkpointing"] else "off"
    lines = [f"# vlm-bench: {result['shape']} on {result['device']} ({result['date']})", "",
             f"- precision {result['precision']} (base weights {result['dtype']}, LoRA fp32), "
             f"gradient checkpointing {gc}; torch {result['versions']['torch']}, "
             f"transformers {result['versions']['transformers']}",
             f"- parameters: {p['total']:,} total ({p['trainable']:,} trainable LoRA; vision "
             f"{p['vision']:,}, projector {p['projector']:,}, language {p['language']:,}, "
             f"lm_head {p['lm_head']:,})",
             f"- one example: {seq['lm_tokens']} language-model tokens ({seq['prompt_tokens']} "
             f"prompt + {seq['image_tokens']} image + {seq['answer_tokens']} answer incl. EOS); "
             f"the vision tower runs over {seq['vision_positions']} positions",
             f"- model FLOPs per training example: {result['flops']['per_sample']:.3e} "
             f"({result['flops']['formula']})",
             f"- peak: {result['peak_flops']['basis']}"
             + (f" = {result['peak_flops']['value'] / 1e12:.0f} TFLOP/s"
                if result["peak_flops"]["value"] else ""), "",
             "| batch | step s (median) | samples/s | tokens/s | TFLOP/s | MFU | peak mem GiB |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["train"]:
        if r["oom"]:
            lines.append(f"| {r['batch_size']} | out of memory | | | | | |")
            continue
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['batch_size']} | {r['step_time_s_median']:.3f} | "
                     f"{r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['model_flops_per_s'] / 1e12:.3g} | {mfu} | "
                     f"{r['peak_memory_gib']:.1f} |")
    d = result["describe"]
    lines += ["", f"Peak memory: {result['train'][0].get('memory_kind', 'n/a')}.", ""]
    if d["oom"]:
        lines.append(f"describe (batch {d['batch_size']}): out of memory")
    else:
        lines.append(f"describe (Lightning predict loop, batch {d['batch_size']}, "
                     f"{d['max_new_tokens']} new tokens per image, greedy): "
                     f"{_fmt(d['images_per_s'], '.2f')} images/s, "
                     f"{_fmt(d['new_tokens_per_s'], '.0f')} generated tokens/s, peak memory "
                     f"{d['peak_memory_gib']:.1f} GiB")
    lines += ["", "Random weights with the model's exact shapes: speed and memory do not depend "
              "on the weights' values. MFU uses 6N per token (frozen weights included); with a "
              "frozen base the weight gradients are skipped, so the work done is nearer 4N "
              "(multiply MFU by 2/3)."]
    return "\n".join(lines) + "\n"


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """Flat metrics: the best training figures over batch sizes and the describe ones."""
    fitting = [r for r in result["train"] if not r["oom"]]
    out: dict[str, float] = {"params_total": result["params"]["total"],
                             "params_trainable": result["params"]["trainable"]}
    if fitting:
        best = max(fitting, key=lambda r: r["samples_per_s"])
        out.update(train_samples_per_s=best["samples_per_s"], train_tokens_per_s=best["tokens_per_s"],
                   train_best_batch_size=best["batch_size"],
                   largest_fitting_batch_size=max(r["batch_size"] for r in fitting),
                   peak_memory_gib=best["peak_memory_gib"])
        if best["mfu"] is not None:
            out["mfu"] = best["mfu"]
    d = result["describe"]
    if not d["oom"]:
        out.update(describe_images_per_s=d["images_per_s"],
                   describe_new_tokens_per_s=d["new_tokens_per_s"])
    return out


def write_results(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / JSON_FILE, out / MD_FILE
    jpath.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    mpath.write_text(render_markdown(result), encoding="utf-8")
    return jpath, mpath


def log_to_mlflow(result: dict[str, Any], files: tuple[Path, Path], uri: str | None,
                  echo: Callable[[str], None] = print) -> str | None:
    """One run in experiment ``persrv-vlm-bench`` (tags from :func:`vlm_bench_tags`): settings as
    params, :func:`metrics_of`, per-batch-size curves stepped by batch size, the two files."""
    from bench.tracking import Tracker, git_commit, mask_credentials, resolve_tracking_uri
    from bench.tracking.schema import vlm_bench_tags
    uri = resolve_tracking_uri(uri)
    try:
        tracker = Tracker(uri)
        run_id = tracker.start_run(EXPERIMENT, run_name=f"vlm-bench-{result['shape']}",
                                   tags={**vlm_bench_tags(shape=result["shape"],
                                                          device=result["device"],
                                                          git_commit=git_commit()),
                                         "precision": result["precision"]})
        tracker.log_params(run_id, {"settings": result["settings"], "params": result["params"],
                                    "sequence": result["sequence"],
                                    "peak_flops": result["peak_flops"]["value"] or "unknown"})
        tracker.log_metrics(run_id, metrics_of(result))
        for r in result["train"]:
            if not r["oom"]:
                curve = {f"by_batch.{k}": r[k] for k in ("samples_per_s", "tokens_per_s",
                                                          "peak_memory_gib", "mfu")
                         if r.get(k) is not None}
                tracker.log_metrics(run_id, curve, step=int(r["batch_size"]))
        for f in files:
            tracker.log_artifact(run_id, f)
        tracker.end_run(run_id, "FINISHED")
        return run_id
    except Exception as exc:  # noqa: BLE001 - the local results stand
        echo(f"warning: MLflow logging failed ({type(exc).__name__}: "
             f"{mask_credentials(str(exc))}); results are local only in {files[0].parent}")
        return None
