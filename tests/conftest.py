"""Shared fixtures: small datasets made in the test, and the location of ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PERSRV_BENCH_QUIET", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent (a plain clone)."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is only beside a workspace checkout)")
    return p


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``persrv-bench ARGS`` in this process: (exit code, stdout, stderr)."""
    from bench.cli import main
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


TOPICS = {
    "happy": ["happy smile joy", ["so happy", "joyful", "smile"]],
    "sad": ["sad tears cry", ["crying", "so sad", "tears"]],
    "angry": ["angry mad rage", ["furious", "so mad", "rage"]],
    "love": ["love heart kiss", ["i love you", "hearts", "kiss"]],
    "sleep": ["sleep tired bed", ["sleepy", "good night", "tired"]],
}
STYLES = ["flat", "line", "3d"]


def make_tiny_frames(seed: int = 0, n_users: int = 12, clicks_per_user: int = 8):
    """Stickers (topic x style, text column + embedding) and chronological clicks."""
    rng = np.random.default_rng(seed)
    stickers = []
    for t_i, (topic, (text, _)) in enumerate(TOPICS.items()):
        for s_i, style in enumerate(STYLES):
            emb = np.zeros(8, dtype=np.float32)
            emb[s_i] = 1.0
            emb[3 + t_i % 5] = 0.3
            emb += rng.normal(0, 0.05, 8).astype(np.float32)
            emb /= np.linalg.norm(emb)
            stickers.append({"sticker_id": f"{topic}-{style}", "image": None, "text": text,
                             "gt_style": style, "gt_topic": topic, "embedding": emb.tolist()})
    stickers = pd.DataFrame(stickers)
    rows = []
    for u in range(n_users):
        style = STYLES[u % len(STYLES)]
        ts = 0
        for c in range(clicks_per_user):
            topic = list(TOPICS)[int(rng.integers(len(TOPICS)))]
            query = TOPICS[topic][1][int(rng.integers(3))]
            ts += 1
            rows.append({"user_id": f"u{u}", "query": query, "sticker_id": f"{topic}-{style}",
                         "ts": ts})
    return stickers, pd.DataFrame(rows)


@pytest.fixture
def tiny_dataset(tmp_path):
    """A written, validated canonical dataset directory with 15 stickers and 12 users."""
    from bench.data.format import write_dataset
    stickers, clicks = make_tiny_frames()
    write_dataset(tmp_path / "tiny", stickers, clicks,
                  {"name": "tiny", "source": "test", "license": "CC0"})
    return tmp_path / "tiny"


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Feature cache and built datasets under tmp_path."""
    monkeypatch.setenv("PERSRV_BENCH_CACHE", str(tmp_path / "cache" / "features"))
    return tmp_path / "cache"
