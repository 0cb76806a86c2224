"""Issue 26, class 5: one error boundary for every command (bench/cli/boundary.py).

Any exception is one line on stderr naming the file / field where known (no traceback), the
traceback goes to a log file (the run folder's traceback.log inside a run), ``--debug`` prints
it; a full disk and an encoding the locale lacks name the path and keep what was written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSRV_BENCH_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _config(tmp_path: Path, dataset: Path, **extra) -> Path:
    cfg = {"name": "boundary", "dataset": {"path": str(dataset)}, "ks": [1, 5],
           "retrievers": [{"name": "random"}], "features": {"ocr": False},
           "output_dir": str(tmp_path / "out"), "report": False,
           "tracking": {"enabled": False}, **extra}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_deep_yaml_is_one_line_naming_the_config(tmp_path, capsys, log_dir):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\ndataset: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(deep))
    line = _one_line(err)
    # refused by the YAML reader's depth bound (bench/yaml_load.py) before any recursion: a
    # config error, so no traceback to log
    assert code == 2 and "nested deeper than" in line and str(deep) in line
    assert "RecursionError" not in err


@pytest.mark.parametrize("argv, words", [
    (["features", "experiments/quickstart.yaml", "--shard", "3/2"], ["--shard", "3/2"]),
    (["perf", "--stage", "features", "--images", "3"], ["--images", "x>=10"]),
    (["nosuch-command"], ["nosuch-command"])])
def test_a_bad_option_value_is_one_line_with_the_help_to_read(capsys, log_dir, argv, words):
    code, _, err = run_main(capsys, *argv)
    line = _one_line(err)
    assert code == 2 and line.startswith("error: ") and "Usage:" not in err
    assert all(w in line for w in words) and "--help'" in line


def test_inf_in_an_id_column_is_one_line(tiny_dataset, capsys, log_dir):
    import pandas as pd
    path = tiny_dataset / "interactions.parquet"
    clicks = pd.read_parquet(path)
    clicks["user_id"] = [float("inf")] + [1.0] * (len(clicks) - 1)
    clicks.to_parquet(path, index=False)
    code, _, err = run_main(capsys, "datasets", "describe", str(tiny_dataset))
    line = _one_line(err)
    assert code == 2 and "interactions.parquet" in line and "row 0" in line and \
        "'user_id'" in line and "inf" in line


@pytest.mark.parametrize("damage,status", [("parquet", 2), ("columns", 1)])
def test_report_on_a_damaged_run_folder_is_one_line(tiny_dataset, tmp_path, capsys, log_dir,
                                                    isolated_cache, damage, status):
    """ArrowInvalid is a damaged input (exit 2); a KeyError may be a bug (exit 1): both are
    one line naming the folder, with the traceback in the log directory."""
    code, _, err = run_main(capsys, "run", str(_config(tmp_path, tiny_dataset)))
    assert code == 0, err
    folder = next(p for p in (tmp_path / "out").iterdir() if (p / "status.json").is_file())
    if damage == "parquet":
        for path in folder.rglob("per_request.parquet"):
            path.write_bytes(b"PAR1 this is not parquet PAR1")
    else:
        (folder / "results.csv").write_text("nothing,useful\n1,2\n", encoding="utf-8")
        for path in folder.rglob("per_request.parquet"):
            import pandas as pd
            pd.DataFrame({"x": [1]}).to_parquet(path)
    code, out, err = run_main(capsys, "report", str(folder))
    line = _one_line(err)
    assert code == status and str(folder) in line, line
    assert ("ArrowInvalid" if damage == "parquet" else "KeyError: missing key") in line
    assert len(list(log_dir.glob("persrv-bench-*.log"))) == 1


def test_unexpected_error_in_a_run_saves_its_traceback_in_the_run_folder(
        tiny_dataset, tmp_path, capsys, log_dir, isolated_cache, monkeypatch):
    import bench.experiment

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(bench.experiment, "write_tables", broken)
    config = _config(tmp_path, tiny_dataset)
    code, _, err = run_main(capsys, "run", str(config))
    line = _one_line(err)
    folder = next(p for p in (tmp_path / "out").iterdir() if (p / "status.json").is_file())
    assert code == 1 and "ZeroDivisionError: planted bug" in line
    assert f"traceback: {folder / 'traceback.log'}" in line
    assert "planted bug" in (folder / "traceback.log").read_text()
    assert json.loads((folder / "status.json").read_text())["status"] == "failed"
    assert (folder / "retrievers" / "random" / "run.trec").is_file()  # what was written is kept
    code, _, err = run_main(capsys, "--debug", "run", str(config))
    assert code == 1 and "Traceback (most recent call last)" in err and "planted bug" in err


def test_disk_full_names_the_path_and_keeps_what_was_written(tmp_path, capsys, log_dir,
                                                              monkeypatch):
    import bench.data.integrity as integrity
    real = integrity._atomic_write_bytes

    def full(path, write):
        if Path(path).name == "interactions.parquet":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write)

    monkeypatch.setattr(integrity, "_atomic_write_bytes", full)
    import bench.data.format as fmt
    monkeypatch.setattr(fmt, "_atomic_write_bytes", full)
    out = tmp_path / "built"
    code, _, err = run_main(capsys, "datasets", "build", "synthetic", "--out", str(out),
                            "--param", "n_stickers=30", "--param", "n_users=5",
                            "--param", "images=false")
    line = _one_line(err)
    assert code == 2 and f"cannot write {out / 'interactions.parquet'}" in line
    assert "no space left on device" in line and "kept" in line
    assert (out / "stickers.parquet").is_file()  # written before the disk filled


@pytest.mark.slow
def test_a_latin1_terminal_and_an_ascii_file_system(tiny_dataset, tmp_path, isolated_cache):
    """PYTHONIOENCODING=latin-1: a Chinese run name prints escaped; an ASCII file-system
    encoding (LC_ALL=C, PYTHONUTF8=0): the name is refused in one line before any work."""
    config = _config(tmp_path, tiny_dataset, name="测试-run")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "latin-1",
           "PERSRV_BENCH_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(config)], env=env,
                          capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("latin-1")[-2000:]
    assert b"\\u6d4b\\u8bd5-run" in proc.stdout
    assert any(p.name.startswith("测试-run-") for p in (tmp_path / "out").iterdir())
    env.update({"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""})
    env.pop("LANG", None)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(config)], env=env,
                          capture_output=True, cwd=tmp_path, timeout=300)
    err = proc.stderr.decode("ascii", "replace")
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "file-system encoding" in err and "PYTHONUTF8=1" in err


@pytest.mark.slow
def test_a_non_ascii_dataset_path_on_an_ascii_file_system(tiny_dataset, tmp_path):
    """LC_ALL=C, PYTHONUTF8=0: the path is named as unwritable in that encoding, not 'not a
    directory'."""
    moved = tmp_path / "数据"
    tiny_dataset.rename(moved)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C", "PYTHONUTF8": "0",
           "PERSRV_BENCH_LOG_DIR": str(tmp_path / "logs")}
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run([sys.executable, "-m", "bench", "datasets", "describe", str(moved)],
                          env=env, capture_output=True, cwd=tmp_path, timeout=300)
    err = proc.stderr.decode("ascii", "replace")
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "file-system encoding" in err and "not a directory" not in err
