"""Helpers of the bad-input tests (tests/test_bad_input_*.py, issue 9; split by area in
issue 25)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from bench.data.format import write_dataset
from bench.retrieval import TrainView

from conftest import make_tiny_frames

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------- helpers


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout,
                          env={**os.environ, "PERSRV_BENCH_QUIET": "1"})


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2, stderr is exactly one ``error: ...`` line holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tiny_view(extra_clicks: pd.DataFrame | None = None, embeddings: bool = True) -> TrainView:
    """TrainView over the conftest tiny corpus (15 stickers, 12 users), all clicks as history."""
    stickers, clicks = make_tiny_frames()
    emb = np.stack([np.asarray(e, dtype=np.float32) for e in stickers["embedding"]])
    if extra_clicks is not None:
        clicks = pd.concat([clicks, extra_clicks], ignore_index=True)
    return TrainView(stickers=stickers.drop(columns=["embedding", "gt_style", "gt_topic"]),
                     clicks=clicks, embeddings=emb if embeddings else None)


def write_config(path: Path, dataset: Path | str, tmp_path: Path, **extra) -> Path:
    raw = {"name": "bad-input", "dataset": {"path": str(dataset)},
           "retrievers": [{"name": "bm25"}, {"name": "popularity"}],
           "features": {"ocr": False, "encoder": None}, "report": False,
           "output_dir": str(tmp_path / "out"), "tracking": {"enabled": False}}
    for key, value in extra.items():
        raw[key] = value
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def dataset_with(tmp_path: Path, name: str, clicks: pd.DataFrame | None = None) -> Path:
    """The tiny dataset written as ``name``; ``clicks`` (possibly invalid) then replace its
    interactions file, as a hand-edited or foreign dataset would."""
    st, cl = make_tiny_frames()
    write_dataset(tmp_path / name, st, cl, {"name": name})
    if clicks is not None:
        clicks.to_parquet(tmp_path / name / "interactions.parquet", index=False)
    return tmp_path / name


# ------------------------------------------------------ source files of the builders

SQ_HEADER = b"sticker_id,labeled_queries\n"
EMOJI_HEADER = b"hexcode,label,group,subgroup,tags,keywords\n"
PERSRV_HEADER = b"uid,query,docid\n"


def _emoji_folder(root: Path, csv: bytes) -> Path:
    (root / "images" / "noto").mkdir(parents=True)
    Image.new("RGBA", (8, 8)).save(root / "images" / "noto" / "1F600.png")
    (root / "emoji.csv").write_bytes(csv)
    return root


# (builder, files {name: bytes}, source, params, words the one-line error must hold)
