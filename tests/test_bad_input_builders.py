"""Bad input, dataset builders (bench/data): malformed source files, paths leading out of the
source: either a one-line error that names the input (exit 2, no traceback) or the input is
handled and what was skipped is counted (issue 9; split from tests/test_bad_input.py by area in
issue 25)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_main

from bad_input_helpers import (run_cli, assert_one_line_error, SQ_HEADER, EMOJI_HEADER,
                               PERSRV_HEADER, _emoji_folder)


# ------------------------------------------------------------------- source files of builders

SOURCE_CASES = {
    "sticker-queries-not-utf8": (
        "sticker-queries", {"q.csv": SQ_HEADER + b'1.gif,"caf\xe9, ok"\n'}, "q.csv", {},
        ["q.csv, row 2", "not valid UTF-8 (byte 0xe9"]),
    "sticker-queries-broken-quote": (
        "sticker-queries", {"q.csv": SQ_HEADER + b'1.gif,"open, quote\n2.gif,x\n'}, "q.csv", {},
        ["q.csv, row 3", "malformed CSV"]),
    "sticker-queries-extra-field": (
        "sticker-queries", {"q.csv": SQ_HEADER + b"1.gif,a,b\n"}, "q.csv", {},
        ["q.csv, row 2", "expected 2 fields"]),
    "sticker-queries-empty-file": (
        "sticker-queries", {"q.csv": b""}, "q.csv", {}, ["q.csv", "file is empty"]),
    "emoji-styles-not-utf8": (
        "emoji-styles", {"emoji.csv": EMOJI_HEADER + b"1F600,grin\xe9,g,s,a,b\n"}, ".", {},
        ["emoji.csv, row 2", "not valid UTF-8"]),
    "emoji-styles-broken-quote": (
        "emoji-styles", {"emoji.csv": EMOJI_HEADER + b'1F600,"grin,g,s,a,b\n'}, ".", {},
        ["emoji.csv, row 2", "malformed CSV"]),
    "emoji-styles-missing-column": (
        "emoji-styles", {"emoji.csv": b"hexcode,label\n1F600,grin\n"}, ".", {},
        ["emoji.csv, row 1, column 'group'", "required column is missing"]),
    "persrv-csv-not-utf8": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,caf\xe9,d1\n"}, "c.csv", {},
        ["c.csv, row 2", "not valid UTF-8"]),
    "persrv-csv-broken-quote": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b'u1,"a\n'}, "c.csv", {},
        ["c.csv, row 2", "malformed CSV"]),
    "persrv-csv-missing-column": (
        "persrv-csv", {"c.csv": b"uid,query\nu1,a\n"}, "c.csv", {},
        ["c.csv, row 1, column 'docid'", "required column is missing"]),
    "persrv-jsonl-malformed": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,a,d1\n",
                       "m.jsonl": b'{"docid": "d1"}\n{"docid": "d2", "paddleocr": "x"\n'},
        "c.csv", {"stickers": "m.jsonl"}, ["m.jsonl, row 2", "malformed JSON"]),
    "persrv-jsonl-not-utf8": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,a,d1\n",
                       "m.jsonl": b'{"docid": "d1", "paddleocr": "caf\xe9"}\n'},
        "c.csv", {"stickers": "m.jsonl"}, ["m.jsonl, row 1", "not valid UTF-8"]),
    "persrv-jsonl-not-an-object": (
        "persrv-csv", {"c.csv": PERSRV_HEADER + b"u1,a,d1\n", "m.jsonl": b'["d1"]\n'},
        "c.csv", {"stickers": "m.jsonl"}, ["m.jsonl, row 1", "expected a JSON object"]),
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_malformed_source_files_are_one_line_errors(case, tmp_path, capsys):
    builder, files, source, params, needles = SOURCE_CASES[case]
    src = tmp_path / "src"
    if builder == "emoji-styles":
        _emoji_folder(src, files["emoji.csv"])
    else:
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
    args = ["datasets", "build", builder, "--source", str(src / source), "--out",
            str(tmp_path / "out")]
    for key, value in params.items():
        args += ["--param", f"{key}={src / value}"]
    code, _, err = run_main(capsys, *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_non_utf8_csv_from_a_real_process_is_one_line(tmp_path):
    """The same, through ``python -m bench`` (what a user's shell sees)."""
    (tmp_path / "q.csv").write_bytes(SQ_HEADER + b'1.gif,"caf\xe9"\n')
    out = run_cli("datasets", "build", "sticker-queries", "--source", str(tmp_path / "q.csv"),
                  "--out", str(tmp_path / "out"))
    assert out.stdout == ""
    assert_one_line_error(out.returncode, out.stderr, "q.csv, row 2", "not valid UTF-8")


# ---------------------------------------------------------------------- builders stay inside

EMOJI_CSV = ("hexcode,emoji,label,group,subgroup,tags,keywords\n"
             "1F600,😀,grinning face,smileys,face-smiling,face|grin|happy,happy|joy\n"
             "1F622,😢,crying face,smileys,face-concerned,cry|sad|tear,sad|tears\n")


def _emoji_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "images" / "noto").mkdir(parents=True)
    (src / "emoji.csv").write_text(EMOJI_CSV, encoding="utf-8")
    for hx in ("1F600", "1F622"):
        Image.new("RGBA", (8, 8), "red").save(src / "images" / "noto" / f"{hx}.png")
    (tmp_path / "secret.txt").write_text("the secret\n", encoding="utf-8")
    return src


def test_emoji_builder_refuses_a_symlinked_image_leading_out_of_the_source(tmp_path, capsys):
    src = _emoji_source(tmp_path)
    (src / "images" / "noto" / "1F622.png").unlink()
    os.symlink(tmp_path / "secret.txt", src / "images" / "noto" / "1F622.png")
    code, _, err = run_main(capsys, "datasets", "build", "emoji-styles", "--source", str(src),
                            "--out", str(tmp_path / "out"), "--param", "n_users=5")
    assert_one_line_error(code, err, "1F622.png", "source file leads outside", str(src))
    assert not (tmp_path / "out" / "images" / "noto" / "1F622.png").exists()


def test_emoji_builder_refuses_a_symlinked_readme_leading_out_of_the_source(tmp_path, capsys):
    src = _emoji_source(tmp_path)
    os.symlink(tmp_path / "secret.txt", src / "README.md")
    code, _, err = run_main(capsys, "datasets", "build", "emoji-styles", "--source", str(src),
                            "--out", str(tmp_path / "out"), "--param", "n_users=5")
    assert_one_line_error(code, err, "README.md", "source file leads outside")
    assert not (tmp_path / "out" / "SOURCE-README.md").exists()


def test_emoji_builder_refuses_a_style_that_climbs_out_and_deletes_nothing(tmp_path, capsys):
    src = _emoji_source(tmp_path)
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "1F600.png").write_bytes(b"keep me")
    (tmp_path / "a" / "b" / "x").mkdir(parents=True)  # where OUT/images/../../x points
    (tmp_path / "a" / "b" / "x" / "1F600.png").write_bytes(b"keep me too")
    out = tmp_path / "a" / "b" / "out"
    code, _, err = run_main(capsys, "datasets", "build", "emoji-styles", "--source", str(src),
                            "--out", str(out), "--param", "styles=../../x")
    assert_one_line_error(code, err, "'../../x' is not a style folder name")
    assert (victim / "1F600.png").read_bytes() == b"keep me"
    assert (tmp_path / "a" / "b" / "x" / "1F600.png").read_bytes() == b"keep me too"


def test_copy_image_never_reads_or_deletes_outside_its_folders(tmp_path):
    from bench.data.source_io import copy_image
    from bench.errors import DatasetError
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(b"a")
    (tmp_path / "victim.png").write_bytes(b"keep")
    with pytest.raises(DatasetError, match="output file leads outside"):
        copy_image(src / "a.png", out / "images" / ".." / ".." / "victim.png", source=src, out=out)
    assert (tmp_path / "victim.png").read_bytes() == b"keep"
    with pytest.raises(DatasetError, match="source file leads outside"):
        copy_image(src / ".." / "victim.png", out / "v.png", source=src, out=out)
    out.mkdir()
    os.symlink(tmp_path, out / "images")  # a symlinked folder inside --out leading out of it
    with pytest.raises(DatasetError, match="output folder leads outside"):
        copy_image(src / "a.png", out / "images" / "victim.png", source=src, out=out)
    assert (tmp_path / "victim.png").read_bytes() == b"keep"
    copy_image(src / "a.png", out / "ok" / "a.png", source=src, out=out)
    assert (out / "ok" / "a.png").read_bytes() == b"a"


def test_sticker_queries_builder_refuses_an_id_that_climbs_out(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "secret.gif").write_bytes(b"GIF89a secret")
    (tmp_path / "q.csv").write_bytes(SQ_HEADER + b'../secret.gif,"hello, hi"\n'
                                     + b'ok.gif,"bye"\n')
    code, _, err = run_main(capsys, "datasets", "build", "sticker-queries", "--source",
                            str(tmp_path / "q.csv"), "--out", str(tmp_path / "out"),
                            "--param", f"images={tmp_path / 'imgs'}")
    assert_one_line_error(code, err, "leads outside")
    assert not list((tmp_path / "out").rglob("secret.gif")) if (tmp_path / "out").exists() \
        else True
