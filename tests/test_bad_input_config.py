"""Bad input, configs (bench/config.py): typos, size bounds, names that would be paths (the whole-
config checks of issue 25 are in tests/test_config_checks.py): either a one-line error that
names the input (exit 2, no traceback) or the input is handled and what was skipped is counted
(issue 9; split from tests/test_bad_input.py by area in issue 25)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from conftest import run_main

from bad_input_helpers import run_cli, assert_one_line_error, write_config


# ------------------------------------------------------------------------------ config typos

@pytest.mark.parametrize("extra, needles", [
    ({"seeed": 1}, ["unknown key 'seeed'"]),
    ({"split": {"test_group": 1}}, ["unknown key 'split.test_group'"]),
    ({"retrievers": [{"name": "bm25", "parms": {}}]}, ["unknown key 'retrievers.0.parms'"]),
    ({"retrievers": [{"name": "bm25"}, {"name": "bm52"}]},
     ["retrievers.1 (bm52): unknown retriever 'bm52'", "Did you mean 'bm25'?"]),
    ({"retrievers": [{"name": "persrv", "params": {"n_cluster": 3}}]},
     ["retrievers.0 (persrv)", "no parameter 'n_cluster'", "Did you mean 'n_clusters'?"]),
    ({"features": {"ocr": {"psmm": 6}}}, ["features.ocr.psmm: unknown key"]),
    ({"features": {"encoder": "clip"}}, ["features.encoder", "unknown encoder 'clip'"]),
])
def test_config_typo_is_named_before_any_work(extra, needles, tiny_dataset, tmp_path, capsys,
                                              monkeypatch):
    import bench.runner as runner

    def boom(*a, **k):
        raise AssertionError("the dataset must not be loaded")

    monkeypatch.setattr(runner, "prepare", boom)
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, **extra)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_dataset_builder_param_typo_is_named(tmp_path, capsys):
    code, _, err = run_main(capsys, "datasets", "build", "synthetic", "--out",
                            str(tmp_path / "o"), "--param", "n_sticker=10")
    assert_one_line_error(code, err, "unknown parameter 'n_sticker'", "n_stickers")
    assert not (tmp_path / "o").exists()


def test_config_typo_from_a_real_process(tiny_dataset, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path,
                       retrievers=[{"name": "bm25", "params": {"k_1": 1.5}}])
    out = run_cli("run", str(cfg))
    assert_one_line_error(out.returncode, out.stderr, "no parameter 'k_1'", "Did you mean 'k1'?")


# ==================================================================== hardening (issue 17)
# Each test below fails on the code before issue 17 (7e84d1f) and passes after.

# -------------------------------------------------------------------- bounds checked before work

def test_yaml_alias_bomb_is_refused_fast_with_a_short_message(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 30)
                     + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size < 2000
    t0 = time.perf_counter()
    code, _, err = run_main(capsys, "run", str(path))
    assert time.perf_counter() - t0 < 5
    line = assert_one_line_error(code, err, "bomb.yaml", "240 YAML aliases (more than 200)")
    assert len(line) < 300


def test_yaml_over_one_megabyte_is_refused(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 120_000, encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(path))
    assert_one_line_error(code, err, "big.yaml", "larger than 1000 kB")


@pytest.mark.parametrize("extra", [{"seed": "y" * 10_000}, {"z" * 10_000: 1},
                                   {"ks": ["w" * 10_000]}])
def test_config_errors_echo_at_most_a_short_excerpt(extra, tiny_dataset, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, **extra)
    code, _, err = run_main(capsys, "run", str(cfg))
    line = assert_one_line_error(code, err, "c.yaml")
    assert len(line) < 400, len(line)


def test_huge_k_is_capped_by_the_corpus(tiny_dataset, tmp_path, capsys, isolated_cache):
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, ks=[15, 1_000_000_000],
                       retrievers=[{"name": "bm25"}, {"name": "random"}])
    t0 = time.perf_counter()
    code, _, err = run_main(capsys, "run", str(cfg))
    assert code == 0, err
    assert time.perf_counter() - t0 < 60
    table = pd.read_csv(next((tmp_path / "out").glob("*/results.csv"))).set_index("retriever")
    for metric in ("m_mrr", "recall", "ndcg", "mrr"):
        np.testing.assert_allclose(table[f"{metric}_at_1000000000"], table[f"{metric}_at_15"])
    assert table.loc["random", "recall_at_1000000000"] == 1.0


def test_per_request_allocates_only_as_deep_as_the_longest_ranking():
    import tracemalloc

    from bench.metrics import per_request
    rankings = {i: [f"s{j}" for j in range(10)] for i in range(2000)}
    relevant = {i: {"s0", "s3"} for i in range(2000)}
    tracemalloc.start()
    frame = per_request(rankings, relevant, ks=[5, 10**9])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20  # 2000 requests x 10**9 would be terabytes
    assert frame["m_mrr_at_1000000000"].iloc[0] == pytest.approx(1 + 1 / 4)
    assert frame["recall_at_1000000000"].eq(1.0).all()


# ------------------------------------------------------------------ names that would be paths

@pytest.mark.parametrize("field, value", [("name", "../escaped"), ("name", "/tmp/abs"),
                                          ("label", "../../escaped"), ("label", "a/b")])
def test_names_and_labels_that_are_not_one_folder_are_refused(field, value, tiny_dataset,
                                                              tmp_path, capsys, isolated_cache):
    extra = {"name": value} if field == "name" else \
        {"retrievers": [{"name": "bm25", "label": value}]}
    cfg = write_config(tmp_path / "c.yaml", tiny_dataset, tmp_path, **extra)
    code, _, err = run_main(capsys, "run", str(cfg))
    assert_one_line_error(code, err, repr(value), "cannot be used as a folder name")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()
