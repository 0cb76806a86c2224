"""OCR (bench/features/ocr.py) and the image loader it relies on (bench/features/images.py).

Images are rendered here with Pillow and DejaVu fonts, like the synthetic generator's captions.
CER threshold: on 200 rendered captions (128-256 px, DejaVu Sans/Serif/Mono, a cartoon blob above
the text, a quarter white-on-transparent, a quarter black-on-transparent) tesseract 5.3 with the
default OcrConfig scored mean CER 0.020 (97% exact; failures were 1-3 letter words next to the
blob). The captions here are cleaner (all read exactly here), so mean CER <= 0.10 leaves room for
other tesseract builds while still failing if pre-processing breaks (a caption lost or read
from the wrong frame or flattening is CER ~1.0 for that image).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from bench.features import ocr as ocr_mod
from bench.features import ocr_tesseract
from bench.features.cache import FeatureCache
from bench.features.images import (count_reasons, flatten, image_problem, load_image,
                                   load_image_checked, load_rgba)
from bench.features.ocr import (OcrConfig, OcrUnavailable, character_error_rate, normalise_text,
                                ocr_accuracy, ocr_images, ocr_stickers, tesseract_available)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
needs_tesseract = pytest.mark.skipif(
    not tesseract_available(),
    reason="tesseract binary not installed (apt-get install tesseract-ocr tesseract-ocr-chi-sim)")

CAPTIONS = ["good morning", "thank you", "see you later", "happy birthday", "love you",
            "why not"]


def _font(size: int):
    path = FONT_DIR / "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size)


def render(text: str, size=(220, 110), mode="RGB", bg=(255, 255, 255), fg=(0, 0, 0)) -> Image.Image:
    img = Image.new(mode, size, bg)
    draw = ImageDraw.Draw(img)
    font = _font(24)
    w = draw.textlength(text, font=font)
    draw.text(((size[0] - w) / 2, size[1] // 2 - 14), text, font=font, fill=fg)
    return img


def write_gif(path: Path, texts: list[str]) -> None:
    frames = [render(t).convert("P") for t in texts]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "img"
    d.mkdir()
    out = {}
    for i, cap in enumerate(CAPTIONS):
        out[f"cap{i}"] = d / f"cap{i}.png"
        render(cap).save(out[f"cap{i}"])
    out["white_on_clear"] = d / "white.png"
    render("white text", mode="RGBA", bg=(0, 0, 0, 0), fg=(255, 255, 255, 255)) \
        .save(out["white_on_clear"])
    out["gif"] = d / "anim.gif"
    write_gif(out["gif"], ["first frame", "other words"])
    out["webm"] = d / "clip.webm"
    out["webm"].write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(200))
    out["garbage"] = d / "garbage.png"
    out["garbage"].write_bytes(b"this is not an image at all" * 10)
    out["empty"] = d / "empty.png"
    out["empty"].write_bytes(b"")
    out["truncated"] = d / "truncated.png"
    full = d / "full.png"
    render("cut short", size=(300, 200)).save(full)
    out["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return out


# ------------------------------------------------------------------------------- image loading

def test_load_image_reasons(images, tmp_path):
    assert load_image(images["cap0"]).mode == "RGB"
    cases = {"webm": "video", "garbage": "unreadable", "empty": "empty", "truncated": "truncated"}
    for name, reason in cases.items():
        img, why = load_image_checked(images[name])
        assert img is None and why == reason, name
    assert load_image_checked(tmp_path / "nope.png") == (None, "missing")
    assert load_image_checked(None) == (None, "no_image")
    assert image_problem(images["webm"]) == "video" and image_problem(images["cap0"]) is None
    assert count_reasons(["", "video", None, "empty", "video"]) == {"empty": 1, "video": 2}


def test_oversize_image_is_too_large_before_decoding(tmp_path):
    """A 60000 x 1 PNG is a few hundred bytes; padded to a square it would be 14 GB (issue 17)."""
    from bench.features.encoders import embed_stickers, make_encoder
    from bench.features.images import MAX_PIXELS, MAX_SIDE, size_problem
    Image.new("L", (60000, 1), 255).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 2000
    assert load_image_checked(tmp_path / "strip.png") == (None, "too_large")
    assert load_rgba(tmp_path / "strip.png") is None
    assert size_problem(MAX_SIDE, 1) is None and size_problem(MAX_SIDE + 1, 1) == "too_large"
    assert size_problem(8192, 8192) is None and size_problem(8192, 8193) == "too_large"
    assert size_problem(4096, 4096, n_frames=5) == "too_large" and MAX_PIXELS == 64 * 2 ** 20
    # a thin image inside the bounds: style-stats shrinks it before padding to a square
    Image.new("RGBA", (16000, 2), (200, 10, 10, 255)).save(tmp_path / "thin.png")
    render("ok").save(tmp_path / "ok.png")
    stickers = pd.DataFrame({"sticker_id": ["strip", "thin", "ok"],
                             "image": ["strip.png", "thin.png", "ok.png"]})
    details: dict = {}
    vecs, n_missing = embed_stickers(stickers, tmp_path, make_encoder("style-stats"), None,
                                     workers=1, progress=False, details=details)
    assert n_missing == 1 and details["missing_by_reason"] == {"too_large": 1}
    assert vecs.shape[0] == 3 and not vecs[0].any() and vecs[1].any() and vecs[2].any()
    arr = make_encoder("style-stats").to_array(Image.new("RGBA", (16000, 2)))
    assert arr.shape == (64, 64, 4)


def test_flattening_and_gif_frames(images):
    rgba = load_rgba(images["white_on_clear"])
    assert rgba.mode == "RGBA" and rgba.getextrema()[3][0] == 0
    on_white = np.asarray(load_image(images["white_on_clear"]))
    assert on_white.min() > 240  # white text vanishes on white: why OCR also reads it on black
    on_black = np.asarray(flatten(rgba, (0, 0, 0)))
    assert on_black.max() == 255 and np.median(on_black) == 0
    # GIF: first frame only, or two frames stacked vertically
    one = load_image(images["gif"])
    two = load_image(images["gif"], frames=2)
    assert one.size == (220, 110) and two.size == (220, 220)
    assert np.array_equal(np.asarray(two)[:110], np.asarray(one))
    p_with_transparency = Image.new("P", (10, 10), 0)
    p_with_transparency.info["transparency"] = 0
    assert flatten(p_with_transparency).getpixel((0, 0)) == (255, 255, 255)


# ------------------------------------------------------------------------------------ CER

def test_character_error_rate():
    assert character_error_rate("Good  Morning\n", "good morning") == 0.0
    assert character_error_rate("good mornin", "good morning") == pytest.approx(1 / 12)
    assert character_error_rate("", "abcd") == 1.0
    assert character_error_rate("", "") == 0.0 and character_error_rate("x", "") == 1.0
    assert normalise_text("早 上 好 World") == "早上好world"


def test_missing_tesseract_names_the_package(monkeypatch):
    import pytesseract
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(OcrUnavailable, match="apt-get install tesseract-ocr"):
        ocr_mod.ensure_tesseract("eng")


# ----------------------------------------------------------------------------------- tesseract

@needs_tesseract
def test_ocr_reads_captions_gif_and_transparent(images):
    names = [f"cap{i}" for i in range(len(CAPTIONS))] + ["white_on_clear", "gif"]
    res = ocr_images([images[n] for n in names], OcrConfig(workers=2))
    texts = dict(zip(names, (r[0] for r in res)))
    cers = [character_error_rate(texts[f"cap{i}"], c) for i, c in enumerate(CAPTIONS)]
    assert np.mean(cers) <= 0.10, texts
    assert all(r[2] == "" for r in res)
    assert character_error_rate(texts["white_on_clear"], "white text") <= 0.1, texts
    assert character_error_rate(texts["gif"], "first frame") <= 0.1, texts  # frame 0 only
    assert "other" not in texts["gif"].lower()
    both = ocr_images([images["gif"]], OcrConfig(frames=2))[0][0].lower()
    assert "first" in both and "other" in both


@needs_tesseract
def test_white_text_needs_black_flattening(images):
    white_only = ocr_images([images["white_on_clear"]], OcrConfig(flatten="white"))[0][0]
    assert character_error_rate(white_only, "white text") > 0.5


def _dataset(tmp_path: Path, images: dict[str, Path], names: list[str]):
    from bench.data.format import write_dataset
    root = tmp_path / "ds"
    (root / "img").mkdir(parents=True)
    rows = []
    for n in names:
        target = root / "img" / images[n].name
        target.write_bytes(images[n].read_bytes())
        cap = CAPTIONS[int(n[3:])] if n.startswith("cap") else None
        rows.append({"sticker_id": n, "image": f"img/{images[n].name}", "gt_caption": cap})
    rows.append({"sticker_id": "ghost", "image": "img/ghost.png", "gt_caption": None})
    stickers = pd.DataFrame(rows)
    inter = pd.DataFrame({"user_id": ["u"] * 2, "query": ["hi", "yo"],
                          "sticker_id": names[:2], "ts": [1, 2]})
    return write_dataset(root, stickers, inter, {"name": "ocr-test"})


@needs_tesseract
def test_ocr_stickers_missing_counted_and_cached(tmp_path, images, monkeypatch, caplog):
    names = ["cap0", "cap1", "cap2", "webm", "garbage", "empty", "truncated"]
    ds = _dataset(tmp_path, images, names)
    calls = []
    real = ocr_tesseract._run_tesseract

    def counting(list_file, config, n):
        calls.append(n)
        return real(list_file, config, n)

    monkeypatch.setattr(ocr_tesseract, "_run_tesseract", counting)
    cache = FeatureCache(tmp_path / "cache")
    cfg = OcrConfig(engine="tesseract", workers=2)
    with caplog.at_level("WARNING"):
        res = ocr_stickers(ds, cfg, cache, progress=False)
    assert res["sticker_id"].tolist() == names + ["ghost"]
    assert res.attrs["missing"] == {"missing": 1, "empty": 1, "video": 1, "truncated": 1,
                                    "unreadable": 1}
    assert (res.set_index("sticker_id").loc[["webm", "garbage", "empty", "truncated", "ghost"],
                                             "ocr_text"] == "").all()
    assert "no readable image" in caplog.text
    assert sum(calls) == 3 and res.attrs["computed"] == 8
    acc = ocr_accuracy(ds, ocr=res)
    assert acc["n"] == 3 and acc["cer_mean"] <= 0.10

    calls.clear()
    again = ocr_stickers(ds, cfg, cache, progress=False)
    assert calls == [] and again.attrs["computed"] == 0      # cache hit: no tesseract at all
    pd.testing.assert_frame_equal(again, res)
    # workers do not change the key; another psm does
    ocr_stickers(ds, cfg.model_copy(update={"workers": 1}), cache, progress=False)
    assert calls == []
    ocr_stickers(ds, cfg.model_copy(update={"psm": 6}), cache, progress=False)
    assert sum(calls) == 3


CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


@needs_tesseract
@pytest.mark.skipif(not CJK_FONT.exists(), reason="no CJK font (fonts-noto-cjk) to render with")
def test_chinese_captions(tmp_path):
    if "chi_sim" not in __import__("pytesseract").get_languages(config=""):
        pytest.skip("tesseract-ocr-chi-sim not installed")
    caps = ["早上好", "谢谢你 thank you", "生日快乐"]
    font = ImageFont.truetype(str(CJK_FONT), 28)
    paths = []
    for i, cap in enumerate(caps):
        img = Image.new("RGB", (260, 100), "white")
        ImageDraw.Draw(img).text((10, 30), cap, font=font, fill="black")
        img.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    # clean captions read best as one block without the confidence filter (chi_sim's confidences
    # run low on correct text: 早上 scores 27), see the OcrConfig notes
    res = ocr_images(paths, OcrConfig(lang="chi_sim", psm=6, min_conf=0))
    assert np.mean([character_error_rate(r[0], c) for r, c in zip(res, caps)]) <= 0.1, res
    assert "早上好" in res[0][0]  # no spaces between CJK characters


@needs_tesseract
def test_failed_batch_is_retried_one_by_one(images, monkeypatch, caplog):
    real = ocr_tesseract._run_tesseract
    calls = []

    def flaky(list_file, config, n):
        calls.append(n)
        if n > 1:
            raise RuntimeError("tesseract exited with 1: simulated")
        return real(list_file, config, n)

    monkeypatch.setattr(ocr_tesseract, "_run_tesseract", flaky)
    res = ocr_images([images["cap0"], images["cap1"], images["empty"]], OcrConfig(workers=1))
    assert calls == [2, 1, 1] and "retrying one by one" in caplog.text
    assert [character_error_rate(r[0], c) for r, c in zip(res[:2], CAPTIONS)] == [0.0, 0.0]
    assert res[2] == ("", 0.0, "empty")
