"""The whole config is checked before any work (bench/config.py, issue 25): each bad value a new
user tried gives exit 2 and one ``error:`` line naming the key, the value and what is allowed —
no traceback, no dataset built, nothing written to the feature cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import run_main

from bad_input_helpers import assert_one_line_error

RETRIEVERS = [{"name": "random", "params": {"seed": 0}}, {"name": "popularity"},
              {"name": "bm25", "params": {"fields": ["ocr_text", "queries"]}},
              {"name": "persrv-bm25"}, {"name": "persrv"}]


def raw_config(tmp_path: Path) -> dict:
    """A config that runs: a synthetic dataset built on the fly (written under the cache) and
    style-stats image embeddings (written to the feature cache)."""
    return {"name": "checks", "seed": 0,
            "dataset": {"builder": "synthetic",
                        "params": {"n_stickers": 40, "n_users": 12, "seed": 0}},
            "features": {"ocr": False, "encoder": "style-stats"},
            "retrievers": copy.deepcopy(RETRIEVERS), "ks": [1, 5], "report": False,
            "output_dir": str(tmp_path / "out"), "tracking": {"enabled": False}}


def with_param(index: int, key: str, value):
    def change(raw):
        raw["retrievers"][index].setdefault("params", {})[key] = value
    return change


def top(key: str, value):
    def change(raw):
        raw[key] = value
    return change


def label(value):
    def change(raw):
        raw["retrievers"][0]["label"] = value
    return change


# (case id, change to the raw config, needles of the error line)
CASES = [
    ("k1-nan", with_param(2, "k1", float("nan")), ["retrievers.2", "k1=nan", "finite"]),
    ("k1-inf", with_param(2, "k1", float("inf")), ["retrievers.2", "k1=inf", "finite"]),
    ("rerank-weight-inf", with_param(4, "rerank_weight", float("inf")),
     ["retrievers.4", "rerank_weight=inf", "finite"]),
    ("n-clusters-float", with_param(4, "n_clusters", 2.5),
     ["n_clusters=2.5", "valid integer"]),
    ("personalization-string", with_param(4, "personalization", "false"),
     ["personalization='false'", "valid boolean"]),
    ("pool-string", with_param(4, "pool", "5000"), ["pool='5000'", "valid integer"]),
    ("utility-factor-nan", with_param(4, "utility_factor", float("nan")),
     ["utility_factor=nan", "finite"]),
    ("min-radius-nan", with_param(4, "min_radius", float("nan")), ["min_radius=nan", "finite"]),
    ("fields-int", with_param(2, "fields", 7), ["retrievers.2", "fields=7", "list[str] or str"]),
    ("unknown-param", with_param(2, "k_1", 1.0), ["no parameter 'k_1'", "Did you mean 'k1'"]),
    ("unknown-baseline", top("baseline", "bm52"),
     ["'baseline'", "not a retriever label", "did you mean 'bm25'", "'bm52'"]),
    ("no-retrievers", top("retrievers", []), ["'retrievers'", "at least one retriever"]),
    ("seed-negative", top("seed", -1), ["'seed'", ">= 0", "-1"]),
    ("seeds-negative", top("seeds", [0, -2]), ["'seeds'", ">= 0"]),
    ("protocol-seed-negative", top("protocol", {"seed": -1}), ["'protocol.seed'", "-1"]),
    ("name-too-long", top("name", "x" * 300), ["'name'", "at most 100"]),
    ("name-escape", top("name", "run\x1b[31mred"), ["'name'", "'\\x1b'"]),
    ("label-space", label("my label"), ["label", "' '", "letters, digits"]),
    ("label-bidi", label("abc\u202edef"), ["label", "'\\u202e'"]),
    ("name-dash-first", top("name", "-rf"), ["'name'", "not starting"]),
]


def assert_no_work(tmp_path: Path, cache: Path) -> None:
    assert not cache.exists(), sorted(str(p) for p in cache.rglob("*"))[:5]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, change, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_one_line_before_any_work(case, change, needles, tmp_path, capsys,
                                                isolated_cache):
    raw = raw_config(tmp_path)
    change(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(path))
    line = assert_one_line_error(code, err, *needles)
    assert str(path) in line
    assert_no_work(tmp_path, isolated_cache)


def test_override_parsed_as_yaml_scalar_is_checked_up_front(tmp_path, capsys, isolated_cache):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(tmp_path)), encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(path), "-o", "retrievers.4.params.k1=abc")
    assert_one_line_error(code, err, "retrievers.4 (persrv)", "k1='abc'", "valid number")
    code, _, err = run_main(capsys, "run", str(path), "-o", "retrievers.2.params.k1=.nan")
    assert_one_line_error(code, err, "retrievers.2 (bm25)", "k1=nan")
    assert_no_work(tmp_path, isolated_cache)


def test_duplicate_keys_are_refused(tmp_path, capsys, isolated_cache):
    text = yaml.safe_dump(raw_config(tmp_path), sort_keys=False)
    text += "retrievers:\n  - {name: popularity}\n"   # a second retrievers: silently won before
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(path))
    assert_one_line_error(code, err, str(path), "duplicate key 'retrievers'", "first at line")
    assert_no_work(tmp_path, isolated_cache)


def test_deep_nesting_is_refused_without_recursion_error(tmp_path, capsys, isolated_cache):
    path = tmp_path / "c.yaml"
    path.write_text("name: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    code, _, err = run_main(capsys, "run", str(path))
    assert_one_line_error(code, err, str(path), "nested deeper than 64 levels")
    assert_no_work(tmp_path, isolated_cache)


def test_the_same_config_without_the_bad_value_does_the_work(tmp_path, capsys, isolated_cache):
    """The control: the config the cases start from builds the dataset, writes features and
    runs, so "nothing written" above means the check came first."""
    raw = raw_config(tmp_path)
    raw["retrievers"] = raw["retrievers"][:2]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code, out, err = run_main(capsys, "run", str(path))
    assert code == 0, err
    assert any(isolated_cache.rglob("*.parquet"))
    assert any((tmp_path / "out").glob("checks-*/retrievers/popularity"))
