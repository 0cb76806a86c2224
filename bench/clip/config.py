"""The ``train-clip`` config (``experiments/clip_*.yaml``): mode, image tower, text model,
open_clip model, trainer, split. Importing it loads pydantic only.

``split:`` / ``protocol:`` are the benchmark's own sections, or ``benchmark_config:`` names an
experiment YAML whose split and protocol (and dataset, when ``dataset`` is unset) are used — the
same rule as the VLM config (:func:`bench.vlm.config.apply_benchmark_config`), so a checkpoint
never learns from clicks the experiment's sweeps or final test score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.config import ProtocolSpec, SplitSpec
from bench.errors import ConfigError, validate_mapping

MODES = ("locked-text", "finetune")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageSection(_Strict):
    """The trainable image tower of ``locked-text`` mode (random init, no download)."""
    arch: Literal["resnet18", "small-cnn"] = "resnet18"
    size: int = Field(64, ge=16, le=512)       #: input side in pixels
    width: int = Field(32, ge=4, le=512)       #: small-cnn: channels of the first block


class TextSection(_Strict):
    """The frozen sentence-transformers text tower of ``locked-text`` mode."""
    model: str = "default"  #: "default" = the packaged all-MiniLM-L6-v2 (offline), a path or name


class OpenClipSection(_Strict):
    """The CLIP model of ``finetune`` mode: an open_clip config name with ``pretrained`` (a tag
    or a local weight file; None = random init), or ``config``: the keyword arguments of
    ``open_clip.CLIP`` (a custom, e.g. tiny, architecture)."""
    model: str = "ViT-B-32"
    pretrained: str | None = None
    config: dict[str, Any] | None = None
    lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["c_fc", "c_proj"])


class TrainerSection(_Strict):
    max_epochs: int = Field(20, ge=1)
    max_steps: int = Field(-1, ge=-1)
    max_minutes: float | None = Field(None, gt=0)  #: wall-clock cap (Trainer ``max_time``)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    #: learning rate over training: ``constant``, or ``one-cycle`` (warm up over the first 10 %
    #: of ``max_epochs``' steps to ``lr``, then cosine down; Smith & Topin 2019)
    schedule: Literal["constant", "one-cycle"] = "constant"
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.07, gt=0, le=1)  #: initial; learned (capped at 1/100)
    augment: bool = True                          #: random flips and shifts of training images
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    early_stopping_patience: int | None = Field(3, ge=1)
    log_every_n_steps: int = Field(10, ge=1)


class ClipConfig(_Strict):
    mode: Literal["locked-text", "finetune"] = "locked-text"
    dataset: str | None = None
    benchmark_config: str | None = None
    split: SplitSpec = Field(default_factory=SplitSpec)
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    image: ImageSection = Field(default_factory=ImageSection)
    text: TextSection = Field(default_factory=TextSection)
    open_clip: OpenClipSection = Field(default_factory=OpenClipSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    tracking_uri: str | None = None
    experiment: str = "persrv-clip"
    output_dir: str = "outputs/clip"
    seed: int = 0


def validate_clip_config(raw: Any, source: str = "config") -> ClipConfig:
    """Validate a mapping; the one-line error names every offending key."""
    return validate_mapping(ClipConfig, raw, source)


def load_clip_config(path: str | Path, overrides: list[str] | None = None,
                     dataset: str | Path | None = None,
                     benchmark_config: str | Path | None = None) -> ClipConfig:
    """Read a ``train-clip`` YAML, apply ``key=value`` overrides, ``dataset`` and
    ``benchmark_config``; relative paths as in :func:`bench.vlm.config.load_vlm_config`."""
    from bench.vlm.config import load_training_config
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    return load_training_config(p, validate_clip_config, overrides, dataset, benchmark_config)
