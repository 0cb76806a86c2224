"""attach_features (bench/features/extract.py): OCR + descriptions + embeddings through the cache,
no work on a second call, resume after an interruption, text-only datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydantic import ValidationError

from bench.data.format import write_dataset
from bench.features import ocr_tesseract as ocr_mod
from bench.features.cache import FeatureCache
from bench.features.encoders import StyleStatsEncoder, embed_stickers, make_encoder
from bench.features.extract import (FeaturesConfig, attach_features, descriptions_key,
                                    merge_descriptions)
from bench.features.ocr import OcrConfig, character_error_rate, tesseract_available

needs_tesseract = pytest.mark.skipif(
    not tesseract_available(),
    reason="tesseract binary not installed (apt-get install tesseract-ocr tesseract-ocr-chi-sim)")

CAPTIONS = ["good morning", "thank you", "see you later", "happy birthday", "love you", "why not"]
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _caption_png(path: Path, text: str, transparent: bool = False) -> None:
    img = Image.new("RGBA", (200, 100), (0, 0, 0, 0) if transparent else (255, 250, 230, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(FONT), 22) if FONT.exists() else ImageFont.load_default(22)
    draw.ellipse((70, 5, 130, 40), fill=(250, 200, 60, 255), outline=(0, 0, 0, 255), width=2)
    w = draw.textlength(text, font=font)
    draw.text(((200 - w) / 2, 55), text, font=font,
              fill=(255, 255, 255, 255) if transparent else (0, 0, 0, 255))
    img.save(path)


def make_dataset(root: Path, n: int = 6, text_only: bool = False):
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = None
        if not text_only:
            image = f"img/{i}.png"
            _caption_png(root / image, CAPTIONS[i % len(CAPTIONS)], transparent=i % 3 == 2)
        rows.append({"sticker_id": f"s{i}", "image": image,
                     "gt_caption": CAPTIONS[i % len(CAPTIONS)], "keywords": f"kw{i}"})
    stickers = pd.DataFrame(rows)
    if text_only:
        stickers["embedding"] = [list(np.eye(3)[i % 3] + 0.1) for i in range(n)]
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "query": ["hi", "morning", "thanks"],
                          "sticker_id": ["s0", "s1", "s1"], "ts": [1, 2, 3]})
    return write_dataset(root, stickers, inter, {"name": root.name})


class Counter:
    """Wraps the internal extractor functions to count the work they do."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None):
        self.tesseract_images: list[int] = []
        self.raw_images: list[int] = []
        real_run, real_raw = ocr_mod._run_tesseract, StyleStatsEncoder.raw_features

        def run(list_file, config, n):
            self.tesseract_images.append(n)
            if fail_on_call is not None and len(self.tesseract_images) == fail_on_call:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the extraction
            return real_run(list_file, config, n)

        def raw(enc, images):
            self.raw_images.append(len(images))
            if fail_on_call is not None and len(self.raw_images) == fail_on_call:
                raise KeyboardInterrupt
            return real_raw(enc, images)

        monkeypatch.setattr(ocr_mod, "_run_tesseract", run)
        monkeypatch.setattr(StyleStatsEncoder, "raw_features", raw)


@needs_tesseract
def test_attach_features_then_cache_hit(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds")
    cache = FeatureCache(tmp_path / "cache")
    count = Counter(monkeypatch)
    cfg = FeaturesConfig(ocr={"engine": "tesseract", "psm": 6}, encoder="style-stats",
                         workers=2)
    stickers, emb, report = attach_features(ds, cfg, cache, progress=False)
    assert stickers["sticker_id"].tolist() == ds.stickers["sticker_id"].tolist()
    cers = [character_error_rate(t, c)
            for t, c in zip(stickers["ocr_text"], stickers["gt_caption"])]
    assert np.mean(cers) <= 0.1, stickers["ocr_text"].tolist()  # incl. white-on-transparent ones
    assert emb.shape == (6, StyleStatsEncoder().dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert report["ocr_missing"] == 0 and report["embed_missing"] == 0
    assert report["ocr_computed"] == 6 and report["embed_computed"] == 6
    assert report["encoder"] == "style-stats" and report["ocr_seconds"] >= 0
    assert sum(count.tesseract_images) == 6 + 2  # two transparent stickers are read twice
    assert sum(count.raw_images) == 6
    # the dataset itself is untouched
    assert "ocr_text" not in ds.stickers.columns

    count.tesseract_images.clear()
    count.raw_images.clear()
    stickers2, emb2, report2 = attach_features(ds, cfg, cache, progress=False)
    assert count.tesseract_images == [] and count.raw_images == []  # no work at all
    assert report2["ocr_computed"] == 0 and report2["embed_computed"] == 0
    pd.testing.assert_frame_equal(stickers2, stickers)
    np.testing.assert_array_equal(emb2, emb)


@needs_tesseract
def test_interrupted_ocr_resumes(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds")
    cache = FeatureCache(tmp_path / "cache")
    cfg = FeaturesConfig(ocr={"engine": "tesseract", "batch": 2, "workers": 1,
                              "flatten": "white"}, encoder=None)
    with monkeypatch.context() as m:
        Counter(m, fail_on_call=2)
        with pytest.raises(KeyboardInterrupt):
            attach_features(ds, cfg, cache, progress=False)
    key_dirs = [d for d in cache.root.iterdir() if d.name.startswith("ocr-")]
    assert len(key_dirs) == 1
    kept = cache.load(key_dirs[0].name)
    assert kept["sticker_id"].tolist() == ["s0", "s1"]  # the first chunk survived, whole
    assert not list(key_dirs[0].glob(".part.*"))        # no half-written temp files
    count = Counter(monkeypatch)
    stickers, _, report = attach_features(ds, cfg, cache, progress=False)
    assert sum(count.tesseract_images) == 4 and report["ocr_computed"] == 4
    assert stickers["ocr_text"].str.len().gt(0).sum() >= 4


def test_interrupted_embedding_resumes(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds")
    cache = FeatureCache(tmp_path / "cache")
    enc = make_encoder("style-stats")
    with monkeypatch.context() as m:
        Counter(m, fail_on_call=2)
        with pytest.raises(KeyboardInterrupt):
            embed_stickers(ds.stickers, ds.root, enc, cache, ds.fingerprint, workers=1,
                           chunk_size=2, progress=False)
    count = Counter(monkeypatch)
    details: dict = {}
    vecs, missing = embed_stickers(ds.stickers, ds.root, enc, cache, ds.fingerprint, workers=1,
                                   chunk_size=2, progress=False, details=details)
    assert sum(count.raw_images) == 4 and details["computed"] == 4 and missing == 0
    fresh, _ = embed_stickers(ds.stickers, ds.root, enc, None, workers=2, progress=False)
    np.testing.assert_allclose(vecs, fresh, atol=1e-5)


def test_text_only_dataset_uses_precomputed(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "ds", text_only=True)
    cache = FeatureCache(tmp_path / "cache")
    count = Counter(monkeypatch)
    stickers, emb, report = attach_features(ds, {"encoder": "auto"}, cache, progress=False)
    assert report["ocr"] == "skipped" and any("OCR skipped" in n for n in report["notes"])
    assert report["encoder"] == "precomputed" and emb.shape == (6, 3)
    assert "ocr_text" not in stickers.columns and count.tesseract_images == []
    _, emb2, report2 = attach_features(ds, {"encoder": "open-clip"}, cache, progress=False)
    assert report2["encoder"] == "precomputed" and any("replaced" in n for n in report2["notes"])
    np.testing.assert_array_equal(emb2, emb)


def test_merge_descriptions_from_the_vlm_cache(tmp_path):
    ds = make_dataset(tmp_path / "ds", text_only=True)
    cache = FeatureCache(tmp_path / "cache")
    # the VLM helper's entry for the base model: descriptions for 2 of 6 stickers (interrupted)
    cache.write_part(descriptions_key(cache, ds.fingerprint, "base"),
                     pd.DataFrame({"sticker_id": ["s0", "s2"],
                                   "description": ["a yellow sun says good morning", None],
                                   "keywords": [["sun", "morning"], ["cake", "party"]]}),
                     meta={"dataset_fingerprint": ds.fingerprint, "params": {"source": "base"}})
    # an adapter's entry as bench.vlm.describe writes it (key with the model name; adapter and
    # fingerprint at the top of meta.json), found through its meta.json; "" = no image
    cache.write_part("vlm-descriptions-someotherkey",
                     pd.DataFrame({"sticker_id": ["s1", "s3"], "description": ["tuned words", ""],
                                   "keywords": ["tuned", ""]}),
                     meta={"extractor": "vlm-descriptions", "model": "llava-hf/llava-1.5-7b-hf",
                           "adapter": "lora-abc", "dataset": ds.name,
                           "dataset_fingerprint": ds.fingerprint})
    stickers, _, report = attach_features(ds, {"ocr": False, "encoder": None}, cache,
                                          progress=False)
    assert report["descriptions"]["merged"] == 2
    by_id = stickers.set_index("sticker_id")
    assert by_id.loc["s0", "description"] == "a yellow sun says good morning"
    assert by_id.loc["s0", "keywords"] == "sun, morning"
    assert by_id.loc["s2", "keywords"] == "cake, party" and by_id.loc["s2", "description"] is None
    assert by_id.loc["s3", "keywords"] == "kw3"  # not in the entry: kept
    tuned, info = merge_descriptions(ds.stickers, cache, ds.fingerprint, "lora-abc")
    assert info["key"] == "vlm-descriptions-someotherkey" and info["merged"] == 1
    tuned = tuned.set_index("sticker_id")
    assert tuned.loc["s1", "description"] == "tuned words"
    assert tuned.loc["s1", "keywords"] == "tuned"
    assert tuned.loc["s3", "keywords"] == "kw3"  # an empty description never blanks text
    _, info = merge_descriptions(ds.stickers, cache, ds.fingerprint, "nope")
    assert info["key"] is None and info["merged"] == 0


def test_features_config_validation():
    cfg = FeaturesConfig.model_validate({"ocr": {"lang": "eng+chi_sim", "psm": 11},
                                         "workers": 3})
    assert isinstance(cfg.ocr, OcrConfig) and cfg.ocr_config().workers == 3
    assert FeaturesConfig(ocr={"workers": 1}, workers=4).ocr_config().workers == 1
    assert FeaturesConfig(ocr=False).ocr_config() is None
    with pytest.raises(ValidationError, match="extra"):
        FeaturesConfig(encoders="style-stats")
    with pytest.raises(ValidationError, match="unknown encoder"):
        FeaturesConfig(encoder="resnet")
    with pytest.raises(ValidationError):
        FeaturesConfig(ocr={"psm": 99})


def test_chinese_dataset_gets_chinese_ocr():
    assert FeaturesConfig().ocr_config(["en", "zh"]).lang == "chi_sim"
    assert FeaturesConfig().ocr_config(["en"]).lang == "eng"
    assert FeaturesConfig(ocr={"lang": "eng"}).ocr_config(["zh"]).lang == "eng"
