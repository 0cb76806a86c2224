"""The CLIP image (and text) encoders: open_clip models and Chinese-CLIP (transformers).

Both load lazily (torch, open_clip and transformers are imported on first use), encode PIL images
to L2-normalised float32 ``(n, dim)`` rows, and offer ``encode_texts`` for the dense-clip
retriever. ``model_id`` (part of the feature-cache key) names the weights: a pretrained tag, a
checkpoint's path + size + mtime, a hub commit, or a hash of an in-memory model's weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from bench.errors import BenchError, ConfigError
from bench.features.style_stats import l2_normalise


class EncoderUnavailable(BenchError):
    """An encoder's model or weights could not be loaded."""


def _file_signature(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_tensor(out: Any):
    """Model outputs of transformers 4 (a tensor) and 5 (an output with ``pooler_output``)."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


# -------------------------------------------------------------------------------------- open_clip

class OpenClipEncoder:
    """open_clip image (and text) encoder.

    ``model``: a config name from ``open_clip.list_models()`` — or an already-built model (then
    ``preprocess`` is required, ``tokenizer`` optional and ``model_id`` recommended).
    ``pretrained``: a tag (``open_clip.list_pretrained_tags_by_model``), a local checkpoint path, or
    None for random weights (seeded with ``seed``; no network). Loads lazily on first use.
    """

    name = "open-clip"

    def __init__(self, model: Any = "ViT-B-32", pretrained: str | None = None,
                 device: str | None = None, batch_size: int = 64, *, preprocess: Any = None,
                 tokenizer: Any = None, seed: int = 0, cache_dir: str | None = None,
                 model_id: str | None = None):
        if not isinstance(model, str) and preprocess is None:
            raise ConfigError("open-clip: a model object needs its preprocess transform "
                              "(preprocess=...)")
        self.model_name = model if isinstance(model, str) else type(model).__name__
        self.pretrained, self.device, self.batch_size = pretrained, device, int(batch_size)
        self.seed, self.cache_dir = seed, cache_dir
        self._from_name, self._ready = isinstance(model, str), False
        self._model = None if isinstance(model, str) else model
        self._preprocess, self._tokenizer, self._model_id = preprocess, tokenizer, model_id

    def _load(self):
        if self._ready:
            return self._model
        if self._model is not None:  # a model object: use it where it is, or move it to device
            if self.device is None:
                self.device = str(next(self._model.parameters()).device)
            else:
                self._model.to(self.device)
            self._model.eval()
            self._ready = True
            return self._model
        import open_clip
        import torch
        self.device = _resolve_device(self.device)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=self.pretrained, device=self.device,
                    cache_dir=self.cache_dir)
        except Exception as exc:
            raise EncoderUnavailable(
                f"open-clip: could not create {self.model_name!r} with pretrained="
                f"{self.pretrained!r} ({type(exc).__name__}: {exc}). Offline, pass a local "
                "checkpoint file as pretrained=..., or pretrained=None for random weights; "
                "model names: open_clip.list_models()") from None
        model.eval()
        self._model, self._preprocess, self._ready = model, preprocess, True
        return model

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            if self._from_name:
                p = self.pretrained
                if p is None:
                    what = f"random-seed{self.seed}"
                elif os.path.exists(str(p)):
                    what = _file_signature(p)
                else:
                    what = str(p)
                self._model_id = f"open-clip:{self.model_name}:{what}"
            else:  # a model object without a model_id: fingerprint its weights
                h = hashlib.sha256()
                for k, v in sorted(self._load().state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().float().cpu().numpy().tobytes())
                self._model_id = f"open-clip:{self.model_name}:sha256-{h.hexdigest()[:16]}"
        return self._model_id

    @property
    def dim(self) -> int:
        model = self._load()
        out = getattr(getattr(model, "visual", None), "output_dim", None)
        if out is None:
            out = int(self.encode([Image.new("RGB", (32, 32))]).shape[1])
        return int(out)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        import torch
        model = self._load()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = torch.stack([self._preprocess(im.convert("RGB"))
                                     for im in images[i:i + self.batch_size]]).to(self.device)
                outs.append(model.encode_image(batch).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))

    def _get_tokenizer(self):
        if self._tokenizer is None:
            import open_clip
            ctx = getattr(self._load(), "context_length", 77)
            if self._from_name and self.model_name in open_clip.list_models():
                self._tokenizer = open_clip.get_tokenizer(self.model_name)
            else:
                self._tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        return self._tokenizer

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text vectors in the image space (for dense text-to-image retrieval), L2-normalised."""
        import torch
        model = self._load()
        tok = self._get_tokenizer()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                ids = tok(list(texts[i:i + self.batch_size])).to(self.device)
                outs.append(model.encode_text(ids).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))


# ----------------------------------------------------------------------------------- Chinese-CLIP

class ChineseClipEncoder:
    """Chinese-CLIP (transformers ``ChineseCLIPModel`` + ``ChineseCLIPProcessor``).

    ``model``: a hub id (default ``OFA-Sys/chinese-clip-vit-base-patch16``) or a local directory
    written by ``save_pretrained``. Loads lazily.
    """

    name = "chinese-clip"
    DEFAULT = "OFA-Sys/chinese-clip-vit-base-patch16"

    def __init__(self, model: str = DEFAULT, revision: str | None = None, device: str | None = None,
                 batch_size: int = 64, local_files_only: bool = False):
        self.model_name, self.revision = str(model), revision
        self.device, self.batch_size = device, int(batch_size)
        self.local_files_only = local_files_only
        self._model = self._processor = None
        self._model_id: str | None = None

    def _load(self):
        if self._model is None:
            from transformers import ChineseCLIPModel, ChineseCLIPProcessor
            self.device = _resolve_device(self.device)
            kw = dict(revision=self.revision, local_files_only=self.local_files_only)
            try:
                model = ChineseCLIPModel.from_pretrained(self.model_name, **kw)
                processor = ChineseCLIPProcessor.from_pretrained(self.model_name, **kw)
            except Exception as exc:
                raise EncoderUnavailable(
                    f"chinese-clip: could not load {self.model_name!r} ({type(exc).__name__}: "
                    f"{exc}). Download it once (huggingface-cli download {self.DEFAULT}) or pass "
                    "a local directory as model=...") from None
            self._model, self._processor = model.to(self.device).eval(), processor
        return self._model

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            p = Path(self.model_name)
            if p.is_dir():
                h = hashlib.sha256()
                for f in sorted(p.iterdir()):
                    if f.is_file():
                        h.update(_file_signature(f).encode())
                self._model_id = f"chinese-clip:{p.resolve()}:{h.hexdigest()[:16]}"
            else:
                commit = getattr(self._config(), "_commit_hash", None)
                rev = commit or self.revision or "main"
                self._model_id = f"chinese-clip:{self.model_name}@{rev}"
        return self._model_id

    def _config(self):
        if self._model is not None:
            return self._model.config
        from transformers import ChineseCLIPConfig
        try:
            return ChineseCLIPConfig.from_pretrained(self.model_name, revision=self.revision,
                                                     local_files_only=self.local_files_only)
        except Exception:
            return self._load().config  # raises EncoderUnavailable with the full explanation

    @property
    def dim(self) -> int:
        return int(self._config().projection_dim)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        import torch
        model = self._load()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = [im.convert("RGB") for im in images[i:i + self.batch_size]]
                px = self._processor(images=batch, return_tensors="pt")["pixel_values"]
                feats = _as_tensor(model.get_image_features(pixel_values=px.to(self.device)))
                outs.append(feats.float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        model = self._load()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._processor(text=list(texts[i:i + self.batch_size]), padding=True,
                                      truncation=True, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()
                       if k in ("input_ids", "attention_mask", "token_type_ids")}
                outs.append(_as_tensor(model.get_text_features(**enc)).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(np.concatenate(outs))


# --------------------------------------------------------------------------- train-clip checkpoint

class ClipCheckpointEncoder:
    """The image (and text) towers of a ``persrv-bench train-clip`` checkpoint.

    ``checkpoint``: the ``train-clip`` output folder (or its ``clip`` subfolder) or the MLflow run
    id of the training. ``model_id`` is a digest of the checkpoint's files, so its embeddings
    have their own feature-cache entry. Used by ``dense-clip`` and as PerSRV's style encoder
    (``features.encoder: clip-checkpoint``). :meth:`check_fitting` refuses a run whose fitting
    clicks do not hold every click the checkpoint learned from (see
    :class:`bench.clip.checkpoint.ClipCheckpoint`).
    """

    name = "clip-checkpoint"

    def __init__(self, checkpoint: str | None = None, device: str | None = None,
                 batch_size: int = 64, tracking_uri: str | None = None):
        if not checkpoint:
            raise ConfigError("encoder 'clip-checkpoint' needs encoder_params.checkpoint: a "
                              "train-clip output folder or its MLflow run id")
        self.checkpoint, self.device = str(checkpoint), device
        self.batch_size, self.tracking_uri = int(batch_size), tracking_uri
        self._ckpt: Any = None

    def _load(self):
        if self._ckpt is None:
            from bench.clip.checkpoint import ClipCheckpoint, resolve_checkpoint
            local = resolve_checkpoint(self.checkpoint, self.tracking_uri)
            self._ckpt = ClipCheckpoint(local, device=self.device, batch_size=self.batch_size)
        return self._ckpt

    @property
    def model_id(self) -> str:
        return self._load().model_id

    @property
    def dim(self) -> int:
        return self._load().dim

    def check_fitting(self, clicks: Any, dataset_fingerprint: str | None) -> None:
        self._load().check_fitting(clicks, dataset_fingerprint)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self._load().encode_images(images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._load().encode_texts(texts)
