"""`persrv-bench features CONFIG --shard I/N` (bench/features/extract.py fill_features,
bench/features/image_pipeline.py): two shard workers running at the same time on one feature
cache produce, byte for byte, the features of a single worker; a run then reads their union and
computes nothing; shards resume; worker processes, threads and one worker agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.features import image_pipeline
from bench.features.cache import FeatureCache
from bench.features.config import FeaturesConfig
from bench.features.extract import attach_features, fill_features
from bench.features.image_pipeline import shard_ids

pytest.importorskip("rapidocr_onnxruntime")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from bench.perf.features_bench import render_dataset
    return render_dataset(tmp_path_factory.mktemp("shard") / "ds", 14, seed=3)


def _config(tmp: Path, ds, cache: Path) -> Path:
    cfg = {"name": "shard-test", "dataset": {"path": str(ds.root)},
           "features": {"encoder": "style-stats", "workers": 1, "cache_dir": str(cache),
                        "descriptions": None},
           "retrievers": [{"name": "random"}]}
    path = tmp / f"{cache.name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _entries(cache: Path) -> dict[str, pd.DataFrame]:
    """Every entry of a cache by extractor, rows sorted by sticker id, timing column dropped."""
    out = {}
    for d in sorted(p for p in cache.iterdir() if p.is_dir()):
        frame = FeatureCache(cache).load(d.name)
        out[d.name.split("-")[0]] = frame.drop(columns=["ocr_seconds"], errors="ignore") \
            .sort_values("sticker_id").reset_index(drop=True)
    return out


def _same_bytes(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert a["sticker_id"].tolist() == b["sticker_id"].tolist()
    for col in a.columns:
        if col == "vector":
            va, vb = np.stack(a[col].to_list()), np.stack(b[col].to_list())
            assert va.dtype == vb.dtype == np.float32 and va.tobytes() == vb.tobytes(), col
        elif a[col].dtype.kind == "f":
            assert a[col].to_numpy().tobytes() == b[col].to_numpy().tobytes(), col
        else:
            assert a[col].tolist() == b[col].tolist(), col


def test_shard_ids_partition_every_sticker_once():
    ids = [f"s{i}" for i in range(10)]
    parts = [shard_ids(ids, (i, 3)) for i in range(3)]
    assert [len(p) for p in parts] == [3, 4, 3]
    assert sum(parts, []) == ids
    assert shard_ids(ids, (0, 1)) == ids
    assert shard_ids(ids[:1], (1, 2)) == ["s0"] and shard_ids(ids[:1], (0, 2)) == []
    from bench.errors import ConfigError
    with pytest.raises(ConfigError, match="0 <= I < N"):
        shard_ids(ids, (3, 3))


def test_two_concurrent_shard_workers_equal_one_worker_byte_for_byte(dataset, tmp_path):
    shared, single = tmp_path / "shared", tmp_path / "single"
    cfg = _config(tmp_path, dataset, shared)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "features", str(cfg),
                               "--shard", f"{i}/2"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for i, out in enumerate(outs):
        assert f"shard {i}/2" in out and "stickers: 7" in out and "ocr_computed: 7" in out, out

    fcfg = FeaturesConfig(encoder="style-stats", workers=1, cache_dir=str(single),
                          descriptions=None)
    alone = fill_features(dataset, fcfg)
    assert alone["ocr_computed"] == alone["embed_computed"] == 14
    got, want = _entries(shared), _entries(single)
    assert sorted(got) == sorted(want) == ["embeddings", "ocr"]
    for name in want:
        _same_bytes(got[name], want[name])
    # both workers wrote parts of each entry (unique names, none replaced the other's)
    for d in (p for p in shared.iterdir() if p.is_dir()):
        assert len(list(d.glob("part-*.parquet"))) == 2
    assert any(t.strip() for t in got["ocr"]["ocr_text"])  # the captions were read

    # a run reads the union and computes nothing; same features as the single worker's cache
    st_u, emb_u, rep = attach_features(dataset, fcfg.model_copy(update={"cache_dir": str(shared)}),
                                       progress=False)
    assert rep["ocr_computed"] == 0 and rep["embed_computed"] == 0
    st_1, emb_1, _ = attach_features(dataset, fcfg, progress=False)
    assert st_u["ocr_text"].tolist() == st_1["ocr_text"].tolist()
    assert emb_u.tobytes() == emb_1.tobytes()


def test_a_shard_resumes_where_it_stopped(dataset, tmp_path):
    cache = tmp_path / "cache"
    fcfg = FeaturesConfig(encoder="style-stats", workers=1, cache_dir=str(cache),
                          descriptions=None)
    first = fill_features(dataset, fcfg, shard=(1, 2), progress=False)
    assert first["stickers"] == 7 and first["ocr_computed"] == first["embed_computed"] == 7
    again = fill_features(dataset, fcfg, shard=(1, 2), progress=False)
    assert again["ocr_computed"] == again["embed_computed"] == 0
    # the other shard and a full run then only compute what is missing
    full = fill_features(dataset, fcfg, progress=False)
    assert full["ocr_computed"] == full["embed_computed"] == 7


def test_processes_threads_and_one_worker_give_the_same_bytes(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(image_pipeline, "TASK_IMAGES", 4)  # several tasks for 14 images
    monkeypatch.setattr(image_pipeline, "PROCESS_MIN_IMAGES", 8)
    results = {}
    for mode, workers in (("threads", 1), ("threads", 2), ("processes", 2)):
        cache = tmp_path / f"{mode}{workers}"
        fcfg = FeaturesConfig(encoder="style-stats", workers=workers, parallel=mode,
                              cache_dir=str(cache), descriptions=None)
        rep = fill_features(dataset, fcfg, progress=False)
        assert rep["parallel"] == ("inline" if workers == 1 else mode)
        assert set(rep["image_stages"]) == {"decode", "detect", "recognise", "embed"}
        results[(mode, workers)] = _entries(cache)
    base = results[("threads", 1)]
    for other in results.values():
        for name in base:
            _same_bytes(other[name], base[name])


def test_cli_rejects_a_bad_shard(tmp_path, dataset):
    from click.testing import CliRunner

    from bench.cli.main import cli
    cfg = _config(tmp_path, dataset, tmp_path / "c")
    res = CliRunner().invoke(cli, ["features", str(cfg), "--shard", "2/2"])
    assert res.exit_code == 2 and "0 <= I < N" in res.output
