"""(Clicked sticker image, query) pairs for ``train-clip``, and the frozen text tower's encoder.

Pairs come only from the *train* side of the experiment's split, exactly as for the VLM
(:func:`bench.vlm.data.vlm_clicks`): each user's last train click-group gives the early-stopping
pairs, the earlier groups the fitting pairs; validation and test clicks never reach the
checkpoint. One pair per distinct ``(sticker_id, query)``; early-stopping pairs that are also
fitting pairs are dropped. Stickers without a loadable image are dropped and counted by reason.

Images are decoded once into a ``uint8 (n, 3, S, S)`` tensor; query texts once into
frozen embeddings (``locked-text``) or token ids (``finetune``), so a batch is a gather.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)
#: Click columns recorded with a checkpoint (the clicks it may have learned from).
CLICK_COLUMNS = ["user_id", "query", "sticker_id", "ts"]


def text_model(model: str = "default") -> tuple[Any, str]:
    """``(SentenceTransformer, model id)`` of the frozen text tower, loaded offline for
    ``"default"`` (the packaged all-MiniLM-L6-v2, resolved as dense-text resolves it). Loaded once
    per training: its query embeddings are computed once and the tower stays frozen."""
    from sentence_transformers import SentenceTransformer

    from baselines.dense_text import resolve_model
    path, model_id = resolve_model(model)
    return SentenceTransformer(path, device="cpu"), model_id


def encode_queries(st_model: Any, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalised float32 sentence embeddings of ``texts``."""
    emb = st_model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class ClipPairsDataModule(L.LightningDataModule):
    """Train/early-stopping (image, query) pairs of a canonical dataset directory.

    Args:
        dataset_dir: canonical dataset directory.
        image_size: side of the image tensors.
        encode_texts: ``list[str] -> tensor`` (frozen embeddings or token ids), one row per text.
        batch_size: pairs per batch (in-batch negatives: larger is harder).
        seed: pair order and DataLoader shuffle.
        split, protocol: the experiment's (see :func:`bench.vlm.data.vlm_clicks`).
    """

    def __init__(self, dataset_dir: str | Path, *, image_size: int,
                 encode_texts: Callable[[list[str]], torch.Tensor], batch_size: int = 128,
                 seed: int = 0, split: Any = None, protocol: Any = None, workers: int = 2):
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.image_size, self.encode_texts = int(image_size), encode_texts
        self.batch_size, self.seed, self.workers = int(batch_size), int(seed), int(workers)
        self.split, self.protocol = split, protocol
        self.train_pairs: pd.DataFrame | None = None
        self.val_pairs: pd.DataFrame | None = None
        self.train_clicks: pd.DataFrame | None = None
        self.stats: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs is not None:
            return
        from bench.data.format import load_dataset
        from bench.features.images import count_reasons, load_image_checked
        from bench.clip.towers import image_tensor
        from bench.vlm.data import query_pairs, split_dict, vlm_clicks
        ds = load_dataset(self.dataset_dir, on_invalid="skip")
        fit_clicks, stop_clicks, counts = vlm_clicks(ds, self.split, self.protocol)
        self.train_clicks = pd.concat([fit_clicks, stop_clicks])[CLICK_COLUMNS] \
            .astype({"user_id": str, "query": str, "sticker_id": str}).reset_index(drop=True)
        train = query_pairs(fit_clicks, self.seed)
        val = query_pairs(stop_clicks, self.seed)
        fitting = set(zip(train["sticker_id"], train["query"]))
        dup = np.array([p in fitting for p in zip(val["sticker_id"], val["query"])], dtype=bool)
        val = val.loc[~dup].reset_index(drop=True)
        sids = sorted(set(train["sticker_id"]) | set(val["sticker_id"]))
        paths = dict(zip(ds.stickers["sticker_id"].astype(str), ds.stickers["image"]))

        def load(sid: str):
            im, reason = load_image_checked(ds.image_path(paths.get(sid)))
            return (image_tensor(im, self.image_size) if im is not None else None), reason

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            loaded = list(pool.map(load, sids))
        reasons = {sid: r for sid, (_, r) in zip(sids, loaded)}
        good = [sid for sid, (t, _) in zip(sids, loaded) if t is not None]
        self.sticker_index = {sid: i for i, sid in enumerate(good)}
        self.images = torch.stack([t for t, _ in loaded if t is not None]) if good else \
            torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        self.train_pairs, self.val_pairs = (
            f[f["sticker_id"].isin(self.sticker_index)].reset_index(drop=True)
            for f in (train, val))
        queries = sorted(set(self.train_pairs["query"]) | set(self.val_pairs["query"]))
        self.query_index = {q: i for i, q in enumerate(queries)}
        self.texts = self.encode_texts(queries) if queries else torch.zeros((0, 1))
        bad = len(sids) - len(good)
        self.stats = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "split": split_dict(self.split, self.protocol), **counts,
            "val_pairs_dropped_as_fitting_pairs": int(dup.sum()),
            "train_pairs": int(len(self.train_pairs)), "val_pairs": int(len(self.val_pairs)),
            "stickers": len(good), "queries": len(queries), "skipped_stickers": bad,
            "skipped_reasons": count_reasons(reasons.values())}
        if bad:
            why = ", ".join(f"{k}={v}" for k, v in self.stats["skipped_reasons"].items())
            log.warning("%s: %d stickers without a loadable image skipped (%s)", self.dataset_dir,
                        bad, why)
        log.info("CLIP pairs (train side of the split only): %d fitting, %d early stopping",
                 len(self.train_pairs), len(self.val_pairs))

    def _collate(self, pairs: pd.DataFrame) -> Callable[[list[int]], dict[str, torch.Tensor]]:
        st = torch.tensor([self.sticker_index[s] for s in pairs["sticker_id"]], dtype=torch.long)
        qu = torch.tensor([self.query_index[q] for q in pairs["query"]], dtype=torch.long)

        def collate(rows: list[int]) -> dict[str, torch.Tensor]:
            idx = torch.tensor(rows, dtype=torch.long)
            s, q = st[idx], qu[idx]
            return {"images": self.images[s], "text": self.texts[q], "sticker": s, "query": q}
        return collate

    def train_dataloader(self) -> DataLoader:
        assert self.train_pairs is not None, "call setup() first"
        return DataLoader(_Indices(len(self.train_pairs)), batch_size=self.batch_size,
                          shuffle=True, generator=torch.Generator().manual_seed(self.seed),
                          collate_fn=self._collate(self.train_pairs))

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_pairs is not None, "call setup() first"
        if self.val_pairs.empty:
            return []
        return DataLoader(_Indices(len(self.val_pairs)), batch_size=self.batch_size,
                          shuffle=False, collate_fn=self._collate(self.val_pairs))
