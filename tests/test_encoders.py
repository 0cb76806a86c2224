"""Image encoders (bench/features/encoders.py): style-stats, open_clip, Chinese-CLIP, precomputed,
and embed_stickers (cache, zero vectors for unreadable images). No weights are downloaded: the CLIP
models are tiny and randomly initialised here."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from bench.errors import ConfigError
from bench.features.cache import FeatureCache
from bench.features.images import load_image
from bench.features.encoders import (ImageEncoder, OpenClipEncoder, PrecomputedEncoder,
                                     StyleStatsEncoder, embed_stickers, make_encoder)

SIZE = 96


# --------------------------------------------------------------------- synthetic art styles

def _shapes(rng: random.Random, n: int = 3):
    for _ in range(n):
        x0, y0 = rng.randint(4, SIZE // 2), rng.randint(4, SIZE // 2)
        x1, y1 = x0 + rng.randint(24, SIZE // 2), y0 + rng.randint(24, SIZE // 2)
        colour = tuple(rng.randint(30, 255) for _ in range(3))
        box = (x0, y0, min(x1, SIZE - 4), min(y1, SIZE - 4))
        yield rng.choice(["ellipse", "rectangle"]), box, colour


def draw_flat(rng):  # flat fills, no outline, opaque square canvas
    img = Image.new("RGBA", (SIZE, SIZE), tuple(rng.randint(180, 255) for _ in range(3)) + (255,))
    d = ImageDraw.Draw(img)
    for kind, box, col in _shapes(rng):
        getattr(d, kind)(box, fill=col + (255,))
    return img


def draw_outline(rng):  # line art: flat fills with thick black outlines on transparency
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    for kind, box, col in _shapes(rng):
        getattr(d, kind)(box, fill=col + (255,), outline=(0, 0, 0, 255), width=4)
    return img


def draw_shaded(rng):  # "3D": radial shading, soft silhouette on transparency
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy, r = rng.uniform(35, 60), rng.uniform(35, 60), rng.uniform(25, 38)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    col = np.array([rng.randint(60, 255) for _ in range(3)], np.float32)
    from_light = np.sqrt((xx - cx + r / 3) ** 2 + (yy - cy + r / 3) ** 2) / r
    light = np.clip(1.2 - 0.7 * from_light, 0.3, 1.2)
    rgb = np.clip(col[None, None] * light[..., None], 0, 255)
    alpha = np.clip((1.0 - dist) * 6, 0, 1) * 255
    img = Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")
    return img.filter(ImageFilter.GaussianBlur(0.8))


def draw_noisy(rng):  # painterly: shapes filled with noisy texture, opaque canvas
    arr = np.random.default_rng(rng.randint(0, 10 ** 6)).normal(0, 28, (SIZE, SIZE, 3))
    base = Image.new("RGB", (SIZE, SIZE), (235, 225, 200))
    d = ImageDraw.Draw(base)
    for kind, box, col in _shapes(rng):
        getattr(d, kind)(box, fill=col)
    rgb = np.clip(np.asarray(base, np.float32) + arr, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert("RGBA")


STYLES = {"flat": draw_flat, "outline": draw_outline, "shaded": draw_shaded, "noisy": draw_noisy}


def test_style_stats_separates_drawn_styles():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    rng = random.Random(0)
    images, labels = [], []
    for label, draw in STYLES.items():
        for _ in range(25):
            images.append(draw(rng))
            labels.append(label)
    enc = make_encoder("style-stats")
    vecs = enc.encode(images)
    assert vecs.shape == (100, enc.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    pred = KMeans(4, n_init=10, random_state=0).fit_predict(vecs)
    assert adjusted_rand_score(labels, pred) > 0.8
    # a frozen standardisation gives the same vectors batch by batch
    enc.fit(images)
    np.testing.assert_allclose(enc.encode(images[:3]), enc.encode(images)[:3], atol=1e-6)


def test_style_stats_params_and_factory_errors():
    enc = StyleStatsEncoder(blocks=["alpha", "border"])
    assert enc.dim == 11 and "alpha+border" in enc.model_id
    assert isinstance(enc, ImageEncoder)
    with pytest.raises(ConfigError, match="unknown block"):
        StyleStatsEncoder(blocks=["colour"])
    with pytest.raises(ConfigError, match="unknown encoder"):
        make_encoder("resnet")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_encoder("style-stats", colour=True)


# ------------------------------------------------------------------------------------ open_clip

def tiny_open_clip():
    import open_clip
    import torch
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32,
                           vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8,
                                           head_width=16),
                           text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2,
                                         layers=1)).eval()
    return (model, open_clip.image_transform(32, is_train=False),
            open_clip.SimpleTokenizer(context_length=16))


def test_open_clip_tiny_model_object():
    model, preprocess, tokenizer = tiny_open_clip()
    enc = make_encoder("open-clip", model=model, preprocess=preprocess, tokenizer=tokenizer,
                       device="cpu", batch_size=2)
    rng = random.Random(1)
    imgs = [draw_flat(rng).convert("RGB") for _ in range(3)] + [Image.new("L", (40, 20), 128)]
    vecs = enc.encode(imgs)
    assert vecs.shape == (4, 32) and enc.dim == 32 and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    texts = enc.encode_texts(["a happy cat", "good morning", "lol"])
    assert texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    # the cache id fingerprints the weights: same weights -> same id, other weights -> other id
    model2, _, _ = tiny_open_clip()
    assert OpenClipEncoder(model2, preprocess=preprocess).model_id == enc.model_id
    with __import__("torch").no_grad():
        next(model2.parameters()).add_(1.0)
    assert OpenClipEncoder(model2, preprocess=preprocess).model_id != enc.model_id
    with pytest.raises(ConfigError, match="preprocess"):
        OpenClipEncoder(model)


def test_open_clip_create_model_and_transforms_path():
    # the real code path, with the smallest built-in config (ViT-S-32-alt: 43M params, ~0.5 s)
    enc = make_encoder("open-clip", model="ViT-S-32-alt", pretrained=None, device="cpu")
    assert enc.model_id == "open-clip:ViT-S-32-alt:random-seed0"  # no model load needed
    rng = random.Random(2)
    vecs = enc.encode([draw_outline(rng).convert("RGB"), draw_shaded(rng).convert("RGB")])
    import open_clip
    embed_dim = open_clip.get_model_config("ViT-S-32-alt")["embed_dim"]
    assert vecs.shape == (2, enc.dim) and enc.dim == embed_dim
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert enc.encode_texts(["hello"]).shape == (1, embed_dim)
    # random init is seeded: a second encoder gives the same vectors
    again = make_encoder("open-clip", model="ViT-S-32-alt", device="cpu")
    rng = random.Random(2)
    np.testing.assert_allclose(again.encode([draw_outline(rng).convert("RGB")]), vecs[:1],
                               atol=1e-5)


def test_open_clip_unknown_pretrained_is_a_clear_error(tmp_path):
    from bench.features.encoders import EncoderUnavailable
    enc = make_encoder("open-clip", model="ViT-S-32-alt",
                       pretrained=str(tmp_path / "no-such-checkpoint.pt"), device="cpu")
    with pytest.raises(EncoderUnavailable, match="pretrained=None for random weights"):
        enc.encode([Image.new("RGB", (8, 8))])


# --------------------------------------------------------------------------------- Chinese-CLIP

@pytest.fixture(scope="module")
def tiny_chinese_clip(tmp_path_factory) -> Path:
    import torch
    from transformers import (BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPImageProcessor,
                              ChineseCLIPModel, ChineseCLIPProcessor)
    d = tmp_path_factory.mktemp("cnclip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "早", "上", "好", "猫", "狗", "开",
             "心", "hello", "cat", "good", "morning"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    image_processor = ChineseCLIPImageProcessor(size={"shortest_edge": 32},
                                                crop_size={"height": 32, "width": 32})
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=37,
                         max_position_embeddings=64),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37, projection_dim=16),
        projection_dim=16)
    torch.manual_seed(0)
    ChineseCLIPModel(config).save_pretrained(d)
    ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(d)
    return d


def test_chinese_clip_from_local_directory(tiny_chinese_clip):
    enc = make_encoder("chinese-clip", model=str(tiny_chinese_clip), device="cpu",
                       local_files_only=True)
    rng = random.Random(3)
    vecs = enc.encode([draw_flat(rng), draw_noisy(rng), Image.new("RGB", (50, 30), "red")])
    assert vecs.shape == (3, 16) and enc.dim == 16 and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    texts = enc.encode_texts(["早上好", "猫 开心", "good morning"])
    assert texts.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    assert enc.model_id.startswith("chinese-clip:") and enc.model_id == \
        make_encoder("chinese-clip", model=str(tiny_chinese_clip)).model_id


def test_chinese_clip_missing_weights_is_a_clear_error(tmp_path):
    from bench.features.encoders import EncoderUnavailable
    enc = make_encoder("chinese-clip", model=str(tmp_path / "nowhere"), local_files_only=True)
    with pytest.raises(EncoderUnavailable, match="could not load"):
        enc.encode([Image.new("RGB", (8, 8))])


# ------------------------------------------------------------------------------ embed_stickers

@pytest.fixture()
def sticker_dir(tmp_path) -> tuple[pd.DataFrame, Path]:
    rng = random.Random(4)
    root = tmp_path / "stickers"
    root.mkdir()
    rows = []
    for i, draw in enumerate([draw_flat, draw_outline, draw_shaded, draw_noisy] * 2):
        draw(rng).save(root / f"s{i}.png")
        rows.append((f"s{i}", f"s{i}.png"))
    (root / "bad.webm").write_bytes(b"\x1a\x45\xdf\xa3 not a video really")
    (root / "zero.png").write_bytes(b"")
    rows += [("bad", "bad.webm"), ("zero", "zero.png"), ("gone", "gone.png"), ("none", None)]
    return pd.DataFrame(rows, columns=["sticker_id", "image"]), root


def test_embed_stickers_zero_vectors_and_cache(sticker_dir, tmp_path, monkeypatch):
    stickers, root = sticker_dir
    cache = FeatureCache(tmp_path / "cache")
    enc = make_encoder("style-stats")
    details: dict = {}
    vecs, missing = embed_stickers(stickers, root, enc, cache, "fp1", workers=2, progress=False,
                                   details=details)
    assert vecs.shape == (12, enc.dim) and missing == 4
    assert details["missing_by_reason"] == {"no_image": 1, "missing": 1, "empty": 1, "video": 1}
    np.testing.assert_allclose(np.linalg.norm(vecs[:8], axis=1), 1.0, rtol=1e-5)
    assert not vecs[8:].any()  # unreadable -> zero vector
    # second call: served from the cache, no raw features computed
    calls = []
    real = StyleStatsEncoder.raw_features
    monkeypatch.setattr(StyleStatsEncoder, "raw_features",
                        lambda self, imgs: calls.append(len(imgs)) or real(self, imgs))
    again, missing2 = embed_stickers(stickers, root, enc, cache, "fp1", workers=2,
                                     progress=False, details=details)
    assert calls == [] and details["computed"] == 0 and missing2 == 4
    np.testing.assert_allclose(again, vecs, atol=1e-6)
    # stored as list<float32>
    import pyarrow.parquet as pq
    key = cache.key(dataset_fingerprint="fp1", extractor="embeddings",
                    params={"encoder": "style-stats", "raw": True}, model=enc.model_id)
    part = next(cache.entry_dir(key).glob("part-*.parquet"))
    assert str(pq.read_schema(part).field("vector").type) == "list<element: float>"
    # workers=1 gives the same vectors without a cache
    single, _ = embed_stickers(stickers, root, enc, None, workers=1, progress=False)
    np.testing.assert_allclose(single, vecs, atol=1e-5)


def test_embed_stickers_with_a_model_encoder(sticker_dir):
    stickers, root = sticker_dir
    model, preprocess, _ = tiny_open_clip()
    enc = OpenClipEncoder(model, preprocess=preprocess, device="cpu", model_id="tiny")
    vecs, missing = embed_stickers(stickers, root, enc, None, workers=2, progress=False)
    assert vecs.shape == (12, 32) and missing == 4
    np.testing.assert_allclose(np.linalg.norm(vecs[:8], axis=1), 1.0, rtol=1e-5)
    assert not vecs[8:].any()
    direct = enc.encode([load_image(root / "s0.png")])  # flattened on white, as embedded
    np.testing.assert_allclose(direct[0], vecs[0], atol=1e-5)


def test_precomputed_encoder():
    stickers = pd.DataFrame({"sticker_id": ["a", "b", "c", "d"],
                             "embedding": [[3.0, 4.0], None, [1.0, 0.0], [1.0, 2.0, 3.0]]})
    enc = make_encoder("precomputed")
    vecs, missing = embed_stickers(stickers, None, enc, None, progress=False)
    assert missing == 2 and enc.dim == 2
    np.testing.assert_allclose(vecs, [[0.6, 0.8], [0, 0], [1, 0], [0, 0]], atol=1e-6)
    with pytest.raises(ConfigError, match="no 'vec' column"):
        PrecomputedEncoder(column="vec").encode_frame(stickers)
    with pytest.raises(TypeError):
        enc.encode([])
