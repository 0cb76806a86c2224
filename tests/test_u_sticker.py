"""The u-sticker builder (bench/data/u_sticker.py) on a small fixture of the published schema:
conversation files ``<n>.json`` (JSON array or JSON lines), ``idx_to_domain.txt``, images apart."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from bench.data.builders import build_dataset
from bench.data.splits import split_interactions
from bench.errors import ConfigError, DatasetError

STRIDE = 1_000_000_000

# File 1 (JSON array, listed out of order): a reply chain, a reply to a sticker, a sticker
# without any text before it, a preceding-text fallback.
CONV_1 = [
    {"message_id": 3, "from_id": 20, "reply_id": 2, "sticker": "", "text": "see you tonight"},
    {"message_id": 1, "from_id": 10, "reply_id": None, "sticker": "", "text": "good morning"},
    {"message_id": 2, "from_id": 20, "reply_id": 1, "sticker": "stickers/sun.webp", "text": ""},
    {"message_id": 4, "from_id": 10, "reply_id": 3, "sticker": "stickers/wave.png", "text": ""},
    {"message_id": 5, "from_id": 30, "reply_id": None, "sticker": "stickers/cat.gif",
     "text": None},
    {"message_id": 6, "from_id": 10, "reply_id": None, "sticker": "", "text": "so tired"},
    {"message_id": 7, "from_id": 10, "reply_id": 5, "sticker": "stickers/sleep.webm",
     "text": ""},
]
# File 2 (JSON lines): another domain, the same sun sticker twice.
CONV_2 = [
    {"message_id": 100, "from_id": 10, "reply_id": None, "sticker": "", "text": "lol"},
    {"message_id": 101, "from_id": 40, "reply_id": 100, "sticker": "stickers/sun.webp",
     "text": ""},
    {"message_id": 102, "from_id": 40, "reply_id": None, "sticker": "stickers/sun.webp",
     "text": ""},
]


def write_fixture(root, conv_2_extra: str = ""):
    root.mkdir(parents=True, exist_ok=True)
    (root / "1.json").write_text(json.dumps(CONV_1), encoding="utf-8")
    (root / "2.json").write_text("\n".join(json.dumps(m) for m in CONV_2) + "\n" + conv_2_extra,
                                 encoding="utf-8")
    (root / "idx_to_domain.txt").write_text("1,gaming\n2,crypto\n", encoding="utf-8")
    return root


@pytest.fixture
def usticker(tmp_path):
    return write_fixture(tmp_path / "u-sticker")


def test_builds_real_users_queries_and_domains(usticker, tmp_path):
    ds = build_dataset("u-sticker", usticker, tmp_path / "out", {})
    it = ds.interactions
    rows = list(it[["user_id", "query", "sticker_id", "ts"]].itertuples(index=False, name=None))
    assert rows == [
        ("20", "good morning", "sun.webp", 1 * STRIDE + 1),      # reply to message 1
        ("10", "see you tonight", "wave.png", 1 * STRIDE + 3),   # reply chain 1 <- 2 <- 3 <- 4
        ("10", "so tired", "sleep.webm", 1 * STRIDE + 6),        # replies to a sticker: previous
        ("40", "lol", "sun.webp", 2 * STRIDE + 1),
    ]  # cat.gif (no text anywhere before it) and 102 (user 40 never wrote) are dropped
    stats = ds.meta["build_stats"]
    assert (stats["messages"], stats["sticker_messages"]) == (10, 6)
    assert (stats["queries_from_reply"], stats["queries_from_previous"]) == (3, 1)
    assert stats["sticker_messages_without_query"] == 2 and stats["files"] == 2
    st = ds.stickers.set_index("sticker_id")
    # every sticker used is a candidate, cat.gif (never sent after a text) too
    assert sorted(st.index) == ["cat.gif", "sleep.webm", "sun.webp", "wave.png"]
    assert "message_id" in ds.meta["ts_meaning"]
    assert st.loc["sun.webp", "gt_domain"] == "crypto"  # 1 use each: ties go alphabetically
    assert st.loc["wave.png", "gt_domain"] == "gaming" and st["image"].isna().all()
    assert ds.name == "u-sticker" and ds.meta["languages"] == ["en"]
    assert "simulator" not in ds.meta and ds.text_columns == []


def test_query_from_reply_or_previous(usticker, tmp_path):
    reply = build_dataset("u-sticker", usticker, tmp_path / "r", {"query_from": "reply"})
    assert reply.interactions["query"].tolist() == ["good morning", "see you tonight", "lol"]
    prev = build_dataset("u-sticker", usticker, tmp_path / "p", {"query_from": "previous"})
    # user 20's sun: no earlier text by 20; user 10's wave: "good morning"; sleep: "so tired"
    assert prev.interactions[["user_id", "query"]].values.tolist() == [
        ["10", "good morning"], ["10", "so tired"]]
    with pytest.raises(ConfigError, match="query_from = 'next'"):
        build_dataset("u-sticker", usticker, tmp_path / "x", {"query_from": "next"})


def test_domain_tie_and_most_frequent(tmp_path):
    src = write_fixture(tmp_path / "src")
    extra = [{"message_id": 8, "from_id": 10, "reply_id": 1, "sticker": "x/sun.webp",
              "text": ""},
             {"message_id": 9, "from_id": 30, "reply_id": None, "sticker": "stickers/sun.webp",
              "text": ""}]
    (src / "1.json").write_text(json.dumps(CONV_1 + extra), encoding="utf-8")
    ds = build_dataset("u-sticker", src, tmp_path / "out", {})
    st = ds.stickers.set_index("sticker_id")
    # every use counts, with a query or not: 3 in gaming (one without a query), 2 in crypto
    assert st.loc["sun.webp", "gt_domain"] == "gaming"
    assert ds.meta["build_stats"]["sticker_name_collisions"] == 1  # x/sun.webp vs stickers/


def test_images_and_human_queries_join(usticker, tmp_path):
    images = tmp_path / "images"
    (images / "stickers").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "stickers" / "wave.png")
    (images / "sun.webp").write_bytes(b"RIFF....WEBP")  # found by file name
    (tmp_path / "sq.csv").write_text(
        "sticker_id,labeled_queries\n"
        'sun.png,"sunny, good morning、hello"\n'     # joined on the name without extension
        'wave.png,"bye, see you"\n'
        'other.png,"nothing"\n', encoding="utf-8")
    ds = build_dataset("u-sticker", usticker, tmp_path / "out",
                       {"images": str(images), "queries": str(tmp_path / "sq.csv")})
    st = ds.stickers.set_index("sticker_id")
    assert st.loc["wave.png", "image"] == "images/wave.png"
    assert (tmp_path / "out" / "images" / "sun.webp").read_bytes() == b"RIFF....WEBP"
    # sleep.webm and cat.gif (a candidate without clicks) have no file in the image folder
    assert st["image"].isna().sum() == 2 and ds.meta["build_stats"]["missing_images"] == 2
    assert st.loc["sun.webp", "labeled_queries"] == "sunny, good morning, hello"
    assert st.loc["wave.png", "labeled_queries"] == "bye, see you"
    assert st["labeled_queries"].isna().sum() == 2
    assert ds.text_columns == ["labeled_queries"]


@pytest.mark.parametrize("extra, match", [
    ('{"message_id": 103, "from_id": 40, "sticker": 5}\n',
     r"2.json, column 'sticker': line 4: sticker must be a string"),
    ('{"message_id": 104, "reply_id": 1, "sticker": ""}\n',
     r"2.json, column 'from_id': line 4: missing field from_id"),
    ('{"message_id": "abc", "from_id": 1}\n',
     r"2.json, column 'message_id': line 4: message_id must be an integer"),
    ('{"message_id": 100, "from_id": 1}\n',
     r"line 4: duplicate message_id 100 \(first at line 1\)"),
    ('[1, 2]\n', r"line 4: expected a JSON object"),
    ('{"message_id": 105, \n', r"2.json, row 4: malformed JSON line"),
])
def test_malformed_message_named_by_file_and_index(tmp_path, extra, match):
    src = write_fixture(tmp_path / "src", conv_2_extra=extra)
    with pytest.raises(DatasetError, match=match) as err:
        build_dataset("u-sticker", src, tmp_path / "out", {})
    assert "\n" not in str(err.value)


def test_malformed_messages_skipped_and_counted(tmp_path):
    src = write_fixture(tmp_path / "src", conv_2_extra='{"message_id": 7, "from_id": null}\n')
    ds = build_dataset("u-sticker", src, tmp_path / "out", {"on_invalid": "skip"})
    assert ds.meta["build_stats"]["malformed_messages"] == 1 and len(ds.interactions) == 4
    (src / "1.json").write_text("[{\"message_id\": 1,", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"1.json, row 1: malformed JSON"):
        build_dataset("u-sticker", src, tmp_path / "out2", {})


def test_bad_folder_and_domain_file(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        build_dataset("u-sticker", tmp_path / "nope", tmp_path / "o", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no conversation files"):
        build_dataset("u-sticker", tmp_path / "empty", tmp_path / "o", {})
    src = write_fixture(tmp_path / "src")
    (src / "idx_to_domain.txt").write_text("1,gaming\ntwo;crypto\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"idx_to_domain.txt, row 2: expected '<file_id>,"):
        build_dataset("u-sticker", src, tmp_path / "o", {})
    with pytest.raises(ConfigError, match="needs a source"):
        build_dataset("u-sticker", None, tmp_path / "o", {})


def test_splits_on_real_users(tmp_path):
    """Timestamps order clicks across files, so the per-user split sees a real timeline."""
    src = tmp_path / "src"
    src.mkdir()
    for f in (1, 2, 3):
        msgs = []
        for i in range(4):
            msgs.append({"message_id": 2 * i, "from_id": 1, "reply_id": None, "sticker": "",
                         "text": f"q{f}{i}"})
            msgs.append({"message_id": 2 * i + 1, "from_id": 2, "reply_id": 2 * i,
                         "sticker": f"s{i}.png", "text": ""})
        (src / f"{f}.json").write_text(json.dumps(msgs), encoding="utf-8")
    ds = build_dataset("u-sticker", src, tmp_path / "out", {})
    assert ds.interactions["ts"].is_monotonic_increasing and len(ds.interactions) == 12
    splits = split_interactions(ds.interactions)
    assert splits.test["query"].tolist() == ["q33"]
    assert (ds.stickers["gt_domain"] == "unknown").all()
    assert ds.meta["build_stats"]["files_without_domain"] == 3


def test_user_split_protocol_on_the_fixture(tmp_path):
    """The authors' real-user protocol: users split 70/15/15 (seeded); one example per
    evaluation user, its target never in its own history; every sticker stays a candidate."""
    from bench.data.format import load_dataset
    from bench.data.protocols import protocol_splits
    src = tmp_path / "src"
    src.mkdir()
    msgs, mid = [], 0
    for user in range(20):           # 20 users, 4 uses each: s0 s1 s0 s2 (s0 repeats)
        for j, sticker in enumerate(("s0", "s1", "s0", f"s{2 + user % 3}")):
            msgs.append({"message_id": mid, "from_id": user, "reply_id": None, "sticker": "",
                         "text": f"text {user} {j}"})
            msgs.append({"message_id": mid + 1, "from_id": user, "reply_id": mid,
                         "sticker": f"p/{sticker}.png", "text": ""})
            mid += 2
    msgs.append({"message_id": mid, "from_id": 99, "reply_id": None, "sticker": "p/lone.png",
                 "text": ""})       # a use without any text: no click, still a candidate
    (src / "1.json").write_text(json.dumps(msgs), encoding="utf-8")
    build_dataset("u-sticker", src, tmp_path / "out", {})
    ds = load_dataset(tmp_path / "out")
    splits = protocol_splits(ds, {"name": "user-split", "seed": 3})
    rep = splits.report
    assert (rep["train_users"], rep["validation_users"], rep["test_users"]) == (14, 3, 3)
    users = {name: set(getattr(splits, name)["user_id"]) for name in ("validation", "test")}
    assert len(users["validation"]) == 3 and len(users["test"]) == 3
    assert not users["validation"] & users["test"]
    for name in ("validation", "test"):
        frame = getattr(splits, name)
        history = splits.history_for(name)
        assert len(frame) == len(set(frame["user_id"]))       # one example per user
        for row in frame.itertuples():
            own = history[history["user_id"] == row.user_id]
            assert row.sticker_id not in set(own["sticker_id"])   # target not in history
            assert (own["ts"] < row.ts).all()                     # history is before it
            assert row.sticker_id in {"s1.png", "s2.png", "s3.png", "s4.png"}  # s0 repeats
    # the example is the last use not in the history: the 4th use (s2..s4), after s0 s1 s0
    assert set(splits.test["query"].str.split().str[-1]) == {"3"}
    assert rep["evaluation_uses_target_in_history"] == 6       # 6 users x the second s0
    corpus = set(ds.stickers["sticker_id"])
    assert {"s0.png", "s1.png", "s2.png", "s3.png", "s4.png", "lone.png"} <= corpus
    assert set(ds.interactions["sticker_id"]) <= corpus
    # another seed splits other users; the same seed the same ones
    again = protocol_splits(ds, {"name": "user-split", "seed": 3})
    assert again.test.equals(splits.test)
    other = protocol_splits(ds, {"name": "user-split", "seed": 4})
    assert set(other.test["user_id"]) != users["test"]
