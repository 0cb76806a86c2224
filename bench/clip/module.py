"""The dual encoder as a LightningModule: symmetric InfoNCE with in-batch negatives and a
learnable temperature (CLIP, Radford et al. 2021), in two modes:

- ``locked-text`` (LiT, Zhai et al. 2022): the text tower is a frozen sentence-transformers model
  whose query embeddings come precomputed in the batch (``text``: float ``(B, D)``); only the image
  tower (:func:`bench.clip.towers.build_image_tower`, random init) and the temperature learn.
- ``finetune``: an open_clip model (``text``: token ids ``(B, context)``), trained in full or
  through a peft LoRA adapter on its MLP linears.

Batches: ``images`` uint8 ``(B, 3, S, S)``, ``text``, and integer ``sticker``/``query`` ids. Pairs
in a batch sharing a sticker or a query are positives of each other (soft targets), so a popular
query is never pushed away from its own second sticker.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from bench.clip.towers import (IMAGENET, OPENAI_CLIP, augment, build_image_tower,
                               build_open_clip, normalise)

#: The learned logit scale is capped here (CLIP's 100, i.e. temperature >= 0.01).
MAX_LOGIT_SCALE = math.log(100.0)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                     sticker: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised ``img``/``txt`` rows; rows sharing a sticker or a
    query are positives of each other (targets spread evenly over them)."""
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * img @ txt.T
    pos = (sticker[:, None] == sticker[None, :]) | (query[:, None] == query[None, :])
    target = pos.float() / pos.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class ClipDualModule(L.LightningModule):
    """Dual encoder for sticker images and queries (see the module docstring).

    Args:
        mode: ``locked-text`` or ``finetune``.
        text_dim: locked-text: the frozen text embedding size (the image tower's output).
        image_arch, image_size, image_width: locked-text image tower (``resnet18``/``small-cnn``).
        open_clip_model, open_clip_pretrained, open_clip_config: finetune model (see
            :func:`bench.clip.towers.build_open_clip`).
        lora, lora_r, lora_alpha, lora_dropout, target_modules: finetune via a peft LoRA adapter.
        lr, weight_decay: AdamW; schedule: ``constant`` or ``one-cycle`` (over the trainer's
            estimated steps); temperature: initial temperature; augment: image augmentation.
    """

    def __init__(self, mode: str = "locked-text", *, text_dim: int = 384,
                 image_arch: str = "resnet18", image_size: int = 64, image_width: int = 32,
                 open_clip_model: str = "ViT-B-32", open_clip_pretrained: str | None = None,
                 open_clip_config: dict | None = None, lora: bool = False, lora_r: int = 8,
                 lora_alpha: float = 16, lora_dropout: float = 0.0,
                 target_modules: list[str] | None = None, lr: float = 1e-3,
                 schedule: str = "constant", weight_decay: float = 1e-4,
                 temperature: float = 0.07, augment: bool = True):
        super().__init__()
        if mode not in ("locked-text", "finetune"):
            raise ValueError(f"mode must be locked-text or finetune, got {mode!r}")
        self.save_hyperparameters(logger=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.tokenizer = None
        if mode == "locked-text":
            self.image_tower = build_image_tower(image_arch, text_dim, image_width)
            self.mean_std = IMAGENET
            self.image_size = image_size
        else:
            from bench.clip.towers import open_clip_image_size
            net, self.tokenizer = build_open_clip(open_clip_model, open_clip_pretrained,
                                                  open_clip_config)
            self.image_size = open_clip_image_size(net)
            self.mean_std = OPENAI_CLIP
            if lora:
                from peft import LoraConfig, get_peft_model
                net = get_peft_model(net, LoraConfig(
                    r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                    target_modules=list(target_modules or ["c_fc", "c_proj"]), bias="none"))
                if not any(p.requires_grad for p in net.parameters()):
                    raise ValueError(f"LoRA target_modules {target_modules} matched no module")
            self.clip = net
        self._gen = torch.Generator().manual_seed(0)

    # ----------------------------------------------------------------------------- encoders
    @property
    def clip_net(self) -> Any:
        """The open_clip model (under a peft wrapper when LoRA is on)."""
        return self.clip.get_base_model() if self.hparams.lora else self.clip

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` -> L2-normalised ``(B, D)``."""
        x = normalise(images, self.mean_std)
        out = self.image_tower(x) if self.hparams.mode == "locked-text" \
            else self.clip_net.encode_image(x)
        return F.normalize(out.float(), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Precomputed embeddings (locked-text) or token ids (finetune) -> L2-normalised."""
        out = text if self.hparams.mode == "locked-text" else self.clip_net.encode_text(text)
        return F.normalize(out.float(), dim=-1)

    # ----------------------------------------------------------------------------- training
    def _loss(self, batch: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        images = batch["images"]
        if train and self.hparams.augment:
            images = augment(images.cpu(), self._gen).to(images.device)
        return contrastive_loss(self.encode_images(images), self.encode_text(batch["text"]),
                                self.logit_scale, batch["sticker"], batch["query"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, train=True)
        n = batch["images"].shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("temperature", 1.0 / self.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp(),
                 on_step=True, on_epoch=False, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, train=False)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["images"].shape[0])
        return loss

    def on_train_start(self) -> None:
        self._gen.manual_seed(int(torch.initial_seed()) % (2 ** 63))

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        if self.hparams.get("schedule", "constant") == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr,
                                                    total_steps=total, pct_start=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------- export
    def export_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint needs: the image tower (locked-text) or the whole open_clip
        model with any LoRA adapter merged (finetune), plus ``logit_scale``."""
        if self.hparams.mode == "locked-text":
            state = {f"image_tower.{k}": v for k, v in self.image_tower.state_dict().items()}
        else:
            net = self.clip.merge_and_unload() if self.hparams.lora else self.clip
            state = {f"clip.{k}": v for k, v in net.state_dict().items()}
        state["logit_scale"] = self.logit_scale.detach()
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}
