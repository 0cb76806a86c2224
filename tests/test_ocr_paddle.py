"""The paddle OCR engine (bench/features/ocr_paddle.py: PP-OCRv4 from the rapidocr-onnxruntime
wheel), its cache key, and the engine dispatch in bench/features/ocr.py.

Captions are rendered here (DejaVu Sans Bold for English, Noto Sans CJK for Chinese). CER bound
0.1: on such clean captions the engine reads 5 of 6 exactly (it glues "thank you" to "thankyou",
CER 0.11 on that one), so a broken pre-processing step (no flattening, wrong colour order, a lost
caption) fails it while an engine update that misplaces a space does not.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from bench.features import ocr_paddle
from bench.features.cache import FeatureCache
from bench.features.ocr import (OcrConfig, OcrUnavailable, character_error_rate, ocr_accuracy,
                                ocr_stickers, tesseract_available)
from bench.features.ocr_paddle import paddle_images

pytest.importorskip("rapidocr_onnxruntime")

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
EN_CAPTIONS = ["good morning", "thank you", "see you later", "happy birthday", "LOL no way",
               "why not"]
ZH_CAPTIONS = ["早上好", "谢谢你", "生日快乐", "晚安"]


def _cjk_font() -> Path | None:
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    files = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
    sans = [f for f in files if "Sans" in f] or files
    return Path(sans[0]) if sans else None


CJK_FONT = _cjk_font()


def render(path: Path, text: str, font_path: Path | None, size: int = 24,
           transparent: bool = False) -> Path:
    font = (ImageFont.truetype(str(font_path), size) if font_path and font_path.exists()
            else ImageFont.load_default(size))
    img = Image.new("RGBA", (240, 110), (0, 0, 0, 0) if transparent else (255, 255, 255, 255))
    draw = ImageDraw.Draw(img)
    w = draw.textlength(text, font=font)
    draw.text(((240 - w) / 2, 40), text, font=font,
              fill=(255, 255, 255, 255) if transparent else (0, 0, 0, 255))
    img.save(path)
    return path


def test_reads_english_captions_and_white_on_transparent(tmp_path):
    paths = [render(tmp_path / f"en{i}.png", c, DEJAVU) for i, c in enumerate(EN_CAPTIONS)]
    paths.append(render(tmp_path / "white.png", "white text", DEJAVU, transparent=True))
    res = paddle_images(paths, OcrConfig(workers=2))
    assert [r[2] for r in res] == [""] * len(paths)
    cers = [character_error_rate(r[0], c) for r, c in zip(res, EN_CAPTIONS + ["white text"])]
    assert np.mean(cers) < 0.1, [r[0] for r in res]
    assert character_error_rate(res[-1][0], "white text") < 0.1  # read again on black
    assert all(0 < r[1] <= 100 for r in res)


@pytest.mark.skipif(CJK_FONT is None, reason="no Chinese font (fc-list :lang=zh is empty)")
def test_reads_chinese_captions(tmp_path):
    paths = [render(tmp_path / f"zh{i}.png", c, CJK_FONT, size=30)
             for i, c in enumerate(ZH_CAPTIONS)]
    res = paddle_images(paths, OcrConfig(workers=1))
    cers = [character_error_rate(r[0], c) for r, c in zip(res, ZH_CAPTIONS)]
    assert np.mean(cers) < 0.1, [r[0] for r in res]


def test_unreadable_images_get_their_reason(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("L", (60000, 1), 255).save(tmp_path / "strip.png")  # a few hundred bytes
    res = paddle_images([tmp_path / "nope.png", tmp_path / "empty.png", None,
                         tmp_path / "strip.png"], OcrConfig(workers=2))
    assert res == [("", 0.0, "missing"), ("", 0.0, "empty"), ("", 0.0, "no_image"),
                   ("", 0.0, "too_large")]


def test_thin_image_within_bounds_is_read_without_blowing_up(tmp_path):
    Image.new("L", (16000, 2), 255).save(tmp_path / "thin.png")
    assert paddle_images([tmp_path / "thin.png"]) == [("", 0.0, "")]


def _dataset(root: Path, n: int = 3):
    from bench.data.format import write_dataset
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        render(root / "img" / f"{i}.png", EN_CAPTIONS[i], DEJAVU)
        rows.append({"sticker_id": f"s{i}", "image": f"img/{i}.png",
                     "gt_caption": EN_CAPTIONS[i]})
    inter = pd.DataFrame({"user_id": ["u"], "query": ["hi"], "sticker_id": ["s0"], "ts": [1]})
    return write_dataset(root, pd.DataFrame(rows), inter, {"name": "paddle-test"})


def test_engine_and_detection_settings_are_in_the_cache_key(tmp_path):
    ds = _dataset(tmp_path / "ds")
    cache = FeatureCache(tmp_path / "cache")
    cfg = OcrConfig(workers=1)
    first = ocr_stickers(ds, cfg, cache, progress=False)
    assert first.attrs["computed"] == 3
    assert ocr_accuracy(ds, ocr=first)["cer_mean"] < 0.1
    # tesseract-only fields and workers do not change paddle's key: no work
    for update in ({"psm": 6}, {"lang": "chi_sim"}, {"min_conf": 10.0}, {"workers": 2}):
        again = ocr_stickers(ds, cfg.model_copy(update=update), cache, progress=False)
        assert again.attrs["computed"] == 0, update
        pd.testing.assert_frame_equal(again, first)
    # nor does rec_batch (a crop's result does not depend on its batch), nor det_min_side
    # while det_side is set
    for update in ({"rec_batch": 8}, {"det_min_side": 256}):
        assert ocr_stickers(ds, cfg.model_copy(update=update), cache,
                            progress=False).attrs["computed"] == 0, update
    # det_side and rec_min_width do
    assert ocr_stickers(ds, cfg.model_copy(update={"det_side": 320}), cache,
                        progress=False).attrs["computed"] == 3
    assert ocr_stickers(ds, cfg.model_copy(update={"rec_min_width": 224}), cache,
                        progress=False).attrs["computed"] == 3
    assert OcrConfig(engine="tesseract").cache_params()["engine"] == "tesseract"
    assert "det_side" in cfg.cache_params() and "psm" not in cfg.cache_params()
    assert "det_min_side" in OcrConfig(det_side=None).cache_params()
    assert "det_min_side" not in cfg.cache_params()
    if tesseract_available():  # and so does the engine
        tess = ocr_stickers(ds, cfg.model_copy(update={"engine": "tesseract"}), cache,
                            progress=False)
        assert tess.attrs["computed"] == 3
    entries = sorted(d.name for d in cache.root.iterdir() if d.is_dir())
    assert len(entries) == (4 if tesseract_available() else 3)


def test_missing_tesseract_is_a_one_line_error_naming_the_package(tmp_path, monkeypatch):
    import pytesseract
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    ds = _dataset(tmp_path / "ds", n=1)
    with pytest.raises(OcrUnavailable, match="apt-get install tesseract-ocr"):
        ocr_stickers(ds, OcrConfig(engine="tesseract"), None, progress=False)
    # the default engine does not need it
    assert ocr_stickers(ds, OcrConfig(), None, progress=False)["ocr_missing"].tolist() == [""]


def test_engines_are_reused_between_calls(tmp_path, monkeypatch):
    made = []
    real = ocr_paddle._new_engine

    def counting(graph):
        made.append(1)
        return real(graph)

    import queue
    monkeypatch.setattr(ocr_paddle, "_new_engine", counting)
    monkeypatch.setattr(ocr_paddle, "_POOL", {g: queue.SimpleQueue() for g in ocr_paddle.OCR_GRAPHS})
    path = render(tmp_path / "a.png", "hello", DEJAVU)
    for _ in range(3):
        paddle_images([path, path], OcrConfig(workers=2, det_side=160))
    assert 1 <= len(made) <= 2  # at most one per concurrent thread


def test_a_worker_process_loads_its_engine_before_its_first_task(tmp_path, monkeypatch):
    """``features`` worker processes warm up in their initializer: the first task then finds an
    engine and loads none (its span is work, not start-up)."""
    from bench.features import image_pipeline
    made = []
    real = ocr_paddle._new_engine
    import queue
    monkeypatch.setattr(ocr_paddle, "_new_engine", lambda graph: made.append(1) or real(graph))
    monkeypatch.setattr(ocr_paddle, "_POOL", {g: queue.SimpleQueue() for g in ocr_paddle.OCR_GRAPHS})
    image_pipeline._worker_init(OcrConfig(engine="paddle"))
    assert len(made) == 1
    path = render(tmp_path / "a.png", "hello", DEJAVU)
    out = image_pipeline.process_images([str(path)], OcrConfig(engine="paddle"), None)
    assert len(made) == 1 and out["readings"][0][0] == "hello"
    image_pipeline._worker_init(None)  # embeddings only: nothing to load
    assert len(made) == 1


def test_engines_are_classes_in_a_registry_named_by_the_config():
    import typing

    from bench.features.ocr import OCR_ENGINES, make_engine
    from bench.features.ocr_engine import OcrEngine
    names = typing.get_args(OcrConfig.model_fields["engine"].annotation)
    assert set(OCR_ENGINES) == set(names)
    for name, cls in OCR_ENGINES.items():
        assert issubclass(cls, OcrEngine) and cls.name == name
        assert isinstance(make_engine(OcrConfig(engine=name)), cls)
    assert OCR_ENGINES["paddle"].reads_decoded and not OCR_ENGINES["tesseract"].reads_decoded


def test_a_crop_reads_the_same_alone_or_batched_and_sizes_change_detection(tmp_path):
    """Recognition batches crops of equal width from any images: each image's reading (text
    and confidence, bit for bit) is the same alone, in a group, or batched; detection runs at
    det_side whatever the image's size, so a large and a small copy both read right."""
    from bench.features.images import load_rgba
    from bench.features.ocr_paddle import PaddleEngine, _det_scale
    paths = [render(tmp_path / f"b{i}.png", c, DEJAVU) for i, c in enumerate(EN_CAPTIONS)]
    images = [load_rgba(p) for p in paths]
    engine = PaddleEngine()
    alone = [engine.read_decoded([im], OcrConfig())[0] for im in images]
    timings: dict = {}
    together = engine.read_decoded(images, OcrConfig(rec_batch=8), timings)
    assert together == alone
    assert timings["detect"] > 0 and timings["recognise"] > 0 and timings["detect_cpu"] > 0
    assert np.mean([character_error_rate(t, c) for (t, _), c in zip(alone, EN_CAPTIONS)]) < 0.1
    assert _det_scale(480, 960, OcrConfig()) == 256 / 960  # shrunk to det_side
    assert _det_scale(192, 192, OcrConfig()) == 1.0  # never enlarged past its own size...
    assert _det_scale(100, 150, OcrConfig()) == 192 / 100  # ...unless under det_min_side
    assert _det_scale(600, 600, OcrConfig(det_side=None)) == 1.0  # the older rule
    big = images[0].resize((images[0].width * 3, images[0].height * 3))
    assert character_error_rate(engine.read_decoded([big], OcrConfig())[0][0],
                                EN_CAPTIONS[0]) < 0.1


@pytest.mark.skipif(CJK_FONT is None, reason="no Chinese font (fc-list :lang=zh is empty)")
def test_report_lines_split_english_and_chinese(tmp_path):
    from bench.data.format import write_dataset
    from bench.features.ocr import ocr_report_lines
    root = tmp_path / "mixed"
    (root / "img").mkdir(parents=True)
    caps = [("en", "good morning"), ("en", "why not"), ("zh", "早上好"), ("zh", "生日快乐")]
    rows = []
    for i, (lang, cap) in enumerate(caps):
        render(root / "img" / f"{i}.png", cap, CJK_FONT if lang == "zh" else DEJAVU, size=28)
        rows.append({"sticker_id": f"s{i}", "image": f"img/{i}.png", "gt_caption": cap})
    inter = pd.DataFrame({"user_id": ["u"], "query": ["hi"], "sticker_id": ["s0"], "ts": [1]})
    ds = write_dataset(root, pd.DataFrame(rows), inter, {"name": "mixed"})
    cfg = OcrConfig(workers=1)
    ocr = ocr_stickers(ds, cfg, FeatureCache(tmp_path / "cache"), progress=False)
    assert (ocr["ocr_seconds"] > 0).all()
    lines = ocr_report_lines(ds, cfg, ocr)
    assert [ln.split(":")[0] for ln in lines] == ["OCR (paddle), English", "OCR (paddle), Chinese"]
    assert all(ln.endswith("(2 stickers)") and " s/image " in ln for ln in lines), lines
    assert lines[1].startswith("OCR (paddle), Chinese: CER 0.000, 100% exact"), lines
    en_only = ocr_report_lines(dataclasses.replace(ds, stickers=ds.stickers.iloc[:2]), cfg, ocr)
    assert len(en_only) == 1 and en_only[0].startswith("OCR (paddle): CER "), en_only


def test_boxes_on_one_line_read_left_to_right_even_when_one_sits_higher():
    from bench.features.ocr_paddle import _assemble

    def box(x0, y0, x1, y1):
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)

    # "HOLD" starts 9 px lower than "ON" but on the same line; a second line below
    boxes = [box(120, 100, 180, 140), box(10, 109, 100, 150), box(20, 200, 90, 240)]
    texts = [("ON", 0.9), ("HOLD", 0.8), ("TIGHT", 0.7)]
    text, conf = _assemble(boxes, texts)
    assert text == "HOLD ON TIGHT" and conf == pytest.approx(80.0)
    assert _assemble(boxes, [("ON", 0.9), ("HOLD", 0.3), ("TIGHT", 0.7)])[0] == "ON TIGHT"
    assert _assemble([], []) == ("", 0.0)
    star = [("★", 0.9), ("HOLD", 0.8), ("TIGHT", 0.7)]
    assert _assemble(boxes, star)[0] == "HOLD TIGHT"  # a drawn shape is not a word
    assert _assemble(boxes, star, symbols=True)[0] == "HOLD ★ TIGHT"


def test_detector_input_table_gives_rapidocrs_preprocessing_bit_for_bit():
    from bench.features.ocr_paddle import _det_input, _new_engine
    engine = _new_engine()
    rng = np.random.default_rng(5)
    for shape in [(256, 224, 3), (32, 64, 3), (192, 320, 3)]:
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        img[0, :3] = [[0, 0, 0], [255, 255, 255], [127, 128, 1]]  # both ends of the table
        ref = engine.text_det.get_preprocess(max(shape[:2]))(img)
        mine = _det_input(engine, img)
        assert mine.dtype == ref.dtype == np.float32 and mine.shape == ref.shape
        assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("opaque", [True, False])
def test_bgr_input_is_the_flattened_image_with_channels_reversed(opaque):
    from bench.features.images import WHITE, flatten
    from bench.features.ocr_paddle import _bgr
    rgba = np.random.default_rng(2).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    if opaque:
        rgba[..., 3] = 255
    image = Image.fromarray(rgba, "RGBA")
    rgb = rgba[..., :3] if opaque else np.asarray(flatten(image, WHITE).convert("RGB"))
    out = _bgr(image, WHITE)
    assert out.flags["C_CONTIGUOUS"] and out.dtype == np.uint8
    assert np.array_equal(out, rgb[:, :, ::-1])
