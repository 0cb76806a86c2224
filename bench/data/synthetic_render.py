"""Drawing the synthetic stickers (:mod:`bench.data.synthetic`): six visual styles (palette,
outline, texture, font), six character shapes, and the caption band. Pure Pillow, seeded by the
caller; fonts from the Debian packages fonts-dejavu-core and fonts-noto-cjk (PIL's default font,
with a warning, when one is missing)."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

DEJAVU = "/usr/share/fonts/truetype/dejavu/"
NOTO_CJK = "/usr/share/fonts/opentype/noto/"

# name: fills, background, outline colour, outline width (fraction of size), texture, EN font, ZH
# font (all from the Debian packages fonts-dejavu-core and fonts-noto-cjk)
STYLES: dict[str, dict[str, Any]] = {
    "pastel": dict(fills=[(255, 204, 213), (204, 236, 255), (221, 255, 204), (255, 240, 196)],
                   bg=(255, 255, 255), outline=(150, 150, 150), width=0.01, texture="flat",
                   font=DEJAVU + "DejaVuSans-Bold.ttf", font_zh=NOTO_CJK + "NotoSansCJK-Regular.ttc"),
    "comic": dict(fills=[(255, 220, 0), (255, 60, 60), (40, 120, 255), (60, 200, 80)],
                  bg=(255, 250, 235), outline=(0, 0, 0), width=0.045, texture="dots",
                  font=DEJAVU + "DejaVuSerif-Bold.ttf", font_zh=NOTO_CJK + "NotoSerifCJK-Bold.ttc"),
    "neon": dict(fills=[(255, 0, 200), (0, 255, 220), (180, 255, 0), (255, 140, 0)],
                 bg=(20, 20, 40), outline=(255, 255, 255), width=0.025, texture="flat",
                 font=DEJAVU + "DejaVuSansMono-Bold.ttf", font_zh=NOTO_CJK + "NotoSansCJK-Bold.ttc"),
    "retro": dict(fills=[(200, 120, 60), (230, 180, 90), (150, 90, 60), (190, 160, 110)],
                  bg=(245, 230, 200), outline=(90, 50, 20), width=0.03, texture="stripes",
                  font=DEJAVU + "DejaVuSerif.ttf",
                  font_zh=NOTO_CJK + "NotoSerifCJK-Regular.ttc"),
    "sketch": dict(fills=[(255, 255, 255), (240, 240, 240)], bg=(255, 255, 255),
                   outline=(30, 30, 30), width=0.015, texture="hatch",
                   font=DEJAVU + "DejaVuSans.ttf",
                   font_zh=NOTO_CJK + "NotoSansCJK-Regular.ttc"),
    "mono": dict(fills=[(90, 90, 90), (140, 140, 140), (190, 190, 190)], bg=(230, 230, 230),
                 outline=(20, 20, 20), width=0.02, texture="checker",
                 font=DEJAVU + "DejaVuSansMono.ttf",
                 font_zh=NOTO_CJK + "NotoSansCJK-Bold.ttc"),
}
SHAPES = ("circle", "star", "cat", "heart", "robot", "ghost")


# ---------------------------------------------------------------------------------------- drawing

_warned: set[str] = set()


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(path, size, index=2 if path.endswith(".ttc") else 0)
    except OSError:
        if path not in _warned:
            _warned.add(path)
            warnings.warn(f"font {path} not found; using PIL's default font (captions may be "
                          "less legible to OCR, and CJK text will not render)", stacklevel=2)
        return ImageFont.load_default(size)


def _fit_font(draw: ImageDraw.ImageDraw, text: str, path: str, max_w: float, max_h: float):
    size = int(max_h)
    while size > 8:
        font = _font(path, size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= max_w and bottom - top <= max_h:
            return font
        size = int(size * 0.9)
    return _font(path, 8)


def _shape_outline(kind: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if kind == "star":
        return [(cx + (rx if k % 2 == 0 else rx * 0.45) * math.sin(k * math.pi / 5),
                 cy - (ry if k % 2 == 0 else ry * 0.45) * math.cos(k * math.pi / 5))
                for k in range(10)]
    if kind == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x / 17 * rx, cy - y / 17 * ry + ry * 0.1))
        return pts
    if kind == "ghost":  # dome, straight sides, wavy hem
        top = [(cx - rx * math.cos(a), cy - ry * math.sin(a)) for a in np.linspace(0, math.pi, 17)]
        hem = [(x1 - 2 * rx * k / 8, y1 - (ry * 0.18 if k % 2 else 0)) for k in range(9)]
        return top + hem
    raise ValueError(kind)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box, fill, outline, width: int) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if kind == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif kind == "cat":
        for ear in ([(x0 + w * .08, y0 + h * .35), (x0 + w * .2, y0), (x0 + w * .45, y0 + h * .2)],
                    [(x1 - w * .08, y0 + h * .35), (x1 - w * .2, y0), (x1 - w * .45, y0 + h * .2)]):
            draw.polygon(ear, fill=fill, outline=outline, width=width)
        draw.ellipse((x0, y0 + h * .15, x1, y1), fill=fill, outline=outline, width=width)
    elif kind == "robot":
        draw.line((x0 + w / 2, y0, x0 + w / 2, y0 + h * .2), fill=outline, width=max(width, 2))
        draw.ellipse((x0 + w * .44, y0 - h * .04, x0 + w * .56, y0 + h * .08), fill=outline)
        draw.rounded_rectangle((x0, y0 + h * .18, x1, y1), radius=w * .12, fill=fill,
                               outline=outline, width=width)
    else:
        draw.polygon(_shape_outline(kind, box), fill=fill, outline=outline, width=width)


def _texture(img: Image.Image, mask: Image.Image, kind: str, colour, size: int) -> None:
    if kind == "flat":
        return
    layer = Image.new("RGB", img.size, colour)
    pat = Image.new("L", img.size, 0)
    d = ImageDraw.Draw(pat)
    step = max(6, size // 16)
    if kind in ("stripes", "hatch"):
        for k in range(-size, 2 * size, step):
            d.line((k, 0, k + size, size), fill=255, width=max(1, step // 4))
            if kind == "hatch":
                d.line((k + size, 0, k, size), fill=255, width=1)
    elif kind == "dots":
        for yy in range(step // 2, size, step):
            for xx in range(step // 2, size, step):
                r = step // 5
                d.ellipse((xx - r, yy - r, xx + r, yy + r), fill=255)
    elif kind == "checker":
        for yy in range(0, size, step):
            for xx in range((yy // step % 2) * step, size, 2 * step):
                d.rectangle((xx, yy, xx + step - 1, yy + step - 1), fill=160)
    img.paste(layer, mask=ImageChops.multiply(pat, mask))


def render_sticker(shape: str, style: str, fill_index: int, caption: str, size: int = 192,
                   language: str = "en") -> Image.Image:
    """One RGB sticker: the character in the top 62%, the caption in a band below it."""
    st = STYLES[style]
    fill = st["fills"][fill_index % len(st["fills"])]
    img = Image.new("RGB", (size, size), st["bg"])
    draw = ImageDraw.Draw(img)
    width = max(1, round(st["width"] * size))
    box = (size * .2, size * .05, size * .8, size * .6)
    mask = Image.new("L", img.size, 0)
    _draw_shape(ImageDraw.Draw(mask), shape, box, 255, 255, 1)
    _draw_shape(draw, shape, box, fill, st["outline"], width)
    shade = tuple(int(c * .7) for c in fill) if style != "sketch" else (120, 120, 120)
    _texture(img, mask, st["texture"], shade, size)
    _draw_shape(draw, shape, box, None, st["outline"], width)  # crisp outline over the texture
    cx, cy, s = size / 2, size * .36, size * .05  # face
    ink = st["outline"] if style != "neon" else (20, 20, 40)
    for ex in (cx - 2 * s, cx + 2 * s):
        draw.ellipse((ex - s * .6, cy - s * .8, ex + s * .6, cy + s * .8), fill=ink)
    draw.arc((cx - 2 * s, cy, cx + 2 * s, cy + 2.2 * s), 20, 160, fill=ink, width=max(1, width))
    band_dark = st["bg"][0] < 128
    band = (0, 0, 0) if band_dark else (255, 255, 255)
    text_colour = (255, 255, 255) if band_dark else (0, 0, 0)
    draw.rectangle((0, size * .64, size, size), fill=band)
    font = _fit_font(draw, caption, st["font_zh" if language == "zh" else "font"],
                     size * .92, size * .26)
    draw.text((size / 2, size * .82), caption, font=font, fill=text_colour, anchor="mm")
    return img
