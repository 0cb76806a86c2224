"""The VLM config (``experiments/vlm_*.yaml``): model, LoRA, trainer, describe and split sections.

Shared by ``train-vlm``, ``describe`` and ``vlm-bench``; importing it loads pydantic only.

``split:`` / ``protocol:`` are the benchmark's own sections (:class:`bench.config.SplitSpec`,
:class:`bench.config.ProtocolSpec`: the same keys as in an experiment), or ``benchmark_config:``
names an experiment YAML whose ``split:`` and ``protocol:`` (and dataset, when ``dataset`` is not
set) the VLM uses, so the adapter never learns from clicks
that the experiment's sweeps (validation) or final test score (see :mod:`bench.vlm.data`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.config import ProtocolSpec, SplitSpec
from bench.errors import ConfigError, validate_mapping
from bench.vlm.defaults import DEFAULT_MODEL, DEFAULT_QUESTION, DEFAULT_TARGET_MODULES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    """Which LLaVA-1.5: a hub id / local dir, or ``tiny: true`` for the random CPU test model."""
    name_or_path: str = DEFAULT_MODEL
    tiny: bool = False
    revision: str | None = None
    question: str = DEFAULT_QUESTION
    max_answer_tokens: int = Field(32, ge=1)
    seed: int = 0  # the tiny model's weight seed


class LoraSection(_Strict):
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = DEFAULT_TARGET_MODULES


class TrainerSection(_Strict):
    max_epochs: int = Field(1, ge=1)
    max_steps: int = Field(-1, ge=-1)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    accumulate: int = Field(1, ge=1)
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    gradient_checkpointing: bool = False
    val_check_interval: int | float | None = None
    limit_val_batches: int | float | None = None
    early_stopping_patience: int | None = Field(3, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)


class DescribeSection(_Strict):
    """Settings of ``persrv-bench describe`` (description generation)."""
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(32, ge=1)
    devices: int | str | list[int] = 1
    accelerator: str = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    chunk_size: int = Field(256, ge=1)
    cache_dir: str | None = None
    adapter: str | None = None  # default adapter: path, MLflow run id, runs:/ or models:/ URI


class VlmConfig(_Strict):
    dataset: str | None = None
    benchmark_config: str | None = None  # an experiment YAML: its split (and dataset) are used
    split: SplitSpec = Field(default_factory=SplitSpec)
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    describe: DescribeSection = Field(default_factory=DescribeSection)
    tracking_uri: str | None = None
    experiment: str = "persrv-vlm"
    registered_model: str | None = "persrv-vlm-lora"
    output_dir: str = "outputs/vlm"
    seed: int = 0


def validate_vlm_config(raw: Any, source: str = "config") -> VlmConfig:
    """Validate a mapping; the one-line error names every offending key."""
    return validate_mapping(VlmConfig, raw, source)


def apply_benchmark_config(cfg: VlmConfig, path: str | Path, source: str = "config") -> VlmConfig:
    """Take the split and protocol (and, if ``cfg.dataset`` is unset, the dataset) of experiment
    YAML ``path``.

    The dataset is resolved the way ``persrv-bench run`` resolves it (a path, or a builder run
    on the fly / reused). A VLM config that sets ``split:`` too is refused (two sources of truth).
    """
    from bench.config import load_config
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{source}: benchmark_config {str(p)!r} is not a file")
    if {"split", "protocol"} & cfg.model_fields_set:
        raise ConfigError(f"{source}: set either `split:`/`protocol:` or `benchmark_config:` "
                          "(whose split and protocol are used), not both")
    exp = load_config(p)
    cfg.split = SplitSpec.model_validate(exp.split.model_dump())
    cfg.protocol = ProtocolSpec.model_validate(exp.protocol.model_dump())
    cfg.benchmark_config = str(p.resolve())
    if not cfg.dataset:
        from bench.data.resolve import resolve_dataset
        ds = resolve_dataset(exp.dataset)
        cfg.dataset = str(ds.root)
    return cfg


def load_vlm_config(path: str | Path, overrides: list[str] | None = None,
                    dataset: str | Path | None = None,
                    benchmark_config: str | Path | None = None) -> VlmConfig:
    """Read a VLM YAML config, apply ``key=value`` overrides, ``dataset`` and
    ``benchmark_config`` (an experiment YAML whose split is used), validate.

    Relative ``dataset`` / ``benchmark_config`` paths in the file are tried against the working
    directory, then the config's folder and its parent; ``output_dir`` stays relative to the
    working directory.
    """
    return load_training_config(path, validate_vlm_config, overrides, dataset, benchmark_config)


def load_training_config(path: str | Path, validate, overrides: list[str] | None = None,
                         dataset: str | Path | None = None,
                         benchmark_config: str | Path | None = None):
    """The shared reader of training configs (``train-vlm``, ``train-clip``): YAML +
    overrides, ``dataset``, ``validate(raw, source=...)``, relative paths, and the benchmark
    config's split (:func:`load_vlm_config` documents the rules)."""
    from bench.config import read_yaml_config, resolve_data_path
    p = Path(path)
    raw = read_yaml_config(p, overrides)
    if isinstance(raw, dict) and dataset is not None:
        raw["dataset"] = str(dataset)
    cfg = validate(raw, source=str(p))
    cfg_dir = p.resolve().parent
    if cfg.dataset and dataset is None:
        cfg.dataset = str(resolve_data_path(cfg.dataset, cfg_dir))
    bench_path = benchmark_config if benchmark_config is not None else (
        resolve_data_path(cfg.benchmark_config, cfg_dir) if cfg.benchmark_config else None)
    if bench_path is not None:
        apply_benchmark_config(cfg, bench_path, source=str(p))
    return cfg


def config_hash(cfg: BaseModel) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
