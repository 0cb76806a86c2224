"""`persrv-bench describe CONFIG --shard I/N` (bench/vlm/describe.py describe_stickers): two shard
workers running at the same time on one feature cache write, byte for byte, the descriptions of a
single unsharded run, into the same cache entry; a rerun of a shard, and an unsharded describe
after all shards, generate nothing; a bad shard and a shard with DDP are refused in one line.

Tiny random LLaVA on CPU (bench/vlm/tiny.py), the dataset of tests/test_vlm.py (10 stickers: 8
drawn, one corrupt PNG, one without an image)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("lightning")

import bench.vlm.describe as describe_mod  # noqa: E402
from bench.errors import ConfigError  # noqa: E402
from bench.features.cache import CACHE_ENV, FeatureCache  # noqa: E402
from bench.vlm.describe import describe_stickers  # noqa: E402

from bad_input_helpers import assert_one_line_error  # noqa: E402
from conftest import run_main  # noqa: E402
from test_vlm import TINY_CONFIG, make_vlm_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PERSRV_BENCH_QUIET", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("describe-shard") / "vlm-ds"
    make_vlm_dataset(root)
    return root


@pytest.fixture(scope="module")
def sharded(dataset, tmp_path_factory) -> tuple[Path, list[str]]:
    """Shards 0/2 and 1/2 of `describe`, two processes at once on one cache folder
    ($PERSRV_BENCH_CACHE): (the folder, each worker's output)."""
    tmp = tmp_path_factory.mktemp("shared")
    shared = tmp / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PERSRV_BENCH_QUIET": "1", "OMP_NUM_THREADS": "1",
           CACHE_ENV: str(shared),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "-q", "describe", str(TINY_CONFIG),
                               "--dataset", str(dataset), "--shard", f"{i}/2", "--show", "0"],
                              cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=540) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    return shared, [out for out, _ in outs]


def _entry(cache: Path) -> tuple[str, pd.DataFrame]:
    """The cache's one entry: its key and rows sorted by sticker id."""
    (d,) = [p for p in cache.iterdir() if p.is_dir()]
    rows = FeatureCache(cache).load(d.name)
    return d.name, rows.sort_values("sticker_id").reset_index(drop=True)


def _no_model(**_):
    raise AssertionError("every sticker is cached: no model may be loaded")


def test_two_concurrent_shards_write_what_one_unsharded_run_writes(sharded, dataset, tmp_path,
                                                                   capsys):
    shared, outs = sharded
    assert outs[0].startswith("shard 0/2, 5 stickers: 5 generated, 0 from cache, 0 without")
    assert outs[1].startswith("shard 1/2, 5 stickers: 3 generated, 0 from cache, 2 without")

    single = tmp_path / "single"
    code, out, err = run_main(capsys, "-q", "describe", str(TINY_CONFIG), "--dataset",
                              str(dataset), "--cache-dir", str(single), "--show", "0")
    assert code == 0, err
    assert out.startswith("10 stickers: 8 generated, 0 from cache, 2 without image")

    key_u, union = _entry(shared)
    key_1, alone = _entry(single)
    assert key_u == key_1  # the same entry as an unsharded run
    assert union["sticker_id"].tolist() == alone["sticker_id"].tolist() and len(union) == 10
    for col in ("description", "keywords"):
        got = [t.encode("utf-8", "surrogatepass") for t in union[col]]
        want = [t.encode("utf-8", "surrogatepass") for t in alone[col]]
        assert got == want, col
    assert (union["description"].str.len() > 0).sum() == 8  # broken and noimg: ""
    # each worker wrote its own part (part-<n>-<host><pid>-<uuid>), neither replaced the other's
    parts = sorted((shared / key_u).glob("part-*.parquet"))
    assert len(parts) == 2 and len({p.stem.split("-")[2] for p in parts}) == 2


def test_a_shard_rerun_and_a_later_unsharded_describe_generate_nothing(sharded, dataset,
                                                                        monkeypatch, capsys):
    shared, _ = sharded
    monkeypatch.setattr(describe_mod, "_build_predictor", _no_model)
    code, out, err = run_main(capsys, "-q", "describe", str(TINY_CONFIG), "--dataset",
                              str(dataset), "--cache-dir", str(shared), "--shard", "1/2")
    assert code == 0, err
    assert out.startswith("shard 1/2, 5 stickers: 0 generated, 5 from cache, 0 without image")
    assert [line.split("\t")[0].strip() for line in out.splitlines()[1:]] == [
        "blue-square", "yellow-circle", "yellow-square", "broken", "noimg"]

    stats: dict = {}
    frame = describe_stickers(dataset, {"tiny": True}, None, cache=FeatureCache(shared),
                              accelerator="cpu", stats=stats)
    assert stats["generated"] == 0 and stats["cached"] == 10 and stats["shard"] is None
    assert len(frame) == 10 and frame.columns.tolist() == ["sticker_id", "description",
                                                           "keywords"]


def test_a_bad_shard_is_one_line(dataset, tmp_path, capsys):
    code, out, err = run_main(capsys, "describe", str(TINY_CONFIG), "--dataset", str(dataset),
                              "--cache-dir", str(tmp_path / "c"), "--shard", "2/2")
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "rror" in line]
    assert len(errors) == 1 and "0 <= I < N" in errors[0] and "'2/2'" in errors[0], err
    assert not (tmp_path / "c").exists()


def test_a_shard_with_ddp_is_refused(dataset, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "c"
    code, _, err = run_main(capsys, "describe", str(TINY_CONFIG), "--dataset", str(dataset),
                            "--cache-dir", str(cache), "--shard", "0/2", "--devices", "2")
    assert_one_line_error(code, err, "--shard 0/2", "devices=2", "DDP")
    for kw in ({"devices": 2}, {"devices": [0, 1]}, {"devices": -1},
               {"devices": 1, "strategy": "ddp"}):
        with pytest.raises(ConfigError, match="DDP"):
            describe_stickers(dataset, {"tiny": True}, cache=FeatureCache(cache), shard=(1, 2),
                              **kw)
    assert not cache.exists()

    class _Trainer:  # devices="auto" that turned out to be several GPUs
        world_size = 2

    class _Predictor:
        trainer = _Trainer()

    monkeypatch.setattr(describe_mod, "_build_predictor", lambda **_: _Predictor())
    with pytest.raises(ConfigError, match="2 processes"):
        describe_stickers(dataset, {"tiny": True}, cache=FeatureCache(cache), shard=(1, 2),
                          devices="auto", accelerator="cpu")


def test_an_empty_shard_returns_no_rows_and_loads_no_model(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(describe_mod, "_build_predictor", _no_model)
    stats: dict = {}
    frame = describe_stickers(dataset, {"tiny": True}, cache=FeatureCache(tmp_path / "c"),
                              accelerator="cpu", limit=1, shard=(0, 2), stats=stats)
    assert frame.columns.tolist() == ["sticker_id", "description", "keywords"] and frame.empty
    assert stats["stickers"] == 0 and stats["generated"] == 0 and stats["shard"] == "0/2"
