"""The MLflow ``pyfunc`` wrapper of a fine-tuned VLM adapter (logged by ``train-vlm``); its own
module so that :mod:`bench.vlm.describe` (and the ``describe`` command) imports no MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.vlm.describe import keywords_of

try:
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _PythonModel = object


class VlmDescriberModel(_PythonModel):
    """``mlflow.pyfunc`` model of a fine-tuned adapter: input a frame with an ``image`` column
    (file paths), output ``[description, keywords]``. The artifact ``adapter`` is the exported
    adapter directory; its ``persrv_vlm.json`` names the base model (downloaded by transformers
    unless it is the tiny model or a local path)."""

    batch_size = 8

    def load_context(self, context: Any) -> None:
        import json
        from bench.vlm.module import (ADAPTER_META_FILE, DEFAULT_QUESTION, LlavaLoraModule,
                                      resolve_precision)
        adapter_dir = Path(context.artifacts["adapter"])
        meta = json.loads((adapter_dir / ADAPTER_META_FILE).read_text(encoding="utf-8"))
        _, dtype = resolve_precision("auto")
        self.module = LlavaLoraModule(meta["model"], tiny=bool(meta.get("tiny")),
                                      revision=meta.get("revision"), lora=False,
                                      adapter=adapter_dir, dtype=dtype,
                                      question=meta.get("question") or DEFAULT_QUESTION,
                                      seed=int(meta.get("seed", 0)))
        self.module.configure_model()
        import torch
        if torch.cuda.is_available():
            self.module.to("cuda")
        self.module.eval()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None
                ) -> pd.DataFrame:
        from bench.features.images import load_image
        from bench.vlm.data import VlmCollator
        m = self.module
        collate = VlmCollator(m.processor, m.question, train=False)
        paths = list(model_input["image"])
        texts: list[str] = []
        for start in range(0, len(paths), self.batch_size):
            items = [{"sticker_id": str(i), "image": load_image(p), "query": None}
                     for i, p in enumerate(paths[start:start + self.batch_size], start)]
            batch = collate(items)
            got: dict[str, str] = {}
            if batch["input_ids"] is not None:
                batch = {k: (v.to(m.device) if hasattr(v, "to") else v) for k, v in batch.items()}
                got = dict(zip(batch["sticker_ids"], m.generate_texts(batch)))
            texts += [got.get(it["sticker_id"], "") for it in items]
        return pd.DataFrame({"description": texts,
                             "keywords": [", ".join(keywords_of(t)) for t in texts]})
