"""Dense CLIP: text query -> sticker image, by cosine between text and image embeddings.

Three sources of the two towers:

- ``checkpoint``: a ``persrv-bench train-clip`` checkpoint (its folder or MLflow run id) — the
  locked-text (LiT) image tower trained into the offline MiniLM text space, or a fine-tuned
  open_clip model. It is refused, in one line, when this run's fitting clicks do not hold every
  click it learned from (another dataset, split or protocol).
- ``encoder: open-clip`` with ``pretrained`` (a tag where weights can be downloaded, or a local
  weight file); ``pretrained=None`` builds random weights (offline, but ranks at chance).
- ``encoder: chinese-clip`` (a hub id or a local directory as ``model``).

Image embeddings go through the feature cache, keyed by the encoder's ``model_id`` (for a
checkpoint: a digest of its files). Stickers without a loadable image are never returned.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from bench.params import Configurable, RetrieverParams, param
from bench.registry import register
from bench.retrieval import Request, Run, TrainView


@register("dense-clip")
class DenseClipRetriever(Configurable):
    """Query -> sticker image by cosine of CLIP-style towers (train-clip checkpoint or CLIP).

    See the module docstring for the three sources of the towers."""

    name = "dense-clip"

    class Params(RetrieverParams):
        checkpoint: str | None = param(
            None, description="train-clip checkpoint folder or MLflow run id (overrides encoder)")
        encoder: Literal["open-clip", "chinese-clip"] = param(
            "open-clip", description="CLIP family when no checkpoint is given")
        model: str | None = param(None, description="model name/path (None: the family default)")
        pretrained: str | None = param(
            None, description="open-clip weights: tag or local file (None: random, chance level)")
        tracking_uri: str | None = param(None, description="MLflow URI for a checkpoint run id")
        device: str | None = param(None, description="torch device (None: cuda if present)")
        batch_size: int = param(64, ge=1, description="images/texts per encoding batch")
        workers: int = param(2, ge=1, description="image-loading threads")

    def _make_encoder(self):
        from bench.features.encoders import make_encoder
        if self.checkpoint:
            return make_encoder("clip-checkpoint", checkpoint=self.checkpoint, device=self.device,
                                batch_size=self.batch_size, tracking_uri=self.tracking_uri)
        params = {"device": self.device, "batch_size": self.batch_size}
        if self.model is not None:  # None: the encoder's default (ViT-B-32 / Chinese-CLIP base)
            params["model"] = self.model
        if self.encoder == "open-clip":
            params["pretrained"] = self.pretrained
        return make_encoder(self.encoder, **params)

    def fit(self, train: TrainView) -> "DenseClipRetriever":
        from bench.features.encoders import embed_stickers
        self._enc = self._make_encoder()
        if self.checkpoint:
            self._enc.check_fitting(train.clicks, train.meta.get("fingerprint"))
        self.model_id_ = self._enc.model_id
        self._ids = np.asarray(train.stickers["sticker_id"].astype(str))
        vecs, missing = embed_stickers(train.stickers, train.root, self._enc, train.cache,
                                       train.meta.get("fingerprint"), self.workers)
        self._vecs = np.asarray(vecs, dtype=np.float32)
        self._has_image = np.linalg.norm(self._vecs, axis=1) > 0
        self.missing_images_ = int(missing)
        return self

    def search(self, requests: Sequence[Request], k: int) -> Run:
        """Top-``k`` stickers with an image per request, by cosine; ties by corpus order."""
        from baselines.dense_text import top_k_dense
        if not hasattr(self, "_vecs"):
            raise RuntimeError(f"{self.name}: call fit(train) before search")
        requests = list(requests)
        run = Run(name=self.name)
        if not requests:
            return run
        if not self._has_image.any() or k <= 0:
            return Run({r: [] for r in requests}, name=self.name)
        queries = list(dict.fromkeys(r.query for r in requests))
        rows = np.flatnonzero(self._has_image)
        corpus_t = np.ascontiguousarray(self._vecs[rows].T)
        ids = self._ids[rows]
        by_query: dict[str, list[tuple[str, float]]] = {}
        step = max(1, (1 << 25) // max(len(rows), 1))
        for start in range(0, len(queries), step):
            block = queries[start:start + step]
            scores = self._enc.encode_texts(block) @ corpus_t
            for q, (pos, sc) in zip(block, top_k_dense(scores, k)):
                by_query[q] = list(zip(ids[pos].tolist(), sc.astype(float).tolist()))
        for r in requests:
            run[r] = list(by_query[r.query])
        return run
