"""Dataset builders (bench/data/builders.py and the source modules) on small data made here,
plus the real ../shared datasets when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.data import synthetic
from bench.data.builders import build_dataset, builder_params, list_builders
from bench.data.format import load_dataset
from bench.data.splits import split_interactions
from bench.errors import ConfigError, DatasetError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL_SIM = {"n_users": 40}


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip (a plain clone has no ../shared)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


# ---------------------------------------------------------------------------------- registry

def test_registry_lists_builders_and_params():
    assert list(list_builders()) == ["synthetic", "emoji-styles", "sticker-queries", "persrv-csv",
                                     "u-sticker"]
    assert "no source needed" in list_builders()["synthetic"]
    params = builder_params("synthetic")
    assert params["n_stickers"] == 1000 and params["images"] is True
    assert params["n_users"] == 0 and "style_concentration" in params  # simulator knobs
    assert "n_users" not in builder_params("persrv-csv")  # real users
    assert "n_users" not in builder_params("u-sticker")
    assert builder_params("u-sticker")["query_from"] == "reply-then-previous"
    assert builder_params("emoji-styles")["labels"] == ""


def test_unknown_builder_param_and_bad_value(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset builder 'nope'.*synthetic"):
        build_dataset("nope", None, tmp_path, {})
    with pytest.raises(ConfigError, match="unknown parameter 'n_stikers'.*valid:.*n_stickers"):
        build_dataset("synthetic", None, tmp_path, {"n_stikers": "10"})
    with pytest.raises(ConfigError, match="'n_stickers' = 'ten' is not an integer"):
        build_dataset("synthetic", None, tmp_path, {"n_stickers": "ten"})
    with pytest.raises(ConfigError, match="'images' = 'maybe' is not a boolean"):
        build_dataset("synthetic", None, tmp_path, {"images": "maybe"})
    with pytest.raises(ConfigError, match="needs a source"):
        build_dataset("emoji-styles", None, tmp_path, {})
    with pytest.raises(ConfigError, match="simulator.style_concentration"):
        build_dataset("synthetic", None, tmp_path, {"images": "false", "n_stickers": "50",
                                                    "style_concentration": "0"})


# --------------------------------------------------------------------------------- synthetic

def test_synthetic_with_images_from_cli_strings(tmp_path):
    ds = build_dataset("synthetic", None, tmp_path / "a",
                       {"n_stickers": "30", "images": "true", "image_size": "128",
                        "n_users": "40", "style_concentration": "0.2"})
    st = ds.stickers
    assert len(st) == 30 and st["sticker_id"].iloc[0] == "syn-000001"
    assert set(st["gt_style"]) <= set(synthetic.STYLES)
    assert set(st["gt_topic"]) <= set(synthetic.vocabulary("en"))
    # captions are ground truth only (OCR must read the image); the simulated description
    # carries the calibrated query overlap (issue 23.2)
    assert ds.text_columns == ["description"]
    for rel in st["image"]:
        assert rel.startswith("images/syn-")
        assert Image.open(tmp_path / "a" / rel).size == (128, 128)
    assert ds.meta["simulator"]["n_users"] == 40
    assert ds.meta["simulator"]["style_concentration"] == 0.2
    assert ds.meta["builder_params"]["image_size"] == 128
    # queries are the concept's query phrases, never its captions
    vocab = synthetic.vocabulary("en")
    topic = ds.interactions["sticker_id"].map(dict(zip(st["sticker_id"], st["gt_topic"])))
    assert all(q in vocab[t][1] for q, t in zip(ds.interactions["query"], topic))


def test_synthetic_is_deterministic(tmp_path):
    params = {"n_stickers": 20, "image_size": 64, **SMALL_SIM}
    a = build_dataset("synthetic", None, tmp_path / "a", params)
    b = build_dataset("synthetic", None, tmp_path / "b", params)
    c = build_dataset("synthetic", None, tmp_path / "c", {**params, "seed": 1})
    assert a.fingerprint == b.fingerprint != c.fingerprint
    for name in ("stickers.parquet", "interactions.parquet", "images/syn-000007.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_synthetic_text_only_has_style_vectors_and_ocr_text(tmp_path):
    ds = build_dataset("synthetic", None, tmp_path, {"n_stickers": 300, "images": False,
                                                     "embedding_dim": 16, **SMALL_SIM})
    st = ds.stickers
    assert st["image"].isna().all() and not (tmp_path / "images").exists()
    emb = np.stack(st["embedding"].to_numpy())
    assert emb.shape == (300, 16)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    sims = emb @ emb.T
    same = st["gt_style"].to_numpy()[:, None] == st["gt_style"].to_numpy()[None, :]
    assert sims[same].mean() > sims[~same].mean() + 0.4
    assert ds.text_columns == ["ocr_text", "description"]
    exact = (st["ocr_text"] == st["gt_caption"]).mean()
    assert 0.8 < exact < 1.0  # ocr_noise=0.1 puts one character error in ~10% of them


def test_synthetic_chinese(tmp_path):
    ds = build_dataset("synthetic", None, tmp_path, {"n_stickers": 12, "language": "zh",
                                                     "image_size": 96, **SMALL_SIM})
    assert ds.meta["languages"] == ["zh"]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in q) for q in ds.interactions["query"])
    assert set(ds.stickers["gt_topic"]) <= set(synthetic.vocabulary("zh"))


def test_vocabulary_queries_differ_from_captions():
    for lang in ("en", "zh"):
        vocab = synthetic.vocabulary(lang)
        assert 30 <= len(vocab) <= 60
        for captions, queries in vocab.values():
            assert len(captions) >= 2 and len(queries) >= 4
            assert not {c.casefold() for c in captions} & {q.casefold() for q in queries}
    with pytest.raises(ConfigError, match="language"):
        synthetic.vocabulary("fr")


def test_render_pool_and_font_fallback(tmp_path, monkeypatch):
    stickers, fills = synthetic.synthetic_stickers(6, seed=2)
    stickers["image"] = "images/" + stickers["sticker_id"] + ".png"
    monkeypatch.setattr(synthetic, "_RENDER_INLINE_BELOW", 0)
    synthetic.render_images(tmp_path, stickers, fills, 64, "en", workers=2)
    assert all((tmp_path / rel).is_file() for rel in stickers["image"])
    monkeypatch.setitem(synthetic.STYLES["pastel"], "font", "/nonexistent/font.ttf")
    synthetic._font.cache_clear()
    monkeypatch.setattr("bench.data.synthetic_render._warned", set())
    with pytest.warns(UserWarning, match="font /nonexistent/font.ttf not found"):
        img = synthetic.render_sticker("star", "pastel", 0, "HELLO", 96)
    synthetic._font.cache_clear()
    assert img.size == (96, 96)


def test_captions_are_ocr_legible():
    pytesseract = pytest.importorskip("pytesseract")
    try:
        pytesseract.get_tesseract_version()
    except Exception:
        pytest.skip("tesseract binary not installed")
    cases = [("circle", "pastel", "HAPPY!"), ("cat", "comic", "THANK YOU"),
             ("robot", "neon", "SEE YA"), ("heart", "retro", "LOVE YOU")]
    read = [pytesseract.image_to_string(synthetic.render_sticker(shape, style, 0, cap)).strip()
            for shape, style, cap in cases]
    assert sum(cap in text for (_, _, cap), text in zip(cases, read)) >= 3, read


# ------------------------------------------------------------------------------ emoji-styles

EMOJI_CSV = (
    "hexcode,emoji,label,group,subgroup,tags,keywords\n"
    "1F600,😀,grinning face,smileys-emotion,face-smiling,face|grin|happy,happy|joy|:)\n"
    "1F622,😢,crying face,smileys-emotion,face-concerned,cry|sad|tear,sad|tears|Sad\n"
    '2764-FE0F,❤️,red heart,smileys-emotion,heart,"heart|love",love|like\n'
)


@pytest.fixture
def emoji_folder(tmp_path):
    src = tmp_path / "emoji-styles"
    (src / "images").mkdir(parents=True)
    (src / "emoji.csv").write_text(EMOJI_CSV, encoding="utf-8")
    (src / "README.md").write_text("licenses", encoding="utf-8")
    for style, colour in (("noto", "red"), ("openmoji", "blue")):
        (src / "images" / style).mkdir()
        for hx in ("1F600", "1F622", "2764-FE0F"):
            if (style, hx) != ("openmoji", "1F622"):  # one missing image
                Image.new("RGBA", (8, 8), colour).save(src / "images" / style / f"{hx}.png")
    return src


def test_emoji_styles_builds_one_sticker_per_emoji_and_style(emoji_folder, tmp_path):
    ds = build_dataset("emoji-styles", emoji_folder, tmp_path / "out", SMALL_SIM)
    st = ds.stickers.set_index("sticker_id")
    assert sorted(st.index) == ["1F600:noto", "1F600:openmoji", "1F622:noto",
                                "2764-FE0F:noto", "2764-FE0F:openmoji"]
    assert st.loc["1F600:noto", "image"] == "images/noto/1F600.png"
    assert (tmp_path / "out" / "images/openmoji/2764-FE0F.png").is_file()
    assert st.loc["1F622:noto", "gt_topic"] == "face-concerned"
    assert set(st["gt_style"]) == {"noto", "openmoji"}
    assert ds.meta["skipped"] == {"missing_images": 1}
    assert ds.meta["build_stats"]["missing_images"] == 1
    assert ds.meta["build_stats"]["punctuation_only_queries"] == 1  # ":)"
    assert ds.meta["build_stats"]["duplicate_queries"] == 4  # happy, sad, Sad, love
    assert "Apache-2.0" in ds.meta["licenses"]["noto"]
    assert "CC-BY-SA-4.0" in ds.meta["license"]
    assert ds.meta["simulator"]["group_col"] == "gt_style"
    assert (tmp_path / "out" / "SOURCE-README.md").is_file()
    queries = set(ds.interactions["query"])
    assert queries <= {"grinning face", "face", "grin", "happy", "joy", "crying face", "cry",
                       "sad", "tear", "tears", "red heart", "heart", "love", "like"}


def test_emoji_styles_content_field_and_held_out_queries(emoji_folder, tmp_path):
    """Label + tags are the content field; queries are only words outside it (issue 14.5)."""
    sim = {**SMALL_SIM, "multi_click_prob": 0.0, "content_overlap": "adversarial"}
    ds = build_dataset("emoji-styles", emoji_folder, tmp_path / "out", sim)
    st = ds.stickers.set_index("sticker_id")
    assert ds.text_columns == ["description"] and ds.meta["content_field"] == "description"
    assert st.loc["1F600:noto", "description"] == "grinning face; face, grin, happy"
    assert st.loc["1F622:noto", "gt_queries"] == "tears"  # "sad"/"Sad" are tags already
    assert set(ds.interactions["query"]) <= {"joy", "tears", "like"}
    for q, sid in zip(ds.interactions["query"], ds.interactions["sticker_id"]):
        content = st.loc[sid, "description"].replace("; ", ", ").split(", ")
        assert q.casefold() not in {c.casefold() for c in content}
    # content_overlap: 1.0 appends every query word to its emoji's content (issue 23.2)
    full = build_dataset("emoji-styles", emoji_folder, tmp_path / "full",
                         {**sim, "content_overlap": 1.0})
    fst = full.stickers.set_index("sticker_id")
    assert fst.loc["1F600:noto", "description"] == "grinning face; face, grin, happy; joy"
    # "tears" already shares the stem "tear" with a tag: nothing is added
    assert fst.loc["1F622:noto", "description"] == st.loc["1F622:noto", "description"]
    assert full.meta["content_overlap"]["achieved"] == 1.0
    assert ds.meta["content_overlap"]["target"] is None
    everything = build_dataset("emoji-styles", emoji_folder, tmp_path / "all",
                               {**sim, "query_words": "all", "content": "none"})
    assert everything.text_columns == [] and "grinning face" in \
        everything.stickers.set_index("sticker_id").loc["1F600:noto", "gt_queries"]
    with pytest.raises(ConfigError, match="query_words = 'some'"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "x", {"query_words": "some"})
    with pytest.raises(ConfigError, match="content = 'gt_x'"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "x", {"content": "gt_x"})


def test_emoji_styles_keep_missing_and_options(emoji_folder, tmp_path):
    ds = build_dataset("emoji-styles", emoji_folder, tmp_path / "out",
                       {"missing_images": "keep", "topic": "group", "styles": "openmoji",
                        **SMALL_SIM})
    st = ds.stickers.set_index("sticker_id")
    assert len(st) == 3 and pd.isna(st.loc["1F622:openmoji", "image"])
    assert set(st["gt_topic"]) == {"smileys-emotion"}
    with pytest.raises(DatasetError, match="image file is missing"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "x", {"missing_images": "error"})
    with pytest.raises(DatasetError, match="style folder is missing"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "x", {"styles": "apple"})
    with pytest.raises(ConfigError, match="would overwrite the source"):
        build_dataset("emoji-styles", emoji_folder, emoji_folder, {})


@pytest.mark.parametrize("text, match", [
    ("hexcode,label,group,subgroup,tags\n1F600,a,b,c,d\n", r"row 1, column 'keywords'.*missing"),
    (EMOJI_CSV + "1F601,x,g,s,t\n", r"row 5, column 'tags': expected 7 fields"),
    (EMOJI_CSV + "1F600,😀,dup,g,s,t,k\n", r"row 5, column 'hexcode': duplicate hexcode 1F600"),
    (EMOJI_CSV + "ZZZ,?,bad,g,s,t,k\n", r"row 5, column 'hexcode': malformed hexcode"),
    (EMOJI_CSV + "1F601,😁,,g,s,t,k\n", r"row 5, column 'label': empty value"),
    (EMOJI_CSV + '1F601,x,"open quote,g,s,t,k\n', r"row \d+: malformed CSV|expected 7 fields"),
])
def test_emoji_csv_errors_name_row_and_column(emoji_folder, tmp_path, text, match):
    (emoji_folder / "emoji.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "out", {})


def test_emoji_csv_not_utf8(emoji_folder, tmp_path):
    (emoji_folder / "emoji.csv").write_bytes(
        EMOJI_CSV.encode() + "1F601,x,caf\xe9,g,s,t,k\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"emoji.csv, row 5: not valid UTF-8 \(byte 0xe9"):
        build_dataset("emoji-styles", emoji_folder, tmp_path / "out", {})


# --------------------------------------------------------------------------- sticker-queries

SQ_CSV = (
    "sticker_id,labeled_queries\n"
    '1000000000000000101.png,"Thumbs up, good job, thumbs up, , nice"\n'
    '1000000000000000102.gif,"thumbs up, ok"\n'
    '1000000000000999001.png,"sleepy, go to bed,"\n'
    "abc.webm,hello\n"
)


def test_sticker_queries_counts_packs_and_topics(tmp_path):
    (tmp_path / "sq.csv").write_text(SQ_CSV, encoding="utf-8")
    images = tmp_path / "files"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "1000000000000000101.png")
    ds = build_dataset("sticker-queries", tmp_path / "sq.csv", tmp_path / "out",
                       {"images": str(images), **SMALL_SIM})
    st = ds.stickers.set_index("sticker_id")
    assert len(st) == 4
    assert st["gt_pack"].tolist() == ["1000000000000000", "1000000000000000",
                                      "1000000000000999", "abc"]
    assert st.loc["1000000000000000102.gif", "gt_topic"] == "thumbs up"
    assert st.loc["1000000000000000101.png", "gt_queries"] == "Thumbs up, good job, nice"
    assert st.loc["1000000000000000101.png", "image"] == "images/1000000000000000101.png"
    assert st["image"].notna().sum() == 1
    stats = ds.meta["build_stats"]
    assert (stats["queries"], stats["empty_queries"], stats["duplicate_queries"]) == (8, 2, 1)
    assert stats["missing_images"] == 3
    assert ds.meta["language"] == "en" and ds.meta["license"].startswith("MIT")
    assert ds.meta["simulator"]["group_col"] == "gt_pack"
    assert ds.text_columns == []


def test_sticker_queries_chinese_release(tmp_path):
    csv = ("sticker_id,labeled_queries\n"
           '2000000000000000001.png,"开心，高兴, 快乐"\n'
           '2000000000000000002.png,"难过,伤心,哭"\n'
           '2000000000000000003.gif,"开心, 好耶"\n')
    (tmp_path / "zh.csv").write_text(csv, encoding="utf-8")
    ds = build_dataset("sticker-queries", tmp_path / "zh.csv", tmp_path / "out", SMALL_SIM)
    assert ds.meta["language"] == "zh" and ds.meta["languages"][0] == "zh"
    assert ds.meta["build_stats"]["queries"] == 8  # the full-width comma splits too
    assert ds.stickers["gt_topic"].iloc[0] == "开心"
    assert set(ds.interactions["query"]) <= {"开心", "高兴", "快乐", "难过", "伤心", "哭", "好耶"}


def test_sticker_queries_errors(tmp_path):
    (tmp_path / "dup.csv").write_text(SQ_CSV + '1000000000000000102.gif,"x"\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"row 6, column 'sticker_id': duplicate sticker id"):
        build_dataset("sticker-queries", tmp_path / "dup.csv", tmp_path / "o", {})
    (tmp_path / "cols.csv").write_text("id,queries\n1,a\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="column 'sticker_id'"):
        build_dataset("sticker-queries", tmp_path / "cols.csv", tmp_path / "o", {})
    with pytest.raises(DatasetError, match="image folder does not exist"):
        (tmp_path / "ok.csv").write_text(SQ_CSV, encoding="utf-8")
        build_dataset("sticker-queries", tmp_path / "ok.csv", tmp_path / "o",
                      {"images": str(tmp_path / "nope")})


# -------------------------------------------------------------------------------- persrv-csv

@pytest.fixture
def persrv_files(tmp_path):
    src = tmp_path / "src"
    (src / "imgs").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(src / "imgs" / "a.png")
    (src / "clicks.csv").write_text(
        "uid,query,docid\n7,开心,d1\n7,开心,d2\n7,晚安,d1\n8,难过,d2\n", encoding="utf-8")
    lines = [
        {"docid": "d1", "paddleocr": ["好", "开心"], "llava34b_image_desc": "a happy cat",
         "raw_queries": ["开心", "高兴"], "clip_cn_embedding": [0.1, 0.2, 0.3],
         "filepath": "imgs/a.png", "clicks_per_doc": 3, "versatility": 0.5},
        {"id": "d2", "paddleocr": "难过", "clip_cn_embedding": [0.3, 0.2, 0.1],
         "filepath": "imgs/missing.png", "clicks_per_doc": 1, "versatility": 0.25},
    ]
    (src / "stickers.jsonl").write_text(
        "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    return src


def test_persrv_csv_maps_fields(persrv_files, tmp_path):
    ds = build_dataset("persrv-csv", persrv_files / "clicks.csv", tmp_path / "out",
                       {"stickers": str(persrv_files / "stickers.jsonl")})
    st = ds.stickers.set_index("sticker_id")
    assert st.loc["d1", "ocr_text"] == "好 开心" and st.loc["d2", "ocr_text"] == "难过"
    assert st.loc["d1", "description"] == "a happy cat"
    assert st.loc["d1", "image"] == "images/imgs/a.png" and pd.isna(st.loc["d2", "image"])
    assert (tmp_path / "out" / "images/imgs/a.png").is_file()
    assert np.allclose(st.loc["d1", "embedding"], [0.1, 0.2, 0.3])
    assert st.loc["d2", "clicks_per_doc"] == 1 and st.loc["d1", "versatility"] == 0.5
    assert st.loc["d1", "gt_raw_queries"] == "开心 高兴"
    assert set(ds.text_columns) == {"ocr_text", "description"}
    it = ds.interactions
    assert it["ts"].tolist() == [0, 1, 2, 3] and it["user_id"].tolist() == ["7", "7", "7", "8"]
    assert ds.meta["images"]["missing_images"] == 1
    assert ds.meta["languages"] == ["zh"] and "simulator" not in ds.meta


def test_persrv_csv_timestamps_and_no_metadata(persrv_files, tmp_path):
    (persrv_files / "t.csv").write_text(
        "uid,query,docid,timestamp\nu,a,d1,2024-01-02T00:00:00Z\nu,b,d2,2024-01-01T00:00:00Z\n",
        encoding="utf-8")
    ds = build_dataset("persrv-csv", persrv_files / "t.csv", tmp_path / "out", {})
    assert ds.interactions["ts"].tolist() == [1704153600000, 1704067200000]
    assert ds.stickers["sticker_id"].tolist() == ["d1", "d2"]
    assert ds.meta["ts_unit"] == "milliseconds since epoch"


def test_persrv_csv_unknown_docid_error_or_skip(persrv_files, tmp_path):
    with open(persrv_files / "clicks.csv", "a", encoding="utf-8") as fh:
        fh.write("9,x,zzz\n9,,d1\n")
    jsonl = str(persrv_files / "stickers.jsonl")
    with pytest.raises(DatasetError, match=r"clicks.csv, row 6, column 'docid': docid 'zzz'"):
        build_dataset("persrv-csv", persrv_files / "clicks.csv", tmp_path / "o", {"stickers": jsonl})
    ds = build_dataset("persrv-csv", persrv_files / "clicks.csv", tmp_path / "o",
                       {"stickers": jsonl, "on_invalid": "skip"})
    assert len(ds.interactions) == 4
    assert ds.meta["skipped"] == {"empty_field": 1, "unknown_docid": 1}


@pytest.mark.parametrize("line, match", [
    (b'{"docid": "d3", "paddleocr": "x"', r"row 3: malformed JSON"),
    (b'["d3"]', r"row 3: expected a JSON object"),
    (b'{"paddleocr": "x"}', r"row 3, column 'docid': sticker has no id"),
    (b'{"docid": "d1"}', r"row 3, column 'docid': duplicate sticker id 'd1' \(first on line 1\)"),
    (b'{"docid": "d3", "clip_cn_embedding": [1, 2]}',
     r"row 3, column 'clip_cn_embedding': embedding has 2 dimensions"),
    (b'{"docid": "d3", "clip_cn_embedding": "oops"}',
     r"row 3, column 'clip_cn_embedding': expected a non-empty list of numbers"),
    (b'{"docid": "d3", "paddleocr": "caf\xe9"}', r"row 3: not valid UTF-8"),
])
def test_persrv_jsonl_errors_name_line_and_field(persrv_files, tmp_path, line, match):
    path = persrv_files / "stickers.jsonl"
    path.write_bytes(path.read_bytes() + line + b"\n")
    with pytest.raises(DatasetError, match=match):
        build_dataset("persrv-csv", persrv_files / "clicks.csv", tmp_path / "o",
                      {"stickers": str(path)})


# ----------------------------------------------------------------------------- real datasets

def test_real_emoji_styles(tmp_path):
    src = shared_data("emoji-styles")
    ds = build_dataset("emoji-styles", src, tmp_path / "emoji",
                       {"n_users": 300, "content_overlap": "adversarial"})
    assert len(ds.stickers) == 1607 * 4 == 6428
    assert ds.stickers["image"].notna().all()
    assert ds.stickers["gt_style"].value_counts().to_dict() == {
        "fluent-3d": 1607, "noto": 1607, "openmoji": 1607, "twemoji": 1607}
    assert ds.meta["build_stats"]["missing_images"] == 0
    assert load_dataset(tmp_path / "emoji").fingerprint == ds.fingerprint
    _check_simulated_splits(ds)
    # content = label + CLDR tags; every emoji but one (a single tag, no other keyword) has
    # query words outside it: held-out emojilib keywords, or (72 emoji) half of its tags
    assert ds.text_columns == ["description"] and ds.name == "emoji-styles"
    stats = ds.meta["build_stats"]
    assert (stats["emoji_with_held_out_tags"], stats["emoji_without_held_out_words"]) == (72, 1)
    st = ds.stickers.set_index("sticker_id")
    it = ds.interactions  # the drawn click of a group is the first of its (user, query) run
    first = it[(it["user_id"] != it["user_id"].shift()) | (it["query"] != it["query"].shift())]
    for q, sid in zip(first["query"], first["sticker_id"]):
        assert q.casefold() not in {c.casefold() for c in
                                    st.loc[sid, "description"].replace("; ", ", ").split(", ")}


def test_real_sticker_queries(tmp_path):
    src = shared_data("sticker-queries", "sticker_queries_en_release.csv")
    ds = build_dataset("sticker-queries", src, tmp_path / "sq", {"n_users": 300})
    assert len(ds.stickers) == 1115
    stats = ds.meta["build_stats"]
    assert (stats["queries"], stats["duplicate_queries"]) == (8112, 69)
    assert stats["packs"] == 865  # README: 865 groups under the drop-3-digits rule
    assert ds.meta["language"] == "en"
    _check_simulated_splits(ds)


def _check_simulated_splits(ds):
    splits = split_interactions(ds.interactions)
    users = ds.interactions["user_id"].nunique()
    assert splits.test["user_id"].nunique() >= 0.9 * users
    unseen = ~splits.test["query"].isin(set(splits.train["query"]))
    assert 0 < unseen.mean() < 1  # held-out queries exist, but not every test query is new
