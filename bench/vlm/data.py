"""Sticker -> query pairs for LoRA training, and the collate function that builds model inputs.

Pairs come only from the *train* side of the experiment's split (DESIGN §3, :func:`vlm_clicks`):
the descriptions an adapter writes feed both the sweeps (scored on validation requests) and the
final test, so neither validation nor test clicks may reach the adapter, not even through early
stopping. Within the train clicks the same chronological per-user split is applied once more: a
user's last train click-group gives the early-stopping (``val``) pairs, the earlier groups the
fitting pairs. One pair per distinct ``(sticker_id, query)``, the sticker's image as input and the
query as the answer; early-stopping pairs that are also fitting pairs are dropped (counted). Pair
order is a seeded shuffle. Images are loaded with :func:`bench.features.images.load_image_checked`;
stickers without a loadable image are dropped before training and counted by reason (logged and
kept in :attr:`StickerQueryDataModule.stats`).

:class:`VlmCollator` turns items into model inputs with the processor:

- training (``train=True``, right padding): ``input_ids = prompt ids (BOS, chat template, the
  image token expanded to the model's image sequence length) + query ids + EOS`` and
  ``labels`` equal to ``input_ids`` except ``-100`` on the prompt (which includes every image
  token), on padding and on any image/pad token id inside the answer;
- generation (``train=False``, left padding): the prompt only, plus ``sticker_ids``; items whose
  image is ``None`` are left out of the tensors and listed in ``skipped_ids``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from bench.vlm.module import DEFAULT_QUESTION, IGNORE_INDEX, build_prompt, image_token_id

log = logging.getLogger(__name__)


def query_pairs(clicks: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Distinct ``(sticker_id, query)`` pairs of ``clicks`` in a seeded random order."""
    if clicks.empty:
        return pd.DataFrame({"sticker_id": pd.Series([], dtype=str),
                             "query": pd.Series([], dtype=str)})
    pairs = clicks[["sticker_id", "query"]].astype(str).drop_duplicates()
    pairs = pairs.sort_values(["sticker_id", "query"], kind="stable")
    return pairs.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def split_dict(split: Any = None, protocol: Any = None) -> dict[str, Any]:
    """The split (and protocol) settings as a plain dict (logged, stored with an adapter)."""
    from dataclasses import asdict

    from bench.data.protocols import split_config
    out = asdict(split_config(split))
    name = (protocol.get("name") if isinstance(protocol, dict) else getattr(protocol, "name", None)
            ) if protocol is not None else None
    if name and name != "simulated-users":
        out["protocol"] = protocol if isinstance(protocol, dict) else protocol.model_dump()
    return out


def vlm_clicks(ds: Any, split: Any = None, protocol: Any = None
               ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """``(fitting clicks, early-stopping clicks, counts)`` for the VLM on dataset ``ds``.

    The experiment's splits come from :func:`bench.data.protocols.protocol_splits` (what
    ``persrv-bench run`` uses: ``split.mode``, the protocol, the simulator's held-out queries);
    the VLM uses their ``train`` clicks only: each train user's last train click-group (users
    with at least two) for early stopping, the rest for fitting. ``counts`` says how many clicks
    of each benchmark split there were and which were used.
    """
    from bench.data.protocols import protocol_splits
    from bench.data.splits import SplitConfig, split_interactions
    outer = protocol_splits(ds, protocol, split)
    inner = split_interactions(outer.train, SplitConfig(val_groups=0, test_groups=1,
                                                        min_train_groups=1))
    counts = {"benchmark_train_clicks": int(len(outer.train)),
              "excluded_validation_clicks": int(len(outer.validation)),
              "excluded_test_clicks": int(len(outer.test)),
              "train_clicks": int(len(inner.train)), "validation_clicks": int(len(inner.test))}
    return inner.train, inner.test, counts


class StickerItems(Dataset):
    """Items ``{sticker_id, image (PIL RGB or None), query (str or None)}``; images load lazily."""

    def __init__(self, sticker_ids: Sequence[str], image_paths: Sequence[Path | None],
                 queries: Sequence[str | None] | None = None):
        self.sticker_ids = list(sticker_ids)
        self.image_paths = list(image_paths)
        self.queries = list(queries) if queries is not None else [None] * len(self.sticker_ids)

    def __len__(self) -> int:
        return len(self.sticker_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from bench.features.images import load_image
        return {"sticker_id": self.sticker_ids[i], "image": load_image(self.image_paths[i]),
                "query": self.queries[i]}


class VlmCollator:
    """Collate items into LLaVA inputs (see the module docstring for the exact layout)."""

    def __init__(self, processor: Any, question: str = DEFAULT_QUESTION, *, train: bool,
                 max_answer_tokens: int = 32):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prompt = build_prompt(processor, question)
        self.train = train
        self.max_answer_tokens = max_answer_tokens
        self.image_token_id = image_token_id(processor)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if it["image"] is not None]
        skipped = [it["sticker_id"] for it in items if it["image"] is None]
        if self.train:
            if skipped:
                raise RuntimeError(f"training images became unreadable: {skipped[:5]}")
            return self._train_batch(good)
        batch: dict[str, Any] = {"sticker_ids": [it["sticker_id"] for it in good],
                                 "skipped_ids": skipped, "input_ids": None}
        if good:
            enc = self.processor(images=[it["image"] for it in good],
                                 text=[self.prompt] * len(good), padding=True,
                                 padding_side="left", return_tensors="pt")
            batch.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         pixel_values=enc["pixel_values"])
        return batch

    def _train_batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        enc = self.processor(images=[it["image"] for it in items],
                             text=[self.prompt] * len(items), padding=True,
                             padding_side="right", return_tensors="pt")
        answers = self.tokenizer([str(it["query"]) for it in items], add_special_tokens=False,
                                 truncation=True, max_length=self.max_answer_tokens)["input_ids"]
        seqs, labels = [], []
        for row, mask, answer in zip(enc["input_ids"], enc["attention_mask"], answers):
            prompt = row[mask.bool()].tolist()  # right padding: the prompt is the unmasked part
            answer = list(answer) + ([self.eos_id] if self.eos_id is not None else [])
            seqs.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt)
                          + [t if t not in (self.image_token_id, self.pad_id) else IGNORE_INDEX
                             for t in answer])
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        label_ids = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            input_ids[i, :len(s)] = torch.tensor(s)
            label_ids[i, :len(s)] = torch.tensor(lab)
            attention[i, :len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": attention,
                "pixel_values": enc["pixel_values"], "labels": label_ids,
                "sticker_ids": [it["sticker_id"] for it in items]}


class StickerQueryDataModule(L.LightningDataModule):
    """Train/validation sticker -> query pairs of a canonical dataset directory.

    Args:
        dataset_dir: canonical dataset directory (DESIGN §2); loaded with invalid clicks skipped.
        processor: the model's ``LlavaProcessor``.
        question: the user-turn text (must match the module's).
        batch_size, eval_batch_size: per-device batch sizes (eval defaults to ``batch_size``).
        num_workers: DataLoader workers (image decoding).
        seed: pair shuffle and DataLoader shuffle seed.
        max_answer_tokens: queries are truncated to this many tokens.
        split: the experiment's split (:class:`bench.config.SplitSpec`, a dict or a
            :class:`bench.data.splits.SplitConfig`; default: last click-group test, the one
            before it validation). Only its train clicks are used (:func:`vlm_clicks`).
        protocol: the experiment's protocol (:class:`bench.config.ProtocolSpec`; None:
            simulated-users).
    """

    def __init__(self, dataset_dir: str | Path, processor: Any, question: str = DEFAULT_QUESTION,
                 *, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, max_answer_tokens: int = 32,
                 split: Any = None, protocol: Any = None):
        super().__init__()
        self.dataset_dir = Path(dataset_dir)
        self.processor = processor
        self.question = question
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.max_answer_tokens = max_answer_tokens
        self.split = split
        self.protocol = protocol
        self.train_pairs: pd.DataFrame | None = None
        self.val_pairs: pd.DataFrame | None = None
        self.image_paths: dict[str, Path | None] = {}
        self.stats: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs is not None:
            return
        from bench.data.format import load_dataset
        from bench.features.images import count_reasons, load_image_checked
        ds = load_dataset(self.dataset_dir, on_invalid="skip")
        fit_clicks, stop_clicks, counts = vlm_clicks(ds, self.split, self.protocol)
        train = query_pairs(fit_clicks, self.seed)
        val = query_pairs(stop_clicks, self.seed)
        fitting = set(zip(train["sticker_id"], train["query"]))
        seen = [pair in fitting for pair in zip(val["sticker_id"], val["query"])]
        val = val.loc[~pd.Series(seen, index=val.index, dtype=bool)].reset_index(drop=True)
        paths = dict(zip(ds.stickers["sticker_id"], ds.stickers["image"]))
        reasons: dict[str, str | None] = {}
        for sid in sorted(set(train["sticker_id"]) | set(val["sticker_id"])):
            path = ds.image_path(paths.get(sid))
            _, reasons[sid] = load_image_checked(path)
            self.image_paths[sid] = path
        bad = {sid for sid, r in reasons.items() if r is not None}
        self.train_pairs = train[~train["sticker_id"].isin(bad)].reset_index(drop=True)
        self.val_pairs = val[~val["sticker_id"].isin(bad)].reset_index(drop=True)
        self.stats = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "split": split_dict(self.split, self.protocol), **counts,
            "val_pairs_dropped_as_fitting_pairs": int(sum(seen)),
            "train_pairs": int(len(self.train_pairs)), "val_pairs": int(len(self.val_pairs)),
            "skipped_stickers": len(bad),
            "skipped_pairs": int(len(train) + len(val)
                                 - len(self.train_pairs) - len(self.val_pairs)),
            "skipped_reasons": count_reasons(reasons.values()),
        }
        if bad:
            log.warning("%s: %d stickers without a loadable image skipped (%s); %d pairs dropped",
                        self.dataset_dir, len(bad),
                        ", ".join(f"{k}={v}" for k, v in self.stats["skipped_reasons"].items()),
                        self.stats["skipped_pairs"])
        log.info("VLM pairs (train side of the split only): %d fitting, %d early stopping",
                 len(self.train_pairs), len(self.val_pairs))

    def _items(self, pairs: pd.DataFrame) -> StickerItems:
        return StickerItems(pairs["sticker_id"].tolist(),
                            [self.image_paths[s] for s in pairs["sticker_id"]],
                            pairs["query"].tolist())

    def collator(self, train: bool) -> VlmCollator:
        return VlmCollator(self.processor, self.question, train=train,
                           max_answer_tokens=self.max_answer_tokens)

    def train_dataloader(self) -> DataLoader:
        assert self.train_pairs is not None, "call setup() first"
        return DataLoader(self._items(self.train_pairs), batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed),
                          collate_fn=self.collator(True), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_pairs is not None, "call setup() first"
        if self.val_pairs.empty:
            return []
        return DataLoader(self._items(self.val_pairs), batch_size=self.eval_batch_size,
                          shuffle=False, collate_fn=self.collator(True),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
