"""An exported ``train-clip`` checkpoint: a directory (also the MLflow artifact ``clip``)::

    persrv_clip.json       mode, module settings, text model id, dataset name + fingerprint,
                           split, counts, MLflow run id
    weights.safetensors    image tower (locked-text) or the whole open_clip model (finetune,
                           LoRA merged), plus logit_scale
    train_clicks.parquet   user_id, query, sticker_id, ts: every click the checkpoint may have
                           learned from (fitting + early stopping)

:class:`ClipCheckpoint` loads one (from a path or an MLflow run id), names it by a digest of its
files (the feature-cache key) and refuses, in one line, a run whose fitting data does not
contain every click it learned from (:meth:`ClipCheckpoint.check_fitting`): trained on another
dataset, split or protocol, it may have seen the clicks this run evaluates on.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.errors import BenchError, ConfigError

META_FILE = "persrv_clip.json"
WEIGHTS_FILE = "weights.safetensors"
CLICKS_FILE = "train_clicks.parquet"
ARTIFACT = "clip"
FORMAT = 1
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def export_checkpoint(out_dir: str | Path, state: dict[str, Any], meta: dict[str, Any],
                      train_clicks: pd.DataFrame) -> Path:
    """Write a checkpoint directory (see the module docstring); returns it."""
    from safetensors.torch import save_file
    from bench.clip.data import CLICK_COLUMNS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE))
    train_clicks[CLICK_COLUMNS].to_parquet(out / CLICKS_FILE, index=False)
    (out / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=2, default=str)
                                 + "\n", encoding="utf-8")
    return out


def _find(root: Path) -> Path | None:
    if (root / META_FILE).is_file():
        return root
    found = sorted(root.rglob(META_FILE))
    return found[0].parent if found else None


def resolve_checkpoint(ref: str | Path, tracking_uri: str | None = None) -> Path:
    """A local checkpoint directory for a path (the ``train-clip`` output folder or its ``clip``
    subfolder) or an MLflow run id of ``train-clip`` (its ``clip`` artifact is downloaded)."""
    text = str(ref)
    p = Path(text).expanduser()
    if p.exists():
        local = _find(p) if p.is_dir() else None
        if local is None:
            raise ConfigError(f"clip checkpoint {text!r}: no {META_FILE} there (expected the "
                              "folder written by `persrv-bench train-clip`)")
        return local
    if not _RUN_ID.match(text):
        raise ConfigError(f"clip checkpoint {text!r} is neither an existing directory nor an "
                          "MLflow run id (32 hex characters)")
    import mlflow.artifacts
    from bench.tracking import mask_credentials, resolve_tracking_uri
    uri = resolve_tracking_uri(tracking_uri)
    try:
        downloaded = mlflow.artifacts.download_artifacts(run_id=text, artifact_path=ARTIFACT,
                                                         tracking_uri=uri)
    except Exception as exc:
        raise BenchError(f"clip checkpoint {text!r}: could not download it from MLflow at "
                         f"{mask_credentials(uri)} ({type(exc).__name__}: {str(exc)[:160]})") \
            from None
    local = _find(Path(downloaded))
    if local is None:
        raise BenchError(f"clip checkpoint {text!r}: the run's {ARTIFACT!r} artifact has no "
                         f"{META_FILE}")
    return local


class ClipCheckpoint:
    """A loaded checkpoint: ``encode_images``/``encode_texts`` in its shared space."""

    def __init__(self, directory: str | Path, device: str | None = None, batch_size: int = 64):
        self.dir = Path(directory)
        try:
            self.meta = json.loads((self.dir / META_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.dir / META_FILE}: unreadable ({exc})") from None
        for f in (WEIGHTS_FILE, CLICKS_FILE):
            if not (self.dir / f).is_file():
                raise ConfigError(f"clip checkpoint {self.dir}: {f} is missing")
        if self.meta.get("format") != FORMAT or self.meta.get("mode") not in ("locked-text",
                                                                               "finetune"):
            raise ConfigError(f"{self.dir / META_FILE}: field 'format'/'mode': not a train-clip "
                              f"checkpoint of format {FORMAT}")
        self.device, self.batch_size = device or "cpu", int(batch_size)
        self._module: Any = None
        self._text: Any = None
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """sha256 of the weights, the recorded clicks and the module settings."""
        if self._digest is None:
            h = hashlib.sha256()
            for f in (WEIGHTS_FILE, CLICKS_FILE):
                with open(self.dir / f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
            h.update(json.dumps(self.meta.get("module", {}), sort_keys=True).encode())
            self._digest = h.hexdigest()
        return self._digest

    @property
    def model_id(self) -> str:
        return f"clip-checkpoint:{self.meta['mode']}:{self.digest[:20]}"

    # --------------------------------------------------------------------------- leak check
    def check_fitting(self, clicks: pd.DataFrame | None, dataset_fingerprint: str | None) -> None:
        """Refuse (one line) a run on another dataset, or one whose fitting ``clicks`` lack some
        click this checkpoint learned from (another split or protocol)."""
        trained_fp = self.meta.get("dataset_fingerprint")
        if dataset_fingerprint and trained_fp and trained_fp != dataset_fingerprint:
            raise ConfigError(f"clip checkpoint {self.dir}: trained on dataset "
                              f"{self.meta.get('dataset')!r} (fingerprint {trained_fp}), this run"
                              f" is on fingerprint {dataset_fingerprint}; train one on this "
                              "dataset with `persrv-bench train-clip`")
        from bench.clip.data import CLICK_COLUMNS
        learned = pd.read_parquet(self.dir / CLICKS_FILE, columns=CLICK_COLUMNS)
        if learned.empty:
            return
        have = pd.DataFrame(columns=CLICK_COLUMNS) if clicks is None else clicks[CLICK_COLUMNS]
        key = lambda f: pd.MultiIndex.from_frame(f.astype({"user_id": str, "query": str,  # noqa
                                                           "sticker_id": str, "ts": "int64"}))
        outside = int((~key(learned).isin(key(have))).sum())
        if outside:
            raise ConfigError(
                f"clip checkpoint {self.dir}: {outside} of the {len(learned)} clicks it learned "
                f"from are not in this run's fitting clicks (trained with split "
                f"{self.meta.get('split')}); it may have seen evaluation clicks — train it on "
                "this experiment's split: persrv-bench train-clip CONFIG --benchmark-config "
                "EXPERIMENT.yaml")

    # ------------------------------------------------------------------------------ encoders
    def module(self) -> Any:
        if self._module is None:
            import torch
            from safetensors.torch import load_file
            from bench.clip.module import ClipDualModule
            settings = dict(self.meta.get("module", {}))
            settings["lora"] = False  # LoRA weights are merged at export
            module = ClipDualModule(**settings)
            state = load_file(str(self.dir / WEIGHTS_FILE))
            own = module.state_dict()
            missing = sorted(set(own) - set(state))
            if missing:
                raise ConfigError(f"{self.dir / WEIGHTS_FILE}: weights missing for "
                                  f"{missing[:3]} ({len(missing)} tensors)")
            with torch.no_grad():
                module.load_state_dict({k: state[k] for k in own}, strict=True)
            self._module = module.to(self.device).eval()
        return self._module

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def encode_images(self, images: list) -> np.ndarray:
        import torch
        from bench.clip.towers import image_tensor
        module = self.module()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = torch.stack([image_tensor(im.convert("RGB"), module.image_size)
                                     for im in images[i:i + self.batch_size]])
                outs.append(module.encode_images(batch.to(self.device)).cpu().numpy())
        return np.concatenate(outs).astype(np.float32) if outs else \
            np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        texts = [str(t) for t in texts]
        if self.meta["mode"] == "locked-text":
            from bench.clip.data import encode_queries, text_model
            if self._text is None:
                st, model_id = text_model(self.meta["text"]["model"])
                if model_id != self.meta["text"]["model_id"]:
                    raise ConfigError(f"clip checkpoint {self.dir}: trained against text model "
                                      f"{self.meta['text']['model_id']}, but "
                                      f"{self.meta['text']['model']!r} is now {model_id}")
                self._text = st
            return encode_queries(self._text, texts)
        module = self.module()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                ids = module.tokenizer(texts[i:i + self.batch_size]).to(self.device)
                outs.append(module.encode_text(ids).cpu().numpy())
        return np.concatenate(outs).astype(np.float32) if outs else \
            np.zeros((0, self.dim), np.float32)
