"""Issue 26, class 3: run folders cannot collide (unique suffix, created exclusively)."""

from __future__ import annotations

import threading

import pandas as pd

from bench import experiment
from bench.config import validate_config
from bench.experiment import make_run_folder, run_experiment


def test_make_run_folder_is_exclusive_and_retries(tmp_path, monkeypatch):
    import secrets
    draws = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(draws))
    monkeypatch.setattr(experiment, "_timestamp", lambda: "20260101-000000")
    first = make_run_folder(tmp_path / "out", "same")
    second = make_run_folder(tmp_path / "out", "same")  # "aaaaaa" is taken: draws again
    assert first.name == "same-20260101-000000-aaaaaa"
    assert second.name == "same-20260101-000000-bbbbbb"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [first.name, second.name]


def test_two_runs_of_one_name_in_one_second_keep_all_results(tiny_dataset, tmp_path,
                                                             isolated_cache, monkeypatch):
    monkeypatch.setattr(experiment, "_timestamp", lambda: "20260101-000000")  # same second
    from bench.registry import registry
    registry()  # load the built-ins once: the registry's first load is not thread-safe
    barrier = threading.Barrier(2)
    outcomes, errors = {}, []

    def one(retriever: str) -> None:
        cfg = validate_config({"name": "twin", "dataset": {"path": str(tiny_dataset)},
                               "ks": [1, 5], "retrievers": [{"name": retriever}],
                               "features": {"ocr": False}, "report": False,
                               "output_dir": str(tmp_path / "out"),
                               "tracking": {"enabled": False}})
        barrier.wait()
        try:
            outcomes[retriever] = run_experiment(cfg, echo=lambda line: None)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(r,)) for r in ("random", "query-lookup")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    folders = {r: o.folder for r, o in outcomes.items()}
    assert len(set(folders.values())) == 2
    for retriever, folder in folders.items():
        assert folder.name.startswith("twin-20260101-000000-")
        table = pd.read_csv(folder / "results.csv")
        assert list(table["retriever"]) == [retriever], (folder, table)
        assert (folder / "retrievers" / retriever / "run.trec").is_file()
        assert '"complete"' in (folder / "status.json").read_text()
