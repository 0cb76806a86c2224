"""``persrv-bench vlm-bench``: LoRA training and description throughput of a LLaVA-1.5 shape.

The model is built from its config (:mod:`bench.vlm.shapes`, random weights, nothing downloaded)
and wrapped exactly as ``train-vlm`` wraps it: :class:`~bench.vlm.module.LlavaLoraModule` with the
config's LoRA section (default r 16, alpha 32, the language model's q/v projections), the same
precision rules (:func:`~bench.vlm.module.resolve_precision`) and a Lightning ``Trainer``.

Data is synthetic: drawn sticker images through the shape's CLIP preprocessing, and token
sequences laid out like a LLaVA-1.5 training example -- ``prompt_tokens`` of chat template and
question around the ``image_tokens`` image tokens, then ``answer_tokens`` of query and EOS, the
loss on the answer only. Defaults (40 prompt + 576 image + 8 answer + EOS = 625 tokens) follow
LLaVA-1.5's prompt with the default question and a short query. For ``describe``, the predict loop
generates exactly ``max_new_tokens`` tokens per image (EOS suppressed by ``min_new_tokens``).

Per batch size the training figures are: median step time, samples/s, tokens/s (language-model
sequence tokens), model FLOP/s and MFU (:func:`~bench.vlm.shapes.training_flops_per_sample` over
the assumed dense bf16 peak of the GPU; None on a CPU or an unknown GPU), peak GPU memory
(``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS). A batch size that does not
fit is recorded as ``oom`` and the next one is tried.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.vlm.shapes import Shape

log = logging.getLogger(__name__)

TEXT_TOKEN_LOW = 5  # synthetic text ids start after the tiny tokenizer's special tokens
TEXT_TOKEN_HIGH = 261


@dataclass
class BenchSettings:
    """What ``vlm-bench`` measures (the CLI's flags)."""
    shape: str = "tiny"
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    steps: int = 5
    warmup_steps: int = 2
    precision: str = "auto"
    gradient_checkpointing: bool = False
    accelerator: str = "auto"
    prompt_tokens: int = 40
    answer_tokens: int = 8
    describe_batch_size: int | None = None  # default: the first batch size
    describe_batches: int = 3              # the first is a warm-up
    max_new_tokens: int = 32
    seed: int = 0
    lora: dict[str, Any] = field(default_factory=dict)  # a LoraSection; {} = train-vlm's defaults
    lr: float = 2e-4


def sticker_images(n: int, size: int, seed: int = 0) -> list[Any]:
    """``n`` sticker-like RGB images (coloured shapes and strokes on white), seeded."""
    import random

    from PIL import Image, ImageDraw
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            box = sorted(rng.randrange(size) for _ in range(2)), sorted(
                rng.randrange(size) for _ in range(2))
            xy = [box[0][0], box[1][0], box[0][1] + 1, box[1][1] + 1]
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=colour)
        out.append(im)
    return out


class SyntheticBatches:
    """Collate function and index dataset of synthetic LLaVA examples (see the module docstring).

    Training batches: ``input_ids``/``attention_mask``/``labels`` of shape ``(B, lm_tokens)`` and
    ``pixel_values`` ``(B, 3, H, W)``; generation batches: the prompt only, plus ``sticker_ids``.
    """

    def __init__(self, processor: Any, shape: Shape, *, prompt_tokens: int, answer_tokens: int,
                 image_token_id: int, seed: int = 0, train: bool = True, pool: int = 8):
        import torch
        from bench.vlm.module import IGNORE_INDEX
        from bench.vlm.tiny import BOS_ID, EOS_ID
        self.train = train
        self.pixels = processor.image_processor(
            sticker_images(pool, shape.image_size, seed), return_tensors="pt")["pixel_values"]
        gen = torch.Generator().manual_seed(seed)
        head = 4  # BOS + "USER: " before the image, the rest of the prompt after it
        prompt = torch.randint(TEXT_TOKEN_LOW, TEXT_TOKEN_HIGH, (prompt_tokens,), generator=gen)
        prompt[0] = BOS_ID
        image = torch.full((shape.image_tokens,), image_token_id, dtype=torch.long)
        self.prompt = torch.cat([prompt[:head], image, prompt[head:]])
        answer = torch.randint(TEXT_TOKEN_LOW, TEXT_TOKEN_HIGH, (answer_tokens + 1,), generator=gen)
        answer[-1] = EOS_ID
        self.answer = answer
        self.ignore = IGNORE_INDEX

    @property
    def lm_tokens(self) -> int:
        """Language-model sequence length of one example."""
        return len(self.prompt) + (len(self.answer) if self.train else 0)

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        import torch
        n = len(indices)
        pixel_values = self.pixels[[i % len(self.pixels) for i in indices]]
        if not self.train:
            ids = self.prompt.expand(n, -1).clone()
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "pixel_values": pixel_values, "sticker_ids": [str(i) for i in indices],
                    "skipped_ids": []}
        seq = torch.cat([self.prompt, self.answer])
        labels = torch.cat([torch.full_like(self.prompt, self.ignore), self.answer])
        ids = seq.expand(n, -1).clone()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "pixel_values": pixel_values, "labels": labels.expand(n, -1).clone(),
                "sticker_ids": [str(i) for i in indices]}


def _timer_callback(cuda: bool) -> Any:
    """A Lightning callback recording wall time (and the loss) of every train / predict batch."""
    import lightning as L
    import torch

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class BatchTimer(L.Callback):
        def __init__(self) -> None:
            self.train_s: list[float] = []
            self.predict_s: list[float] = []
            self.losses: list[float] = []
            self._t0 = 0.0

        def _start(self, *args: Any) -> None:
            sync()
            self._t0 = time.perf_counter()

        on_train_batch_start = _start
        on_predict_batch_start = _start

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            sync()
            self.train_s.append(time.perf_counter() - self._t0)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss.detach()))

        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx,
                                 dataloader_idx=0) -> None:
            sync()
            self.predict_s.append(time.perf_counter() - self._t0)

    return BatchTimer()


def _memory(cuda: bool) -> tuple[float, str]:
    """``(peak GiB, what was measured)`` since the last reset."""
    if cuda:
        import torch
        return torch.cuda.max_memory_allocated() / 2**30, "cuda_max_memory_allocated"
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process_peak_rss"


def _reset_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _trainer(accelerator: str, precision: str, callbacks: list[Any], max_steps: int = -1) -> Any:
    import lightning as L
    return L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=max_steps,
                     max_epochs=-1 if max_steps > 0 else None, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     callbacks=callbacks)


def measure_training(module: Any, data: SyntheticBatches, batch_size: int, s: BenchSettings,
                     ctx: dict[str, Any]) -> dict[str, Any]:
    """Train ``warmup_steps + steps`` steps at ``batch_size``; the figures of the timed steps."""
    import statistics

    import torch
    from torch.utils.data import DataLoader
    cuda = ctx["cuda"]
    timer = _timer_callback(cuda)
    total = s.warmup_steps + s.steps
    loader = DataLoader(list(range(batch_size * total)), batch_size=batch_size, shuffle=False,
                        collate_fn=data)
    _reset_memory(cuda)
    row: dict[str, Any] = {"batch_size": batch_size, "steps": s.steps,
                           "warmup_steps": s.warmup_steps, "oom": False}
    try:
        _trainer(ctx["accelerator"], ctx["precision"], [timer], max_steps=total).fit(module, loader)
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
        log.warning("batch size %d does not fit in GPU memory", batch_size)
        _reset_memory(cuda)
        return row
    timed = timer.train_s[s.warmup_steps:]
    step_s = statistics.median(timed)
    samples = batch_size / step_s
    flops = samples * ctx["flops_per_sample"]
    peak, kind = _memory(cuda)
    row.update(step_time_s_median=step_s, step_time_s_mean=statistics.fmean(timed),
               samples_per_s=samples, tokens_per_s=samples * data.lm_tokens,
               model_flops_per_s=flops,
               mfu=flops / ctx["peak_flops"] if ctx["peak_flops"] else None,
               peak_memory_gib=peak, memory_kind=kind, loss_first=timer.losses[0],
               loss_last=timer.losses[-1])
    return row


def measure_describe(module: Any, data: SyntheticBatches, batch_size: int, s: BenchSettings,
                     ctx: dict[str, Any]) -> dict[str, Any]:
    """Greedy generation of ``max_new_tokens`` per image through ``Trainer.predict``."""
    import torch
    from torch.utils.data import DataLoader
    cuda = ctx["cuda"]
    base = module.model.get_base_model() if hasattr(module.model, "get_base_model") \
        else module.model
    for conf in (base.config, getattr(base.config, "text_config", None)):
        if conf is not None:
            conf.use_cache = True  # gradient checkpointing turned it off for training
    base.generation_config.min_new_tokens = s.max_new_tokens
    module.hparams.max_new_tokens = s.max_new_tokens
    timer = _timer_callback(cuda)
    loader = DataLoader(list(range(batch_size * s.describe_batches)), batch_size=batch_size,
                        shuffle=False, collate_fn=data)
    _reset_memory(cuda)
    row: dict[str, Any] = {"batch_size": batch_size, "batches": s.describe_batches,
                           "max_new_tokens": s.max_new_tokens, "oom": False}
    try:
        with torch.no_grad():
            out = _trainer(ctx["accelerator"], ctx["precision"], [timer]).predict(
                module, loader, return_predictions=True)
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
        _reset_memory(cuda)
        return row
    timed = timer.predict_s[1:] or timer.predict_s
    images = batch_size * len(timed)
    peak, kind = _memory(cuda)
    row.update(images_per_s=images / sum(timed),
               new_tokens_per_s=images * s.max_new_tokens / sum(timed),
               described=sum(len(batch) for batch in out or []), peak_memory_gib=peak,
               memory_kind=kind)
    return row


def run_vlm_bench(s: BenchSettings) -> dict[str, Any]:
    """Build the shape, measure training at every batch size and describe; the result dict."""
    import platform

    import torch
    import transformers
    from bench.vlm.config import LoraSection
    from bench.vlm.module import LlavaLoraModule, resolve_precision
    from bench.vlm.shapes import (build_model, build_processor, get_shape, parameter_counts,
                                  peak_bf16_flops, training_flops_per_sample)
    from bench.vlm.tiny import IMAGE_TOKEN_ID
    shape = get_shape(s.shape)
    precision, dtype = resolve_precision(s.precision, s.accelerator)
    cuda = s.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(device) if cuda else (platform.processor()
                                                                     or platform.machine())
    lora = LoraSection.model_validate(s.lora)
    t0 = time.perf_counter()
    base = build_model(s.shape, device=device, dtype=getattr(torch, dtype), seed=s.seed)
    module = LlavaLoraModule(
        model=base, processor=build_processor(s.shape), lora=True, lora_r=lora.r,
        lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        lr=s.lr, gradient_checkpointing=s.gradient_checkpointing, dtype=dtype,
        max_new_tokens=s.max_new_tokens)
    build_s = time.perf_counter() - t0
    kw = dict(prompt_tokens=s.prompt_tokens, answer_tokens=s.answer_tokens,
              image_token_id=IMAGE_TOKEN_ID, seed=s.seed)
    train_data = SyntheticBatches(module.processor, shape, train=True, **kw)
    counts = parameter_counts(module.model)
    peak = peak_bf16_flops(device_name) if cuda else None
    ctx = {"cuda": cuda, "accelerator": "gpu" if cuda else "cpu", "precision": precision,
           "peak_flops": peak,
           "flops_per_sample": training_flops_per_sample(counts, shape, train_data.lm_tokens)}
    train = [measure_training(module, train_data, b, s, ctx) for b in s.batch_sizes]
    describe = measure_describe(module, SyntheticBatches(module.processor, shape, train=False, **kw),
                                s.describe_batch_size or s.batch_sizes[0], s, ctx)
    return {
        "shape": s.shape, "settings": asdict(s), "precision": precision, "dtype": dtype,
        "device": device_name, "accelerator": ctx["accelerator"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "date": time.strftime("%Y-%m-%d"), "build_seconds": build_s, "params": counts,
        "sequence": {"lm_tokens": train_data.lm_tokens, "image_tokens": shape.image_tokens,
                     "prompt_tokens": s.prompt_tokens, "answer_tokens": s.answer_tokens + 1,
                     "vision_positions": shape.patch_positions},
        "flops": {"per_sample": ctx["flops_per_sample"],
                  "per_lm_token": ctx["flops_per_sample"] / train_data.lm_tokens,
                  "formula": "6 * ((language + lm_head) * lm_tokens + vision * vision_positions "
                             "+ projector * image_tokens); frozen weights included; no "
                             "attention-score FLOPs"},
        "peak_flops": {"value": peak, "basis": ("dense bf16 tensor-core peak assumed for "
                                                f"{device_name}") if peak else
                       "unknown for this device: MFU not reported"},
        "train": train, "describe": describe,
    }
