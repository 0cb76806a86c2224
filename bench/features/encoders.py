"""Image encoders for personalization (DESIGN §7) and dense retrieval, and cached embedding.

One interface, :class:`ImageEncoder`: ``name``, ``dim``, ``model_id`` (goes into the cache key) and
``encode(images) -> float32 (n, dim)``, rows L2-normalised. :func:`make_encoder` builds one by name:

- ``open-clip``: any open_clip model (``pretrained``: a tag, a checkpoint path, or None = random
  init, which works offline); also ``encode_texts`` for the dense-clip retriever.
- ``chinese-clip``: transformers' ChineseCLIPModel from a hub id or a local directory; also
  ``encode_texts``.
- ``style-stats``: no weights — colour, shading, outline, alpha and texture statistics that
  separate art styles (k-means ARI on emoji-styles: see ``benchmarks/style_stats_ari.py``).
- ``precomputed``: the dataset's ``embedding`` column.

:func:`embed_stickers` runs an encoder over a stickers frame through the feature cache (only
stickers no cached part holds are encoded), images loaded in ``workers`` threads; stickers whose
image cannot be loaded get a zero vector and are counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
from PIL import Image

from bench.errors import BenchError, ConfigError
from bench.features.images import count_reasons, load_image_checked, load_rgba_checked
from bench.features.style_stats import StyleStatsEncoder, l2_normalise

log = logging.getLogger(__name__)

EMBED_EXTRACTOR = "embeddings"


class EncoderUnavailable(BenchError):
    """An encoder's model or weights could not be loaded."""


@runtime_checkable
class ImageEncoder(Protocol):
    """Images in, L2-normalised float32 vectors out."""

    name: str

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def encode(self, images: list[Image.Image]) -> np.ndarray: ...


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


# ------------------------------------------------------------------------------------ precomputed

class PrecomputedEncoder:
    """Vectors from a stickers column (default ``embedding``: a list of floats per sticker).

    Needs no images (``needs_images = False``); use :meth:`encode_frame`. Rows that are null or
    of another length than the first valid row become zero vectors and are counted as missing.
    """

    name = "precomputed"
    needs_images = False

    def __init__(self, column: str = "embedding", normalize: bool = True):
        self.column, self.normalize = column, normalize
        self._dim: int | None = None

    @property
    def model_id(self) -> str:
        return f"precomputed:{self.column}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError("precomputed encoder: dim is known after encode_frame()")
        return self._dim

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        raise TypeError("the precomputed encoder reads the stickers' embedding column; "
                        "use encode_frame(stickers)")

    def encode_frame(self, stickers: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """``(vectors (n, dim) float32, reasons)``; reasons: "", no_embedding or bad_length."""
        if self.column not in stickers.columns:
            raise ConfigError(f"encoder 'precomputed': the stickers have no {self.column!r} "
                              f"column (columns: {', '.join(map(str, stickers.columns))})")
        values = stickers[self.column].tolist()
        arrs: list[np.ndarray | None] = []
        for v in values:
            if v is None or (isinstance(v, float) and np.isnan(v)):
                arrs.append(None)
            else:
                a = np.asarray(v, dtype=np.float32).ravel()
                arrs.append(a if a.size and np.isfinite(a).all() else None)
        dims = [a.size for a in arrs if a is not None]
        self._dim = int(pd.Series(dims).mode().iloc[0]) if dims else 0
        out = np.zeros((len(values), self._dim), np.float32)
        reasons = []
        for i, a in enumerate(arrs):
            if a is None:
                reasons.append("no_embedding")
            elif a.size != self._dim:
                reasons.append("bad_length")
            else:
                out[i] = a
                reasons.append("")
        return (l2_normalise(out) if self.normalize else out), reasons


# ---------------------------------------------------------------------------------------- factory

ENCODERS: dict[str, Callable[..., Any]] = {
    "open-clip": OpenClipEncoder,
    "chinese-clip": ChineseClipEncoder,
    "style-stats": StyleStatsEncoder,
    "precomputed": PrecomputedEncoder,
}


def make_encoder(name: str, **params: Any):
    """Build the encoder registered as ``name`` (see :data:`ENCODERS`) with its parameters."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    try:
        return ENCODERS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: bad parameters {params} ({exc})") from None


# ----------------------------------------------------------------------------------- embedding

def _image_paths(stickers: pd.DataFrame, root: str | os.PathLike | None) -> list[str | None]:
    from bench.features.ocr import image_paths
    return image_paths(stickers, Path(root) if root is not None else None)


def _encode_paths(encoder: Any, paths: Sequence[str | None], workers: int
                  ) -> tuple[np.ndarray, list[str]]:
    """Load and encode images; unloadable ones get zero rows and a reason."""
    raw = hasattr(encoder, "raw_features")
    loader = load_rgba_checked if getattr(encoder, "needs_alpha", False) else load_image_checked

    def work(sub: Sequence[str | None]):
        loaded = [loader(p) for p in sub]
        ok = [i for i, (im, _) in enumerate(loaded) if im is not None]
        reasons = [r or "" for _, r in loaded]
        images = [loaded[i][0] for i in ok]
        if raw and ok:  # numpy on whole arrays releases the GIL: parallel in threads
            return encoder.raw_features(images), reasons, ok, []
        return None, reasons, ok, images

    workers = max(1, int(workers))
    size = max(1, -(-len(paths) // workers))
    subs = [paths[i:i + size] for i in range(0, len(paths), size)]
    if workers == 1 or len(subs) == 1:
        results = [work(s) for s in subs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(work, subs))
    reasons = [r for _, rs, _, _ in results for r in rs]
    if raw:
        vecs = np.zeros((len(paths), encoder.raw_dim), np.float32)
        offset = 0
        for (feats, _, ok, _), sub in zip(results, subs):
            if feats is not None:
                vecs[[offset + i for i in ok]] = feats
            offset += len(sub)
        return vecs, reasons
    # model encoders: images loaded in threads above, encoded here in batches
    images, rows = [], []
    offset = 0
    for (_, _, ok, imgs), sub in zip(results, subs):
        images += imgs
        rows += [offset + i for i in ok]
        offset += len(sub)
    vecs = np.zeros((len(paths), encoder.dim), np.float32)
    if images:
        vecs[rows] = encoder.encode(images)
    return vecs, reasons


def embed_stickers(stickers: pd.DataFrame, root: str | os.PathLike | None, encoder: Any,
                   cache: Any = None, dataset_fingerprint: str | None = None, workers: int = 2,
                   *, progress: bool = True, chunk_size: int | None = None,
                   details: dict[str, Any] | None = None) -> tuple[np.ndarray, int]:
    """Vectors for every sticker row, ``(float32 (n, dim) aligned with stickers, missing count)``.

    Through ``cache`` (a :class:`FeatureCache`; None: no cache) under the key (dataset
    fingerprint, "embeddings", encoder name, encoder ``model_id``); vectors are stored as a
    ``list<float32>`` column, and only stickers no cached part holds are encoded. Encoders with
    ``raw_features``/``finalize`` (style-stats) cache raw statistics and standardise over the
    whole dataset here. Unloadable images: zero vector, counted (by reason in
    ``details["missing_by_reason"]`` when a ``details`` dict is passed; also ``computed`` and
    ``seconds``).
    """
    t0 = time.perf_counter()
    ids = stickers["sticker_id"].astype(str).tolist()
    if not getattr(encoder, "needs_images", True):
        vecs, reasons = encoder.encode_frame(stickers)
        computed = len(ids)
    else:
        paths = dict(zip(ids, _image_paths(stickers, root)))
        computed = 0

        def fn(chunk: list[str]) -> pd.DataFrame:
            nonlocal computed
            v, r = _encode_paths(encoder, [paths[s] for s in chunk], workers)
            computed += len(chunk)
            return pd.DataFrame({"sticker_id": chunk, "vector": list(v.astype(np.float32)),
                                 "missing": r})

        if cache is None:
            step = chunk_size or 512
            parts = [fn(ids[i:i + step]) for i in range(0, len(ids), step)]
            frame = pd.concat(parts, ignore_index=True) if parts else None
        else:
            if dataset_fingerprint is None:
                from bench.features.ocr import stickers_fingerprint
                dataset_fingerprint = stickers_fingerprint(
                    stickers, Path(root) if root is not None else None)
            params = {"encoder": encoder.name, "raw": hasattr(encoder, "raw_features")}
            key = cache.key(dataset_fingerprint=dataset_fingerprint, extractor=EMBED_EXTRACTOR,
                            params=params, model=encoder.model_id)
            frame = cache.compute(
                key, ids, fn, chunk_size=chunk_size or (1024 if params["raw"] else 256),
                progress=f"embed ({encoder.name})" if progress else None,
                meta={"dataset_fingerprint": dataset_fingerprint, "extractor": EMBED_EXTRACTOR,
                      "params": params, "model": encoder.model_id})
        dim = encoder.raw_dim if hasattr(encoder, "raw_features") else encoder.dim
        if frame is None or not len(frame):
            vecs, reasons = np.zeros((0, dim), np.float32), []
        else:
            vecs = np.stack([np.asarray(v, dtype=np.float32) for v in frame["vector"]]) \
                .reshape(len(frame), dim)
            reasons = frame["missing"].fillna("").astype(str).tolist()
        if hasattr(encoder, "finalize"):
            ok = np.array([not r for r in reasons], dtype=bool)
            out = np.zeros((len(vecs), encoder.dim), np.float32)
            if ok.any():
                out[ok] = encoder.finalize(vecs[ok])
            vecs = out
    missing = count_reasons(reasons)
    n_missing = sum(missing.values())
    if n_missing:
        log.warning("embeddings (%s): %d of %d stickers have no usable %s (%s); they get a zero "
                    "vector", encoder.name, n_missing, len(ids),
                    "image" if getattr(encoder, "needs_images", True) else "embedding",
                    ", ".join(f"{k}={v}" for k, v in missing.items()))
    if details is not None:
        details.update(missing_by_reason=missing, computed=computed,
                       seconds=time.perf_counter() - t0)
    return np.ascontiguousarray(vecs, dtype=np.float32), n_missing
