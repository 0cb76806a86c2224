"""Dense CLIP: text query -> sticker image, by cosine between CLIP text and image embeddings."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.retrieval import Request, Run, TrainView

from bench.registry import register


@register("dense-clip")
class DenseClipRetriever:
    """Text-to-image CLIP (open_clip or chinese-clip); meaningful only with pretrained weights.

    ``pretrained=None`` builds random weights (it runs offline, but ranks at chance): pass a
    pretrained tag where weights can be downloaded, or a local checkpoint file. Image embeddings
    go through the feature cache.
    """

    def __init__(self, encoder: str = "open-clip", model: str | None = None,
                 pretrained: str | None = None, device: str | None = None, batch_size: int = 64,
                 workers: int = 2):
        self.encoder = encoder
        self.model = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = batch_size
        self.workers = workers

    def _make_encoder(self):
        from bench.features.encoders import make_encoder
        params = {"device": self.device, "batch_size": self.batch_size}
        if self.model is not None:  # None: the encoder's default (ViT-B-32 / Chinese-CLIP base)
            params["model"] = self.model
        if self.encoder == "open-clip":
            params["pretrained"] = self.pretrained
        return make_encoder(self.encoder, **params)

    def fit(self, train: TrainView) -> "DenseClipRetriever":
        from bench.features.encoders import embed_stickers
        self._enc = self._make_encoder()
        self._ids = np.asarray(train.stickers["sticker_id"].astype(str))
        vecs, missing = embed_stickers(train.stickers, train.root, self._enc, train.cache,
                                       train.meta.get("fingerprint"), self.workers)
        self._vecs = np.asarray(vecs, dtype=np.float32)
        self._has_image = np.linalg.norm(self._vecs, axis=1) > 0
        self.missing_images = int(missing)
        return self

    def search(self, requests: Sequence[Request], k: int) -> Run:
        run = Run(name=self.name)
        if not requests:
            return run
        if not self._has_image.any():
            return Run({r: [] for r in requests}, name=self.name)
        queries = list(dict.fromkeys(r.query for r in requests))
        qvecs = self._enc.encode_texts(queries)
        scores = qvecs @ self._vecs.T
        scores[:, ~self._has_image] = -np.inf
        kk = min(k, int(self._has_image.sum()))
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        by_query = {}
        for qi, q in enumerate(queries):
            cand = top[qi]
            order = np.lexsort((cand, -scores[qi, cand]))  # score desc, then corpus order
            by_query[q] = [(str(self._ids[cand[j]]), float(scores[qi, cand[j]])) for j in order]
        for r in requests:
            run[r] = by_query[r.query]
        return run
