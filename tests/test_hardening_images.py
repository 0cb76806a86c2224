"""Issue 26, class 2: every frame or page read is bounded from its header before decoding.

The files are built byte by byte in the test (a few hundred bytes on disk): a GIF whose first
frame is 8x8 and whose second frame announces 12000x12000, a TIFF whose second page announces
13000x13000. With ``frames: 2`` they must be counted ``too_large`` without decoding anything."""

from __future__ import annotations

import io
import resource
import struct

import pytest
from PIL import Image

from bench.features import images
from bench.features.images import count_reasons, load_frames_checked, load_image_checked


def gif_small_then_huge(width: int, height: int) -> bytes:
    """A valid 8x8 GIF frame followed by a frame whose descriptor announces width x height
    (its LZW data is just clear + end)."""
    buf = io.BytesIO()
    Image.new("P", (8, 8), 1).save(buf, "GIF")
    data = buf.getvalue()
    assert data.endswith(b";")
    frame2 = b"\x2c" + struct.pack("<4H", 0, 0, width, height) + b"\x00\x02\x01\x2c\x00"
    return data[:-1] + frame2 + b";"


def tiff_pages(sizes: list[tuple[int, int]]) -> bytes:
    """An uncompressed 8-bit grey multi-page TIFF; every page's strip holds 64 bytes whatever
    size its IFD announces."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 0))
    pages = []
    for w, h in sizes:
        pages.append((w, h, len(out)))
        out += bytes(range(64))
    link = 4
    for w, h, data_off in pages:
        if len(out) % 2:
            out += b"\x00"
        struct.pack_into("<I", out, link, len(out))
        tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                (273, 4, data_off), (277, 3, 1), (278, 4, h), (279, 4, 64)]
        out += struct.pack("<H", len(tags))
        for tag, typ, val in tags:
            out += struct.pack("<HHI", tag, typ, 1) + (
                struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
        link = len(out)
        out += struct.pack("<I", 0)
    return bytes(out)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name,data", [
    ("second.gif", gif_small_then_huge(12000, 12000)),
    ("second.tif", tiff_pages([(8, 8), (13000, 13000)])),
    ("third.tif", tiff_pages([(8, 8), (16, 16), (20000, 4)])),   # a side over MAX_SIDE
], ids=["gif-frame-2", "tiff-page-2", "tiff-page-3-side"])
def test_a_huge_later_frame_is_too_large_before_decoding(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    assert path.stat().st_size < 1000
    before = _peak_rss_mb()
    frames, reason = load_frames_checked(path, frames=3)
    assert frames is None and reason == "too_large"
    assert _peak_rss_mb() - before < 100  # 144 Mpx were never allocated
    # the first frame alone is fine: the bound is on what is read
    first, reason = load_image_checked(path, frames=1)
    assert reason is None and first.size == (8, 8)


def test_frames_in_between_are_bounded_too(tmp_path):
    """frames=2 of a 3-page file reads pages 0 and 2; page 1 (huge) is decoded on the way only
    by formats that composite, so it is checked as well."""
    path = tmp_path / "middle.tif"
    path.write_bytes(tiff_pages([(8, 8), (13000, 13000), (8, 8)]))
    assert load_frames_checked(path, frames=2) == (None, "too_large")


def test_stacked_frames_share_one_pixel_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 200)
    path = tmp_path / "two.tif"
    path.write_bytes(tiff_pages([(10, 10), (10, 15)]))  # 100 + 150 px stacked
    assert load_frames_checked(path, frames=1)[1] is None
    assert load_frames_checked(path, frames=2) == (None, "too_large")


def test_good_animations_still_load_and_count(tmp_path):
    path = tmp_path / "ok.gif"
    a, b = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    a.save(path, save_all=True, append_images=[b], duration=100)
    frames, reason = load_frames_checked(path, frames=2)
    assert reason is None and len(frames) == 2
    assert frames[1].getpixel((0, 0))[:3] == (0, 0, 255)
    bad = tmp_path / "bad.gif"
    bad.write_bytes(gif_small_then_huge(12000, 12000))
    reasons = [load_image_checked(p, frames=2)[1] for p in (path, bad, tmp_path / "none.png")]
    assert count_reasons(reasons) == {"missing": 1, "too_large": 1}
