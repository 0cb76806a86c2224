"""Bad input, offline features (bench/features): unreadable sticker images: either a one-line error
that names the input (exit 2, no traceback) or the input is handled and what was skipped is
counted (issue 9; split from tests/test_bad_input.py by area in issue 25)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.data.format import write_dataset

from conftest import run_main

from bad_input_helpers import write_config


# ----------------------------------------------------------------------- sticker image files

def _bad_image_dataset(root: Path):
    """Two good images, then missing, zero-byte, truncated, non-image, video and no image."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (220, 30, 30)).save(root / "img" / "red.png")
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((20, 40, 220, 255), (16, 16, 48, 48))
    img.save(root / "img" / "blue.png")
    (root / "img" / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PNG")
    (root / "img" / "truncated.png").write_bytes(buf.getvalue()[:70])
    (root / "img" / "text.png").write_text("this is not an image\n", encoding="utf-8")
    (root / "img" / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 64)
    images = {"red": "img/red.png", "blue": "img/blue.png", "missing": "img/missing.png",
              "zero": "img/zero.png", "truncated": "img/truncated.png", "text": "img/text.png",
              "video": "img/clip.webm", "none": None}
    stickers = pd.DataFrame({"sticker_id": list(images), "image": list(images.values()),
                             "text": [f"{k} sticker" for k in images]})
    clicks = pd.DataFrame({"user_id": ["u1"] * 3, "query": ["red", "blue", "red"],
                           "sticker_id": ["red", "blue", "red"], "ts": [1, 2, 3]})
    return write_dataset(root, stickers, clicks, {"name": "bad-images"})


EXPECTED_MISSING = {"no_image": 1, "missing": 1, "empty": 1, "video": 1, "truncated": 1,
                    "unreadable": 1}


def test_bad_image_files_get_zero_embeddings_and_are_counted(tmp_path, caplog):
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    ds = _bad_image_dataset(tmp_path / "ds")
    stickers, emb, report = attach_features(ds, {"ocr": False, "encoder": "style-stats"},
                                            FeatureCache(tmp_path / "cache"), progress=False)
    assert report["embed_missing"] == 6
    assert report["embed_missing_by_reason"] == EXPECTED_MISSING
    norms = dict(zip(stickers["sticker_id"], np.linalg.norm(emb, axis=1)))
    assert norms["red"] == pytest.approx(1.0, abs=1e-5)
    assert norms["blue"] == pytest.approx(1.0, abs=1e-5)
    assert all(norms[s] == 0 for s in ("missing", "zero", "truncated", "text", "video", "none"))
    assert "6 of 8 stickers have no usable image" in caplog.text


@pytest.mark.skipif(not __import__("bench.features.ocr", fromlist=["x"]).tesseract_available(),
                    reason="tesseract not installed")
def test_bad_image_files_get_empty_ocr_text_and_are_counted(tmp_path, caplog):
    from bench.features.cache import FeatureCache
    from bench.features.extract import attach_features
    ds = _bad_image_dataset(tmp_path / "ds")
    stickers, _, report = attach_features(ds, {"ocr": {"workers": 1}, "encoder": None},
                                          FeatureCache(tmp_path / "cache"), progress=False)
    assert report["ocr_missing"] == 6 and report["ocr_missing_by_reason"] == EXPECTED_MISSING
    assert report["ocr_computed"] == 8
    text = dict(zip(stickers["sticker_id"], stickers["ocr_text"]))
    assert all(text[s] == "" for s in ("missing", "zero", "truncated", "text", "video", "none"))
    assert "OCR: 6 of 8 stickers have no readable image" in caplog.text


def test_bad_image_files_in_a_run_are_reported_and_kept_with_the_results(tmp_path, capsys,
                                                                       isolated_cache):
    ds = _bad_image_dataset(tmp_path / "ds")
    cfg = write_config(tmp_path / "c.yaml", ds.root, tmp_path,
                       features={"ocr": False, "encoder": "style-stats"},
                       split={"val_groups": 0, "min_train_groups": 1})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    assert "embeddings: 6 stickers without a usable image (no_image=1, missing=1, empty=1, " \
           "video=1, truncated=1, unreadable=1)" in out
    report_file = next((tmp_path / "out").glob("bad-input-*/data_report.json"))
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["features"]["embed_missing_by_reason"] == EXPECTED_MISSING
