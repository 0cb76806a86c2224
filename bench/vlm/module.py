"""The LoRA vision-language model as a LightningModule: LLaVA-1.5 + a peft LoRA adapter.

:class:`LlavaLoraModule` holds the model, the loss and the optimiser; data comes from
:class:`bench.vlm.data.StickerQueryDataModule`, devices/precision/checkpoints from the ``Trainer``.

- **Model**: any LLaVA-1.5 checkpoint (``llava-hf/llava-1.5-7b-hf`` by default), loaded lazily in
  :meth:`configure_model` (so every DDP/FSDP rank loads its own copy and a cached run never loads
  it), or an already-built ``(model, processor)`` pair (tests, the tiny model).
- **Adapter**: a new LoRA adapter (``lora=True``; rank/alpha/dropout/targets configurable; the
  default targets are the *language model's* ``q_proj``/``v_proj`` only), an existing adapter
  directory (``adapter=...``), or none (the base model, for base descriptions).
- **Precision** follows the device (:func:`resolve_precision`): bf16 base weights with
  ``bf16-mixed`` autocast on a GPU that supports bf16, fp32 on CPU. The LoRA weights stay fp32
  (peft's ``autocast_adapter_dtype``); ``bf16-true`` is refused because Lightning would cast the
  trainable adapter to bf16 (updates silently stall).
- **Checkpoints** hold only the trainable (adapter) weights (:meth:`on_save_checkpoint`) and load
  with ``strict_loading = False``; :meth:`export_adapter` writes the peft adapter
  (``adapter_config.json`` + ``adapter_model.safetensors``), the processor and ``persrv_vlm.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch

from bench.vlm.defaults import (DEFAULT_MODEL, DEFAULT_QUESTION,  # noqa: F401 - re-exported
                                 DEFAULT_TARGET_MODULES)

log = logging.getLogger(__name__)

#: Written next to an exported adapter: which base model and prompt it belongs to.
ADAPTER_META_FILE = "persrv_vlm.json"
IGNORE_INDEX = -100

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PRECISION_DTYPE = {"32-true": "float32", "32": "float32", "bf16-mixed": "bfloat16",
                    "16-mixed": "float16"}


def resolve_precision(precision: str = "auto", accelerator: str = "auto") -> tuple[str, str]:
    """``(Trainer precision, base-model dtype name)`` for a configured precision.

    ``auto``: ``("bf16-mixed", "bfloat16")`` when the run will use a CUDA GPU that supports bf16,
    else ``("32-true", "float32")``. Explicit: ``32-true``, ``bf16-mixed`` (bf16 weights),
    ``16-mixed`` (fp16 weights). ``bf16-true``/``16-true`` are refused (they cast the adapter).
    """
    if precision == "auto":
        gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        if gpu and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "bfloat16"
        return "32-true", "float32"
    if precision not in _PRECISION_DTYPE:
        from bench.errors import ConfigError
        raise ConfigError(f"precision {precision!r} is not supported for LoRA training (use auto, "
                          "32-true, bf16-mixed or 16-mixed; *-true half precision would cast the "
                          "trainable adapter weights too)")
    return precision, _PRECISION_DTYPE[precision]


def build_prompt(processor: Any, question: str = DEFAULT_QUESTION) -> str:
    """The generation prompt from the processor's chat template: one user turn (image + question)
    followed by the assistant prefix (LLaVA-1.5: ``USER: <image>\\n<question> ASSISTANT:``)."""
    conversation = [{"role": "user",
                     "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    if not isinstance(prompt, str):  # some versions return a list for a single conversation
        prompt = prompt[0]
    return prompt


def image_token_id(processor: Any) -> int:
    tok = processor.tokenizer
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tid = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    return int(tid)


def _clean_name(name: str) -> str:
    """A parameter name without the wrappers FSDP / activation checkpointing insert."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


class LlavaLoraModule(L.LightningModule):
    """LLaVA-1.5 with a LoRA adapter: training loss, validation loss, greedy generation.

    Args:
        model_name_or_path: Hub id or local directory of a LLaVA-1.5 checkpoint (ignored when
            ``model`` is given or ``tiny`` is set).
        model, processor: an already-built ``LlavaForConditionalGeneration`` (without adapter)
            and its ``LlavaProcessor`` (a model needs its processor, except with ``tiny``); a
            processor alone is used with the model loaded from ``model_name_or_path``.
        tiny: build the tiny random LLaVA of :mod:`bench.vlm.tiny` (offline, CPU tests).
        revision: model revision for ``from_pretrained``.
        lora: add a new trainable LoRA adapter (ignored when ``adapter`` is given).
        lora_r, lora_alpha, lora_dropout, target_modules: the LoRA settings (``target_modules`` a
            regex matched against full module names, or a list of module-name suffixes).
        adapter: directory of an exported adapter to load instead of a new one.
        adapter_trainable: keep a loaded adapter trainable (continue training) or frozen.
        lr, weight_decay: AdamW over the trainable parameters.
        gradient_checkpointing: non-reentrant activation checkpointing on the base model.
        dtype: base-model weights: ``float32`` | ``bfloat16`` | ``float16`` (see
            :func:`resolve_precision`).
        question: the text of the user turn; max_answer_tokens: query truncation in training;
        max_new_tokens: generation length (greedy).
        seed: seed of the tiny model's random weights.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_MODEL, *, model: Any = None,
                 processor: Any = None, tiny: bool = False, revision: str | None = None,
                 lora: bool = True, lora_r: int = 16, lora_alpha: float = 32,
                 lora_dropout: float = 0.05,
                 target_modules: str | Sequence[str] = DEFAULT_TARGET_MODULES,
                 adapter: str | Path | None = None, adapter_trainable: bool = False,
                 lr: float = 2e-4, weight_decay: float = 0.0, gradient_checkpointing: bool = False,
                 dtype: str = "float32", question: str = DEFAULT_QUESTION,
                 max_answer_tokens: int = 32, max_new_tokens: int = 32, seed: int = 0):
        super().__init__()
        if model is not None and processor is None and not tiny:
            raise ValueError("pass the processor of the model too")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if isinstance(target_modules, (list, tuple)):
            target_modules = list(target_modules)
        self.save_hyperparameters(ignore=["model", "processor"], logger=False)
        if tiny:
            from bench.vlm.tiny import TINY_MODEL_NAME, build_tiny_processor
            model_name_or_path = TINY_MODEL_NAME
            processor = processor or build_tiny_processor()
        elif processor is None:
            from transformers import AutoProcessor
            processor = AutoProcessor.from_pretrained(model_name_or_path, revision=revision)
        self.model_name = model_name_or_path
        self.processor = processor
        self.question = question
        self.prompt = build_prompt(processor, question)
        self.image_token_id = image_token_id(processor)
        self.strict_loading = False  # checkpoints hold only the adapter (see on_save_checkpoint)
        self.model: Any = None
        self._base = model
        if model is not None:
            self.configure_model()

    # ------------------------------------------------------------------------------ model set-up

    @property
    def base_dtype(self) -> torch.dtype:
        return _DTYPES[self.hparams.dtype]

    def _load_base(self) -> Any:
        hp = self.hparams
        if self._base is not None:
            base, self._base = self._base, None
            return base
        if hp.tiny:
            from bench.vlm.tiny import build_tiny_model
            return build_tiny_model(hp.seed, dtype=self.base_dtype)
        from transformers import LlavaForConditionalGeneration
        log.info("loading %s (%s)", self.model_name, hp.dtype)
        return LlavaForConditionalGeneration.from_pretrained(
            self.model_name, revision=hp.revision, dtype=self.base_dtype)

    def configure_model(self) -> None:
        """Load the base model and attach the adapter (idempotent; Lightning calls it per rank)."""
        if self.model is not None:
            return
        hp = self.hparams
        base = self._load_base()
        for p in base.parameters():
            p.requires_grad_(False)
        if hp.gradient_checkpointing:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
            if hasattr(base.config, "text_config"):
                base.config.text_config.use_cache = False
        if hp.adapter is not None:
            from peft import PeftModel
            model = PeftModel.from_pretrained(base, str(hp.adapter),
                                              is_trainable=hp.adapter_trainable)
        elif hp.lora:
            from peft import LoraConfig, get_peft_model
            config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha,
                                lora_dropout=hp.lora_dropout, target_modules=hp.target_modules,
                                bias="none")
            model = get_peft_model(base, config)
        else:
            model = base
        wants_training = hp.adapter_trainable if hp.adapter is not None else hp.lora
        if wants_training and not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"LoRA target_modules {hp.target_modules!r} matched no module of "
                             f"{self.model_name}")
        self.model = model

    def trainable_parameter_names(self) -> set[str]:
        """State-dict names (wrappers removed) of the trainable parameters."""
        return {_clean_name(n) for n, p in self.named_parameters() if p.requires_grad}

    # ---------------------------------------------------------------------------------- training

    def forward(self, batch: dict[str, Any]) -> Any:
        self.configure_model()
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"].to(self.base_dtype),
                          labels=batch.get("labels"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def on_fit_start(self) -> None:
        # from_pretrained returns eval-mode modules and Lightning keeps modes as it finds them;
        # HF activation checkpointing only runs in train mode (the frozen LLaVA-1.5 base has no
        # active dropout, so this changes nothing else).
        self.model.train()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters (no LoRA adapter attached)")
        return torch.optim.AdamW(params, lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)

    # -------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_texts(self, batch: dict[str, Any], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers for a left-padded batch (``input_ids``, ``attention_mask``,
        ``pixel_values``), decoded without special tokens and stripped."""
        self.configure_model()
        input_ids = batch["input_ids"]
        tok = self.processor.tokenizer
        out = self.model.generate(
            input_ids=input_ids, attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"].to(self.base_dtype),
            max_new_tokens=max_new_tokens or self.hparams.max_new_tokens, do_sample=False,
            num_beams=1, pad_token_id=tok.pad_token_id, suppress_tokens=[self.image_token_id])
        texts = tok.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        return [t.strip() for t in texts]

    def predict_step(self, batch: dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """``[{sticker_id, description, image_ok}]`` for every item of a generation batch (items
        whose image could not be loaded get an empty description and ``image_ok=False``)."""
        rows = []
        if batch.get("input_ids") is not None:
            texts = self.generate_texts(batch)
            rows += [{"sticker_id": s, "description": t, "image_ok": True}
                     for s, t in zip(batch["sticker_ids"], texts)]
        rows += [{"sticker_id": s, "description": "", "image_ok": False}
                 for s in batch.get("skipped_ids", [])]
        return rows

    # ------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable (adapter) weights: a 7B base is not copied into every .ckpt."""
        keep = self.trainable_parameter_names()
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {k: v for k, v in state.items() if _clean_name(k) in keep}
        checkpoint["persrv_vlm"] = {"model": self.model_name, "adapter_keys": len(keep)}

    def adapter_state_dict(self, checkpoint_path: str | Path | None = None) -> dict[str, Any]:
        """The adapter weights as peft names (``base_model.model....lora_A.default.weight``): from
        a Lightning checkpoint when given (it is full even under FSDP), else from the module."""
        if checkpoint_path is not None:
            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            state = ckpt["state_dict"]
        else:
            keep = self.trainable_parameter_names()
            state = {k: v for k, v in self.state_dict().items() if _clean_name(k) in keep}
        return {_clean_name(k)[len("model."):]: v.detach().cpu()
                for k, v in state.items() if _clean_name(k).startswith("model.")}

    def export_adapter(self, out_dir: str | Path, checkpoint_path: str | Path | None = None,
                       extra_meta: dict[str, Any] | None = None) -> Path:
        """Write the peft adapter (+ processor + ``persrv_vlm.json``) to ``out_dir``."""
        from peft import PeftModel
        if not isinstance(self.model, PeftModel):
            raise ValueError("this module has no adapter to export")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = self.adapter_state_dict(checkpoint_path)
        self.model.save_pretrained(str(out), state_dict=state)
        self.processor.save_pretrained(str(out))
        meta = {"model": self.model_name, "tiny": bool(self.hparams.tiny),
                "revision": self.hparams.revision, "seed": self.hparams.seed,
                "question": self.question, "dtype": self.hparams.dtype,
                "lora": {"r": self.hparams.lora_r, "alpha": self.hparams.lora_alpha,
                         "dropout": self.hparams.lora_dropout,
                         "target_modules": self.hparams.target_modules}}
        meta.update(extra_meta or {})
        (out / ADAPTER_META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n",
                                             encoding="utf-8")
        return out
