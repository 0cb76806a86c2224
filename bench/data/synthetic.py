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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data.content_overlap import plant_overlap, resolve_overlap
from bench.data.format import Dataset, write_dataset
from bench.data.simulate import simulate_clicks, simulator_config
from bench.data.synthetic_render import (DEJAVU, NOTO_CJK, SHAPES, STYLES,  # noqa: F401
                                         _font, render_sticker)
from bench.errors import ConfigError
from bench.progress import Progress

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


def _render_many(tasks: list[tuple]) -> int:
    for path, shape, style, fill_index, caption, size, language in tasks:
        render_sticker(shape, style, fill_index, caption, size, language).save(path, optimize=False)
    return len(tasks)


def render_images(root: Path, stickers: pd.DataFrame, fill_index: np.ndarray, size: int,
                  language: str, workers: int = 0) -> None:
    """Write ``root/<image>`` for every sticker, in a pool of ``workers`` processes (0: all
    cores, at most 2 per 1,000 stickers worth of work); progress through :mod:`bench.progress`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    tasks = [(str(root / img), sh, st, int(fi), cap, size, language) for img, sh, st, fi, cap in
             zip(stickers["image"], stickers["gt_shape"], stickers["gt_style"], fill_index,
                 stickers["gt_caption"])]
    workers = workers or (os.cpu_count() or 1)
    with Progress(len(tasks), "dataset: rendering images", "stickers", rate_unit="img") as bar:
        if workers <= 1 or len(tasks) < _RENDER_INLINE_BELOW:
            for i in range(0, len(tasks), 50):
                bar.update(_render_many(tasks[i:i + 50]))
            return
        chunk = max(50, len(tasks) // (workers * 8))
        batches = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
        with mp.get_context("fork").Pool(workers) as pool:
            for done in pool.imap_unordered(_render_many, batches):
                bar.update(done)


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
                    workers: int = 0, content_overlap: str = "calibrated", seed: int = 0,
                    simulator: Any = None) -> Dataset:
    """Build a synthetic dataset in ``out`` (``source`` is ignored).

    With ``images``, PNGs go to ``out/images/<id>.png``; without, the ``embedding`` and
    ``ocr_text`` columns stand in for them. Users are simulated (``n_users`` 0 or unset:
    n_stickers // 40, clamped to 100..12,568); ``simulator`` holds overrides.
    ``content_overlap``: ``calibrated`` (default) / a share writes a ``description`` column (a
    simulated VLM description: "a <shape> sticker" plus query words of the sticker's
    concept, planted so that share of (sticker, query) pairs overlap, as real human text does:
    :mod:`bench.data.content_overlap`); ``adversarial`` writes none (captions only).
    """
    root = Path(out)
    target = resolve_overlap(content_overlap)
    stickers, fill_index = synthetic_stickers(n_stickers, language, n_styles, seed)
    vocab = vocabulary(language)
    overlap: dict[str, Any] = {"target": None}
    if target is not None:
        base = [f"a {sh} sticker" for sh in stickers["gt_shape"]]
        stickers["description"], overlap = plant_overlap(
            base, [vocab[c][1] for c in stickers["gt_topic"]], target, seed)
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
        "content_overlap": overlap,
        "builder_params": dict(n_stickers=n_stickers, images=images, language=language,
                               n_styles=n_styles, image_size=image_size,
                               embedding_dim=embedding_dim, embedding_noise=embedding_noise,
                               ocr_noise=ocr_noise, content_overlap=content_overlap, seed=seed),
    }
    cols = ["sticker_id", "image"] + [c for c in ("ocr_text", "description", "embedding")
                                      if c in stickers] \
        + ["gt_topic", "gt_caption", "gt_style", "gt_shape"]
    return write_dataset(root, stickers[cols], clicks, meta)
