"""Seeded synthetic stickers: a character drawn in one of several visual styles with a caption.

Each sticker has a concept (``gt_topic``, e.g. "happy"), a caption rendered large in the image
(``gt_caption``, ground truth for OCR, not a retriever field), a visual style (``gt_style``:
palette, outline, texture, font) and a character shape (``gt_shape``). Users query with the
concept's *query* phrases, which differ from its captions. ``images=False`` writes no files:
stickers get a style vector in ``embedding`` (style prototype + noise, L2-normalised) and a
simulated ``ocr_text`` (the caption, a fraction with one character error) instead.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageFont

from bench.data.format import Dataset, write_dataset
from bench.data.simulate import simulate_clicks, simulator_config
from bench.errors import ConfigError

log = logging.getLogger(__name__)

# concept: captions (drawn on the sticker) ; queries (what users type)
VOCAB_EN = """
happy: HAPPY!|YAY ; joyful|so happy|cheerful|good mood|feeling great
sad: SAD|SO SAD ; unhappy|feeling down|depressed|heartbroken|blue mood
angry: ANGRY|GRR ; mad|furious|so annoyed|rage|pissed off
love: LOVE YOU|XOXO ; i love you|affection|romantic|sweetheart|adore you
laugh: LOL|HAHA ; laughing|so funny|hilarious|lmao|cracking up
thanks: THANKS|THANK YOU ; grateful|appreciate it|much appreciated|thx|cheers
hello: HELLO|HI ; greetings|hey there|wave hi|good to see you
bye: BYE|SEE YA ; goodbye|farewell|see you later|take care
sleepy: SLEEPY|ZZZ ; tired|exhausted|nap time|so drowsy
shock: WHAT?!|OMG ; shocked|surprised|no way|astonished|mind blown
ok: OK|OKAY ; alright|sounds good|fine by me|agreed|sure thing
no: NOPE|NO WAY ; refuse|not happening|denied|absolutely not
yes: YES!|YEP ; agree|of course|definitely|affirmative
sorry: SORRY|MY BAD ; apologize|forgive me|apologies|oops my fault
congrats: CONGRATS|WELL DONE ; congratulations|great job|proud of you|celebrate
hungry: HUNGRY|FOOD? ; starving|lunch time|want to eat|snack time
cool: COOL|NICE ; awesome|great stuff|impressive|sweet
confused: HUH?|CONFUSED ; puzzled|i don't get it|what do you mean|baffled
busy: BUSY|WORKING ; no time|swamped|at work|in a meeting
bored: BORED|MEH ; boring|so dull|nothing to do|yawn
excited: WOW!|CAN'T WAIT ; excited|thrilled|pumped|hyped
scared: EEK!|SCARY ; afraid|frightened|terrified|spooky
cry: WAAH|TEARS ; crying|sobbing|in tears|weeping
kiss: MWAH|KISS ; kisses|smooch|blow a kiss|peck
hug: HUGS|HUG ME ; cuddle|embrace|big hug|comfort
party: PARTY!|LET'S GO ; celebration|party time|festive|woohoo
birthday: HBD|BDAY ; happy birthday|birthday wishes|cake time|many happy returns
morning: MORNING|RISE UP ; good morning|wake up|new day|sunrise
night: NIGHT|SWEET DREAMS ; good night|bedtime|sleep well|lights out
please: PLEASE|PLZ ; begging|pretty please|i beg you|puppy eyes
wait: WAIT|HOLD ON ; one moment|be right back|just a sec|brb
help: HELP!|SOS ; need help|rescue me|emergency|save me
fighting: FIGHT!|GO GO ; you can do it|cheer up|keep going|stay strong
shy: SHY|BLUSH ; embarrassed|blushing|awkward|bashful
proud: PROUD|BOSS ; smug|confident|showing off|like a boss
facepalm: FACEPALM|UGH ; so dumb|disappointed|seriously|why me
think: HMM|THINKING ; pondering|let me think|considering|wondering
cold: COLD|BRRR ; freezing|chilly|frozen|winter
hot: HOT|SO HOT ; sweating|heat wave|burning up|summer
sick: SICK|ACHOO ; ill|feeling unwell|flu|under the weather
money: PAYDAY|RICH ; money|cash|salary|get paid
coffee: COFFEE|CAFFEINE ; need coffee|morning brew|espresso|latte
win: WINNER|VICTORY ; we won|champion|first place|trophy
lose: GAME OVER|I LOST ; defeat|failed|lost again|unlucky
whatever: WHATEVER|SO WHAT ; don't care|indifferent|who cares|shrug
miss: MISS YOU|COME BACK ; missing you|lonely|wish you were here|long distance
"""

VOCAB_ZH = """
开心: 开心|好开心 ; 高兴|快乐|心情好|乐呵呵
难过: 难过|伤心 ; 不开心|心碎|郁闷|失落
生气: 生气|气死了 ; 愤怒|发火|恼火|火大
爱你: 爱你|比心 ; 我爱你|喜欢你|表白|爱心
大笑: 哈哈哈|笑死 ; 大笑|好好笑|搞笑|笑哭
谢谢: 谢谢|感谢 ; 多谢|感恩|谢啦|辛苦了
你好: 你好|嗨 ; 问好|哈喽|见面|招手
再见: 再见|拜拜 ; 告别|回头见|下次见|走了
困: 困了|好困 ; 想睡觉|累了|打哈欠|疲惫
震惊: 震惊|什么 ; 惊讶|吃惊|不敢相信|天哪
好的: 好的|收到 ; 可以|没问题|行|明白
不要: 不要|拒绝 ; 不行|不可以|没门|算了吧
对不起: 对不起|抱歉 ; 道歉|我错了|原谅我|不好意思
恭喜: 恭喜|厉害 ; 祝贺|真棒|干得漂亮|太强了
饿: 饿了|干饭 ; 肚子饿|想吃东西|吃饭|开饭
酷: 酷|帅 ; 很酷|帅气|有型|牛
疑惑: 啊?|疑惑 ; 不懂|问号|什么意思|困惑
忙: 忙|在忙 ; 没空|加班|工作中|开会
无聊: 无聊|好无聊 ; 没意思|发呆|闲着|打发时间
激动: 激动|冲鸭 ; 兴奋|期待|太好了|迫不及待
害怕: 害怕|好怕 ; 恐惧|吓人|吓死了|发抖
哭: 呜呜|哭了 ; 流泪|大哭|泪目|委屈
亲亲: 亲亲|么么哒 ; 亲一个|飞吻|啵啵|亲吻
抱抱: 抱抱|求抱 ; 拥抱|安慰|抱一下|贴贴
派对: 嗨起来|派对 ; 聚会|庆祝|狂欢|蹦迪
生日: 生日快乐|生日 ; 祝你生日快乐|蛋糕|过生日|寿星
早安: 早安|早上好 ; 起床|新的一天|早|醒了
晚安: 晚安|好梦 ; 睡觉了|做个好梦|夜深了|休息
拜托: 拜托|求求你 ; 请求|帮帮忙|求你了|可怜
等等: 等等|稍等 ; 等一下|马上|别急|一会儿
救命: 救命|求救 ; 帮我|完蛋了|出事了|紧急
加油: 加油|冲 ; 努力|坚持|你可以的|打气
害羞: 害羞|脸红 ; 羞涩|难为情|尴尬|腼腆
得意: 得意|骄傲 ; 嘚瑟|炫耀|自信|神气
无语: 无语|服了 ; 捂脸|醉了|无话可说|失望
思考: 思考|嗯 ; 想一想|琢磨|考虑|沉思
冷: 好冷|冷 ; 冻死了|寒冷|冬天|降温
热: 好热|热 ; 热死了|出汗|夏天|高温
生病: 生病|难受 ; 感冒|不舒服|发烧|吃药
发财: 发财|暴富 ; 有钱|发工资|红包|财运
咖啡: 咖啡|续命 ; 喝咖啡|提神|拿铁|美式
赢: 赢了|胜利 ; 冠军|第一名|夺冠|赢麻了
随便: 随便|都行 ; 无所谓|不在乎|爱咋咋地|随意
想你: 想你|想念 ; 思念|好想你|孤单|异地
"""

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
_RENDER_INLINE_BELOW = 200  # render in-process (no worker pool) for fewer stickers


def vocabulary(language: str = "en") -> dict[str, tuple[list[str], list[str]]]:
    """Concept -> (captions, query phrases) for ``language`` ("en" or "zh")."""
    if language not in ("en", "zh"):
        raise ConfigError(f"language = {language!r}: expected 'en' or 'zh'")
    out = {}
    for line in (VOCAB_EN if language == "en" else VOCAB_ZH).strip().splitlines():
        concept, rest = line.split(":", 1)
        caps, queries = rest.split(";")
        out[concept.strip()] = ([c.strip() for c in caps.split("|")],
                                [q.strip() for q in queries.split("|")])
    return out


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


def _render_many(tasks: list[tuple]) -> None:
    for path, shape, style, fill_index, caption, size, language in tasks:
        render_sticker(shape, style, fill_index, caption, size, language).save(path, optimize=False)


def render_images(root: Path, stickers: pd.DataFrame, fill_index: np.ndarray, size: int,
                  language: str, workers: int = 0) -> None:
    """Write ``root/<image>`` for every sticker, in a pool of ``workers`` processes (0: all
    cores, at most 2 per 1,000 stickers worth of work)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    tasks = [(str(root / img), sh, st, int(fi), cap, size, language) for img, sh, st, fi, cap in
             zip(stickers["image"], stickers["gt_shape"], stickers["gt_style"], fill_index,
                 stickers["gt_caption"])]
    workers = workers or (os.cpu_count() or 1)
    if workers <= 1 or len(tasks) < _RENDER_INLINE_BELOW:
        _render_many(tasks)
        return
    chunk = max(50, len(tasks) // (workers * 8))
    batches = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    with mp.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(_render_many, batches):
            pass


# --------------------------------------------------------------------------------------- building

def _auto_users(n_stickers: int) -> int:
    """Paper scale (12,568 users) at paper corpus size; fewer for small corpora."""
    return int(min(12_568, max(100, n_stickers // 40)))


def _ocr_noise(captions: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    out = captions.copy()
    hit = np.flatnonzero(rng.random(len(out)) < rate)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for i, r1, r2 in zip(hit, rng.random(len(hit)), rng.integers(len(alphabet), size=len(hit))):
        text = out[i]
        k = int(r1 * len(text))
        out[i] = text[:k] + (alphabet[r2] if r2 % 3 else "") + text[k + 1:]
    return out


def synthetic_stickers(n_stickers: int = 1000, language: str = "en", n_styles: int = 6,
                       seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Sticker table (no files) and each sticker's palette index, vectorised and seeded."""
    if not 1 <= n_styles <= len(STYLES):
        raise ConfigError(f"n_styles = {n_styles}: expected 1..{len(STYLES)}")
    if n_stickers < 1:
        raise ConfigError(f"n_stickers = {n_stickers}: expected >= 1")
    vocab = vocabulary(language)
    concepts = np.array(list(vocab), dtype=object)
    rng = np.random.default_rng([seed, 10])
    concept = rng.integers(len(concepts), size=n_stickers)
    caps = [vocab[c][0] for c in concepts]
    cap_flat = np.array([c for cs in caps for c in cs], dtype=object)
    cap_n = np.array([len(cs) for cs in caps])
    cap_start = np.cumsum(cap_n) - cap_n
    caption = cap_flat[cap_start[concept] + (rng.random(n_stickers) * cap_n[concept]).astype(int)]
    style = rng.integers(n_styles, size=n_stickers)
    shape = rng.integers(len(SHAPES), size=n_stickers)
    width = max(6, len(str(n_stickers)))
    ids = [f"syn-{i:0{width}d}" for i in range(1, n_stickers + 1)]
    stickers = pd.DataFrame({
        "sticker_id": ids,
        "gt_topic": concepts[concept],
        "gt_caption": caption,
        "gt_style": np.array(list(STYLES)[:n_styles], dtype=object)[style],
        "gt_shape": np.array(SHAPES, dtype=object)[shape],
    })
    return stickers, rng.integers(12, size=n_stickers)


def style_embeddings(styles: pd.Series, dim: int, noise: float, seed: int) -> np.ndarray:
    """(n, dim) float32 rows: the style's random prototype + gaussian noise, L2-normalised."""
    codes, names = pd.factorize(styles, sort=True)
    rng = np.random.default_rng([seed, 11])
    proto = rng.standard_normal((len(names), dim))
    proto /= np.linalg.norm(proto, axis=1, keepdims=True)
    emb = rng.standard_normal((len(codes), dim), dtype=np.float32)
    emb *= np.float32(noise / math.sqrt(dim))
    emb += proto[codes].astype(np.float32)
    emb /= np.sqrt(np.einsum("ij,ij->i", emb, emb))[:, None]
    return emb


def build_synthetic(source: Any, out: str | Path, *, n_stickers: int = 1000, images: bool = True,
                    language: str = "en", n_styles: int = 6, image_size: int = 192,
                    embedding_dim: int = 32, embedding_noise: float = 0.5, ocr_noise: float = 0.1,
                    workers: int = 0, seed: int = 0, simulator: Any = None) -> Dataset:
    """Build a synthetic dataset in ``out`` (``source`` is ignored).

    With ``images``, PNGs go to ``out/images/<id>.png``; without, the ``embedding`` and
    ``ocr_text`` columns stand in for them. Users are simulated (``n_users`` 0 or unset:
    n_stickers // 40, clamped to 100..12,568); ``simulator`` holds overrides.
    """
    root = Path(out)
    stickers, fill_index = synthetic_stickers(n_stickers, language, n_styles, seed)
    vocab = vocabulary(language)
    if images:
        if not 32 <= image_size <= 1024:
            raise ConfigError(f"image_size = {image_size}: expected 32..1024")
        stickers["image"] = "images/" + stickers["sticker_id"] + ".png"
        render_images(root, stickers, fill_index, image_size, language, workers)
    else:
        stickers["image"] = None
        rng = np.random.default_rng([seed, 12])
        stickers["ocr_text"] = _ocr_noise(stickers["gt_caption"].to_numpy(dtype=object),
                                          ocr_noise, rng)
        emb = style_embeddings(stickers["gt_style"], embedding_dim, embedding_noise, seed)
        stickers["embedding"] = list(emb)
    if isinstance(simulator, dict) and not simulator.get("n_users", 1):
        simulator = {k: v for k, v in simulator.items() if k != "n_users"}  # 0 = automatic
    cfg = simulator_config(simulator, n_users=_auto_users(n_stickers), seed=seed,
                           group_col="gt_style", topic_col="gt_topic")
    qlists = {c: q for c, (_, q) in vocab.items()}
    queries = dict(zip(stickers["sticker_id"], (qlists[c] for c in stickers["gt_topic"])))
    clicks = simulate_clicks(stickers, queries, cfg)
    meta = {
        "name": f"synthetic-{language}-{n_stickers}",
        "version": "1",
        "source": "bench.data.synthetic (seeded generator)",
        "license": "CC0-1.0 (generated)",
        "languages": [language],
        "simulator": {**cfg.to_dict(), "stats": clicks.attrs.get("simulator_stats", {})},
        "builder_params": dict(n_stickers=n_stickers, images=images, language=language,
                               n_styles=n_styles, image_size=image_size,
                               embedding_dim=embedding_dim, embedding_noise=embedding_noise,
                               ocr_noise=ocr_noise, seed=seed),
    }
    cols = ["sticker_id", "image"] + [c for c in ("ocr_text", "embedding") if c in stickers] \
        + ["gt_topic", "gt_caption", "gt_style", "gt_shape"]
    return write_dataset(root, stickers[cols], clicks, meta)
