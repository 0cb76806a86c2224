"""Interruptions and re-runs (issue 9).

- ``kill -9`` in the middle of feature extraction leaves a cache that loads, holds only whole
  parts, and a re-run computes exactly the missing stickers, giving what a clean run gives.
  (A Ctrl-C inside the process is tests/test_extract.py::test_interrupted_*_resumes.)
- An unreachable MLflow server is a one-line error before any work; a server that goes away
  mid-run costs the MLflow copy only: results are written locally, the folder is printed, and the
  exit status reflects the retrievers. (A sweep worker killed mid-trial: tests/test_sweep.py.)
- Determinism: the same config and seed give identical metrics and runs, also across processes
  with different hash seeds; builders give identical fingerprints for a seed; seeds are logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw

from bench.data.format import load_dataset, write_dataset
from bench.features.cache import FeatureCache
from bench.features.encoders import StyleStatsEncoder, embed_stickers, make_encoder

from conftest import run_main

REPO = Path(__file__).resolve().parents[1]



def write_config(path: Path, dataset: Path, tmp_path: Path, **extra) -> Path:
    raw = {"name": "interrupt", "seed": 0, "dataset": {"path": str(dataset)},
           "retrievers": [{"name": "bm25"}, {"name": "random", "params": {"seed": 3}}],
           "features": {"ocr": False, "encoder": None}, "report": False,
           "output_dir": str(tmp_path / "out"),
           "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# ---------------------------------------------------------------- kill -9 during extraction

def _image_dataset(root: Path, n: int, captions: bool = False):
    """``n`` small distinct images (colour, shape, optional caption) as a dataset."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["hello", "thanks", "good night", "love you", "why not", "see you"]
    rows = []
    for i in range(n):
        img = Image.new("RGB", (96, 64) if captions else (48, 48), tuple(rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        box = tuple(int(v) for v in sorted(rng.integers(0, 40, 2))) * 2
        draw.ellipse((box[0], box[1], box[0] + 20, box[1] + 20), fill=tuple(rng.integers(0, 256, 3)),
                     outline=(0, 0, 0), width=int(rng.integers(1, 4)))
        if captions:
            draw.rectangle((0, 36, 96, 64), fill=(255, 255, 255))
            draw.text((4, 42), words[i % len(words)], fill=(0, 0, 0))
        img.save(root / "img" / f"{i}.png")
        rows.append({"sticker_id": f"s{i:04d}", "image": f"img/{i}.png"})
    clicks = pd.DataFrame({"user_id": ["u"], "query": ["q"], "sticker_id": ["s0000"], "ts": [1]})
    return write_dataset(root, pd.DataFrame(rows), clicks, {"name": root.name})


# The child process: extracts through the cache, slowed down a little per chunk so the kill
# reliably lands in the middle (real extraction of a large set takes minutes).
CHILD = textwrap.dedent("""
    import sys, time
    from bench.data.format import load_dataset
    from bench.features.cache import FeatureCache
    kind, ds_dir, cache_dir = sys.argv[1:4]
    ds = load_dataset(ds_dir)
    cache = FeatureCache(cache_dir)
    if kind == "embed":
        from bench.features.encoders import StyleStatsEncoder, embed_stickers, make_encoder
        real = StyleStatsEncoder.raw_features
        def slow(self, images):
            time.sleep(0.1)
            return real(self, images)
        StyleStatsEncoder.raw_features = slow
        embed_stickers(ds.stickers, ds.root, make_encoder("style-stats"), cache, ds.fingerprint,
                       workers=1, chunk_size=10, progress=False)
    else:
        from bench.features import ocr_tesseract
        from bench.features.ocr import OcrConfig, ocr_stickers
        real = ocr_tesseract._run_tesseract
        def slow(*a):
            time.sleep(0.1)
            return real(*a)
        ocr_tesseract._run_tesseract = slow
        ocr_stickers(ds, OcrConfig(engine="tesseract", batch=4, workers=1, flatten="white"),
                     cache, progress=False)
    print("finished", flush=True)
""")


def _kill_during_extraction(kind: str, ds_dir: Path, cache_dir: Path, min_parts: int,
                            timeout: float = 60.0) -> int:
    """Start the extraction in a new process group; SIGKILL it once ``min_parts`` parts are in
    the cache. Returns how many parts there were at the kill."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(ds_dir), str(cache_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + timeout
    n = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(list(cache_dir.glob("*/part-*.parquet")))
            if n >= min_parts:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and its tesseract processes
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"extraction ended before the kill: {err[-2000:]}"
    return n


def _check_cache_entry(cache: FeatureCache) -> tuple[str, pd.DataFrame]:
    """The single entry: every part readable, no sticker in two parts."""
    entries = [d for d in cache.root.iterdir() if d.is_dir()]
    assert len(entries) == 1
    parts = sorted(entries[0].glob("part-*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]  # each part is whole (atomic rename)
    ids = [s for f in frames for s in f["sticker_id"]]
    assert len(ids) == len(set(ids))
    loaded = cache.load(entries[0].name)
    assert sorted(loaded["sticker_id"]) == sorted(ids)
    return entries[0].name, loaded


def test_kill_9_during_embedding_then_rerun_computes_only_the_missing(tmp_path, monkeypatch):
    ds = _image_dataset(tmp_path / "ds", 300)
    cache = FeatureCache(tmp_path / "cache")
    _kill_during_extraction("embed", ds.root, cache.root, min_parts=3)
    _, kept = _check_cache_entry(cache)
    n_kept = len(kept)
    assert 0 < n_kept < 300 and n_kept % 10 == 0  # whole chunks only

    encoded: list[int] = []
    real = StyleStatsEncoder.raw_features

    def counting(self, images):
        encoded.append(len(images))
        return real(self, images)

    monkeypatch.setattr(StyleStatsEncoder, "raw_features", counting)
    ds = load_dataset(ds.root)
    details: dict = {}
    vecs, missing = embed_stickers(ds.stickers, ds.root, make_encoder("style-stats"), cache,
                                   ds.fingerprint, workers=1, chunk_size=10, progress=False,
                                   details=details)
    assert details["computed"] == sum(encoded) == 300 - n_kept
    assert missing == 0
    _check_cache_entry(cache)
    clean, _ = embed_stickers(ds.stickers, ds.root, make_encoder("style-stats"), None,
                              workers=1, progress=False)
    np.testing.assert_allclose(vecs, clean, atol=1e-6)
    # a third run does no work at all
    encoded.clear()
    again, _ = embed_stickers(ds.stickers, ds.root, make_encoder("style-stats"), cache,
                              ds.fingerprint, workers=1, chunk_size=10, progress=False)
    assert encoded == [] and np.array_equal(again, vecs)


@pytest.mark.skipif(not __import__("bench.features.ocr", fromlist=["x"]).tesseract_available(),
                    reason="tesseract not installed")
def test_kill_9_during_ocr_then_rerun_computes_only_the_missing(tmp_path, monkeypatch):
    from bench.features import ocr_tesseract as ocr_mod
    from bench.features.ocr import OcrConfig, ocr_stickers
    ds = _image_dataset(tmp_path / "ds", 40, captions=True)
    cache = FeatureCache(tmp_path / "cache")
    _kill_during_extraction("ocr", ds.root, cache.root, min_parts=2)
    _, kept = _check_cache_entry(cache)
    n_kept = len(kept)
    assert 0 < n_kept < 40 and n_kept % 4 == 0

    read: list[int] = []
    real = ocr_mod._run_tesseract

    def counting(list_file, config, n):
        read.append(n)
        return real(list_file, config, n)

    monkeypatch.setattr(ocr_mod, "_run_tesseract", counting)
    cfg = OcrConfig(engine="tesseract", batch=4, workers=1, flatten="white")
    resumed = ocr_stickers(ds, cfg, cache, progress=False)
    assert resumed.attrs["computed"] == sum(read) == 40 - n_kept
    clean = ocr_stickers(ds, cfg, None, progress=False)
    pd.testing.assert_series_equal(resumed["ocr_text"], clean["ocr_text"])
    assert resumed["ocr_text"].str.len().gt(0).sum() >= 30


def test_damaged_cache_part_is_set_aside_and_recomputed(tmp_path, caplog):
    """A part damaged outside the harness (disk full, a torn copy) is not fatal."""
    ds = _image_dataset(tmp_path / "ds", 30)
    cache = FeatureCache(tmp_path / "cache")
    enc = make_encoder("style-stats")
    first, _ = embed_stickers(ds.stickers, ds.root, enc, cache, ds.fingerprint, workers=1,
                              chunk_size=10, progress=False)
    entry = next(d for d in cache.root.iterdir() if d.is_dir())
    part = sorted(entry.glob("part-*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:50])
    details: dict = {}
    again, _ = embed_stickers(ds.stickers, ds.root, enc, cache, ds.fingerprint, workers=1,
                              chunk_size=10, progress=False, details=details)
    assert details["computed"] == 10
    np.testing.assert_allclose(again, first, atol=1e-6)
    assert "unreadable part" in caplog.text
    assert (entry / (part.name + ".corrupt")).exists() and not part.exists()


# ------------------------------------------------------------------------- the tracking server

def test_unreachable_tracking_server_is_a_one_line_error(tiny_dataset, tmp_path, capsys,
                                                         isolated_cache):
    """(The runner-level test is tests/test_runner.py::test_unreachable_..._before_work.)"""
    import bench.runner as runner
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path)
    prepared = []
    real_prepare = runner.prepare

    def prepare(c):
        prepared.append(c)
        return real_prepare(c)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner, "prepare", prepare)
        code, out, err = run_main(capsys, "run", str(cfg), "--tracking-uri",
                                  "http://user:s3cret@127.0.0.1:9")
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: MLflow tracking server http://***@127.0.0.1:9 is unreachable")
    assert "s3cret" not in err and "MLFLOW_TRACKING_URI" in lines[0]
    assert prepared == [] and not (tmp_path / "out").exists()


def test_unreachable_tracking_server_from_a_real_process(tiny_dataset, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, tracking={})
    out = subprocess.run([sys.executable, "-m", "bench", "run", str(cfg)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "error: MLflow tracking server http://127.0.0.1:9 is unreachable" in out.stderr


@pytest.fixture(scope="module")
def shared_mlflow(tmp_path_factory) -> dict:
    """One SQLite store for the tests below that only look at local results (creating a store
    costs seconds)."""
    return {"uri": f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"}


def _server_goes_away(monkeypatch, after_children: int) -> list[str]:
    """From the moment the parent run exists (plus ``after_children`` child runs), every call
    to the MLflow client raises, as if the server had gone away."""
    from bench.tracking import Tracker
    real_start = Tracker.start_run
    created: list[str] = []

    def gone(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    def start_run(self, experiment, run_name, tags=None, parent_run_id=None,
                  reuse_env_run=False, **kwargs):
        run_id = real_start(self, experiment, run_name, tags=tags, parent_run_id=parent_run_id,
                            reuse_env_run=reuse_env_run, **kwargs)
        created.append(run_name)
        if len(created) == 1 + after_children:
            for name in ("log_batch", "create_run", "get_run", "log_artifact", "log_artifacts",
                         "set_terminated", "set_tag", "log_metric", "log_param"):
                monkeypatch.setattr(self._client, name, gone)
        return run_id

    monkeypatch.setattr(Tracker, "start_run", start_run)
    return created


@pytest.mark.parametrize("after_children", [0, 1])
def test_tracking_server_going_away_keeps_local_results(after_children, tiny_dataset, tmp_path,
                                                        capsys, monkeypatch, isolated_cache,
                                                        shared_mlflow):
    created = _server_goes_away(monkeypatch, after_children)
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, tracking=shared_mlflow)
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err  # every retriever succeeded
    assert created[0].startswith("interrupt · ") and len(created) == 1 + after_children
    folder = next((tmp_path / "out").glob("interrupt-*"))
    assert f"warning: MLflow logging failed (ConnectionError: tracking server went away); " \
           f"continuing with local results only in {folder}" in out
    assert f"results: {folder}" in out.splitlines()[-1]
    assert "MLflow:" not in out.splitlines()[-1]
    table = pd.read_csv(folder / "results.csv")
    assert list(table["status"]) == ["ok", "ok"]
    for label in ("bm25", "random"):
        assert (folder / "retrievers" / label / "run.trec").stat().st_size > 0
    assert (folder / "results.md").is_file()


def test_tracking_lost_and_a_failed_retriever_exit_1(tiny_dataset, tmp_path, capsys, monkeypatch,
                                                     isolated_cache, shared_mlflow):
    _server_goes_away(monkeypatch, 0)
    retrievers = [{"name": "bm25", "params": {"fields": ["no_such_field"]}}, {"name": "random"}]
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, tracking=shared_mlflow,
                       retrievers=retrievers)
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 1
    assert "error: retriever bm25 failed: ConfigError" in err and "Traceback" not in err
    folder = next((tmp_path / "out").glob("interrupt-*"))
    assert list(pd.read_csv(folder / "results.csv")["status"]) == ["failed", "ok"]


# ---------------------------------------------------------------------------- determinism

PERSRV_VARIANTS = [{"name": "persrv"}, {"name": "persrv-no-personalization"},
                   {"name": "persrv-no-utility"}, {"name": "persrv-bm25"},
                   {"name": "persrv", "label": "persrv-hdbscan",
                    "params": {"cluster_algorithm": "hdbscan"}},
                   {"name": "random", "params": {"seed": 5}}]


def test_persrv_variants_same_seed_same_results_across_processes(tiny_dataset, tmp_path, capsys,
                                                                 isolated_cache):
    """One run here, one in a fresh process with another hash seed: identical metrics and runs
    (no process-wide cache can carry anything over: caches belong to a run, issue 25)."""
    outs = {}
    for name in ("a", "b"):
        cfg = write_config(tmp_path / f"{name}.yaml", tiny_dataset, tmp_path / name, seed=11,
                           retrievers=PERSRV_VARIANTS, features={"ocr": False, "encoder": "auto"},
                           tracking={"enabled": False})
        if name == "a":
            code, _, err = run_main(capsys, "run", str(cfg))
            assert code == 0, err
        else:
            proc = subprocess.run([sys.executable, "-m", "bench", "-q", "run", str(cfg)],
                                  capture_output=True, text=True, cwd=REPO, timeout=300,
                                  env={**os.environ, "PYTHONHASHSEED": "12345"})
            assert proc.returncode == 0, proc.stderr[-3000:]
        outs[name] = next((tmp_path / name / "out").glob("interrupt-*"))
    ta, tb = (pd.read_csv(outs[n] / "results.csv") for n in ("a", "b"))
    cols = [c for c in ta.columns if "_at_" in c]
    assert list(ta["status"]) == ["ok"] * len(PERSRV_VARIANTS)
    pd.testing.assert_frame_equal(ta[["retriever"] + cols], tb[["retriever"] + cols])
    for spec in PERSRV_VARIANTS:
        label = spec.get("label", spec["name"])
        trec = [(outs[n] / "retrievers" / label / "run.trec").read_bytes() for n in ("a", "b")]
        assert trec[0] == trec[1] and trec[0], label
    # the variants differ from each other (the comparison is not between identical lists)
    assert len({(outs["a"] / "retrievers" / s.get("label", s["name"]) / "run.trec").read_bytes()
                for s in PERSRV_VARIANTS}) >= 4


SQ_CSV = ("sticker_id,labeled_queries\n"
          + "".join(f'{1000000000000000100 + i}.png,"q{i % 7}, topic {i % 3}, w{i}"\n'
                    for i in range(40)))


def test_builders_same_seed_same_fingerprint(tmp_path):
    """Seeded builders: same seed -> identical fingerprint (also in another process with another
    hash seed); another seed -> another fingerprint. (Same-process synthetic: also
    tests/test_data_builders.py::test_synthetic_is_deterministic.)"""
    from bench.data.builders import build_dataset
    params = {"n_stickers": 30, "image_size": 48, "n_users": 20}
    a = build_dataset("synthetic", None, tmp_path / "a", params)
    code = ("import sys, json; from bench.data.builders import build_dataset; "
            f"ds = build_dataset('synthetic', None, sys.argv[1], {params!r}); "
            "print(ds.fingerprint)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], capture_output=True,
                          text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": "999"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == a.fingerprint
    c = build_dataset("synthetic", None, tmp_path / "c", {**params, "seed": 1})
    assert c.fingerprint != a.fingerprint

    (tmp_path / "sq.csv").write_text(SQ_CSV, encoding="utf-8")
    sq = [build_dataset("sticker-queries", tmp_path / "sq.csv", tmp_path / f"sq{i}",
                        {"n_users": 15, "seed": seed}) for i, seed in enumerate((4, 4, 5))]
    assert sq[0].fingerprint == sq[1].fingerprint != sq[2].fingerprint
    assert sq[0].meta["simulator"]["seed"] == 4 and sq[2].meta["simulator"]["seed"] == 5


def test_seeds_and_data_report_are_logged(tiny_dataset, tmp_path, capsys, isolated_cache):
    import mlflow
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, seed=7, retrievers=[
        {"name": "random", "params": {"seed": 3}}, {"name": "persrv", "params": {"seed": 2}}],
        features={"ocr": False, "encoder": "auto"})
    code, _, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("persrv.kind") == "benchmark")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("persrv.kind") == "retriever"}
    assert parent.data.params["config.seed"] == "7"
    assert children["random"].data.params["seed"] == "3"
    assert children["persrv"].data.params["seed"] == "2"
    assert parent.data.params["features.encoder"] == "precomputed"
    assert parent.data.params["dataset_skipped"] == "{}"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "data_report.json" in artifacts


# ==================================================================== hardening (issue 17)
# SIGTERM, kill -9, concurrent first runs, status.json and what `report` makes of it, faults.

SLOW_RUN = textwrap.dedent('''
    """`persrv-bench run` with one extra retriever, `sleepy`, whose search takes minutes: a real
    process for a real signal (the harness code is unchanged; only the registry has one more)."""
    import sys, time
    from bench.registry import register
    from baselines.random import RandomRetriever

    @register("sleepy")
    class Sleepy(RandomRetriever):
        def search(self, requests, k):
            for _ in range(1200):
                time.sleep(0.1)
            return super().search(requests, k)

    from bench.cli import main
    main(["run", *sys.argv[1:]])
''')


def _slow_run(tmp_path: Path, dataset: Path, db: Path) -> tuple[subprocess.Popen, Path]:
    """Start a run (bm25, then sleepy) in a subprocess; returns it once the run folder's
    status.json says running and the first retriever's results are written."""
    (tmp_path / "slow_run.py").write_text(SLOW_RUN, encoding="utf-8")
    cfg = write_config(tmp_path / "c.yaml", dataset, tmp_path,
                       retrievers=[{"name": "bm25"}, {"name": "sleepy"}],
                       tracking={"uri": f"sqlite:///{db}", "experiment": "interrupt"})
    proc = subprocess.Popen([sys.executable, str(tmp_path / "slow_run.py"), str(cfg)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PERSRV_BENCH_QUIET": "1"})
    deadline = time.time() + 240
    while time.time() < deadline:
        found = list((tmp_path / "out").glob("interrupt-*/retrievers/bm25/per_request.parquet"))
        if found and proc.poll() is None:
            time.sleep(1.0)  # bm25's child run is being logged; sleepy starts next
            return proc, found[0].parents[2]
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run did not start in time")


def _parent_status(db: Path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("interrupt")
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` IS NULL")
    return {r.info.run_id: r.info.status for r in runs}


def _status(folder: Path) -> dict:
    import json
    return json.loads((folder / "status.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_sigterm_marks_the_folder_and_the_parent_killed_and_report_says_incomplete(
        tiny_dataset, tmp_path, isolated_cache):
    db = tmp_path / "mlflow.db"
    proc, folder = _slow_run(tmp_path, tiny_dataset, db)
    assert _status(folder)["status"] == "running"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] in ("interrupted", "aborted")
    assert _status(folder)["status"] == "killed"
    assert list(_parent_status(db).values()) == ["KILLED"]
    from bench.report.build import report_folder
    written = report_folder(folder, out=tmp_path / "report", n_boot=50, n_perm=50)
    summary = written["summary.md"].read_text(encoding="utf-8")
    assert summary.startswith("**incomplete: 1 of 2 retrievers have results "
                              "(status.json: killed)**")
    assert "incomplete: 1 of 2 retrievers" in written["report.md"].read_text(encoding="utf-8")


@pytest.mark.slow
def test_kill_9_leaves_an_orphan_that_the_next_run_marks_killed(tiny_dataset, tmp_path, capsys,
                                                                isolated_cache):
    db = tmp_path / "mlflow.db"
    proc, folder = _slow_run(tmp_path, tiny_dataset, db)
    proc.kill()
    proc.communicate(timeout=60)
    assert _status(folder)["status"] == "running"  # nothing could mark it
    assert list(_parent_status(db).values()) == ["RUNNING"]
    cfg = write_config(tmp_path / "again.yaml", tiny_dataset, tmp_path / "again",
                       tracking={"uri": f"sqlite:///{db}", "experiment": "interrupt"})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    assert "marked 1 earlier run(s) KILLED (their process is gone)" in out
    assert sorted(_parent_status(db).values()) == ["FINISHED", "KILLED"]
    assert _status(folder)["status"] == "killed"


@pytest.mark.slow
def test_two_concurrent_first_runs_on_a_fresh_sqlite_store_both_log(tiny_dataset, tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"
    db.parent.mkdir()
    procs = []
    for i in range(2):
        cfg = write_config(tmp_path / f"c{i}.yaml", tiny_dataset, tmp_path / f"r{i}",
                           tracking={"uri": f"sqlite:///{db}", "experiment": "interrupt"})
        procs.append(subprocess.Popen([sys.executable, "-m", "bench", "run", str(cfg)], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PERSRV_BENCH_QUIET": "1"}))
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "MLflow logging failed" not in out + err and "Traceback" not in err, out + err
    assert sorted(_parent_status(db).values()) == ["FINISHED", "FINISHED"]


def test_status_json_is_complete_after_a_run(tiny_dataset, tmp_path, capsys, isolated_cache,
                                             shared_mlflow):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, tracking=shared_mlflow)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    folder = next((tmp_path / "out").glob("interrupt-*"))
    assert _status(folder)["status"] == "complete" and _status(folder)["failed"] == []


def test_ctrl_c_mid_run_marks_the_folder_and_the_parent_killed(tiny_dataset, tmp_path, capsys,
                                                               monkeypatch, isolated_cache):
    import bench.runner as runner
    db = tmp_path / "mlflow.db"
    real = runner.evaluate_retriever
    calls = []

    def interrupted(spec, *args, **kwargs):
        calls.append(spec.display)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_retriever", interrupted)
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path,
                       tracking={"uri": f"sqlite:///{db}", "experiment": "interrupt"})
    code, _, err = run_main(capsys, "run", str(cfg))
    assert code == 130 and err.strip() in ("interrupted", "aborted")  # click's word for Ctrl-C
    folder = next((tmp_path / "out").glob("interrupt-*"))
    assert _status(folder)["status"] == "killed"
    assert list(_parent_status(db).values()) == ["KILLED"]


def _disk_full_after(monkeypatch, n_files: int) -> None:
    """From the ``n_files``-th run.trec on, writing under the run folder fails with ENOSPC."""
    import errno

    from bench.retrieval import Run
    real = Run.save_trec
    seen = []

    def save_trec(self, path, *args, **kwargs):
        seen.append(path)
        if len(seen) >= n_files:
            Path(path).write_text("q1 Q0 a 1", encoding="utf-8")  # a torn first write
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *args, **kwargs)

    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if seen and len(seen) >= n_files and self.name == "error.txt":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Run, "save_trec", save_trec)
    monkeypatch.setattr(Path, "write_text", write_text)


def test_disk_full_mid_run_is_one_line_naming_the_path_and_keeps_what_was_done(
        tiny_dataset, tmp_path, capsys, monkeypatch, isolated_cache):
    _disk_full_after(monkeypatch, 2)
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, tracking={"enabled": False})
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ")
    assert "error.txt: No space left on device" in lines[0] and "marked in status.json" in lines[0]
    folder = next((tmp_path / "out").glob("interrupt-*"))
    assert _status(folder)["status"] == "failed"
    assert (folder / "retrievers" / "bm25" / "per_request.parquet").is_file()  # kept


def test_read_only_feature_cache_lacking_a_feature_is_one_line(tmp_path, capsys, monkeypatch,
                                                               isolated_cache):
    """A cache on a read-only file system (simulated: the tests run as root, whom chmod does not
    stop) holding no entry for this dataset: one line naming the folder, no traceback."""
    import errno
    import tempfile
    from conftest import make_tiny_frames
    stickers, clicks = make_tiny_frames()
    root = tmp_path / "ds"
    (root / "img").mkdir(parents=True)
    for i, sid in enumerate(stickers["sticker_id"]):
        Image.new("RGB", (16, 16), (i * 15, 80, 200)).save(root / "img" / f"{sid}.png")
    stickers = stickers.drop(columns=["embedding"]).assign(
        image=[f"img/{sid}.png" for sid in stickers["sticker_id"]])
    ds = write_dataset(root, stickers, clicks, {"name": "imgs"})
    cache_root = str(isolated_cache)
    real_mkdir, real_mkstemp = Path.mkdir, tempfile.mkstemp

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(cache_root) and not self.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, **kwargs):
        if str(kwargs.get("dir", "")).startswith(cache_root):
            raise OSError(errno.EROFS, "Read-only file system", str(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    cfg = write_config(tmp_path / "c.yaml", ds.root, tmp_path, tracking={"enabled": False},
                       features={"ocr": False, "encoder": "style-stats"},
                       retrievers=[{"name": "random"}])
    code, out, err = run_main(capsys, "run", str(cfg))
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: feature cache {cache_root}")
    assert "cannot be written (Read-only file system)" in lines[0]
    assert "PERSRV_BENCH_CACHE" in lines[0]
